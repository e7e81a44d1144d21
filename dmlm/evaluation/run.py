"""`evaluate(checkpoint, spec, split, ...)`: one entry point for scoring every task.

- Text and unit targets (asr, s2tt:LANG, i2t, t2s without a judge) and the LM tasks go to
  `dmlm.evaluation.tasks.evaluate_task` (decoded or teacher-forced, scored by the task).
- Speech out judged by ear (a row with `Scoring.by_ear`: t2s given a judge, resynthesis always)
  goes to `dmlm.evaluation.speech`: units -> the checkpoint's vocoder -> the judge -> WER against
  the text. Which evaluation takes a judge, extra voice clips or reranking is read from the rows
  (`dmlm.tasks.scoring_for`), never from task names; `check_scorable` refuses a spec at config time.
- One type per argument: a `Checkpoint` (resynthesis reads only its codebook and vocoder, so a
  lazily loaded one never loads the LM), a `Split`, a `Judge` object, `DecodingOptions` and
  `EvalOptions`. Paths and preset names are the front door's (`dmlm.api.DMLM.evaluate`).
"""

from __future__ import annotations

from pathlib import Path

from dmlm.data.split import Split
from dmlm.decoding import DecodingOptions
from dmlm.evaluation.judge import Judge
from dmlm.evaluation.options import EvalOptions
from dmlm.modeling import Checkpoint
from dmlm.tasks import TASKS, check_scorable, evaluations_where, is_task, parse_spec, scoring_for
from dmlm.util.errors import UserError
from dmlm.util.io import atomic_write_json

__all__ = ["evaluate", "check_scorable", "check_evaluation"]


def _names(names: list[str]) -> str:
    return " and ".join(names) if len(names) <= 2 else ", ".join(names[:-1]) + " and " + names[-1]


def check_evaluation(spec: str, opts: DecodingOptions, options: EvalOptions, judged: bool) -> None:
    """An error naming the setting when `spec` cannot take it (voice clips, reranking, a judge)."""
    check_scorable([spec])
    scoring = scoring_for(spec)
    if options.voice_clips != 0 and not scoring.voice_clips:
        raise UserError(f"voice_clips is for the {_names(evaluations_where(lambda s: s.voice_clips))} task, not {spec}")
    rerank_by = getattr(TASKS[parse_spec(spec)[0]], "rerank_by", None) if is_task(spec) else None
    if opts.rerank > 1 and rerank_by is None:
        rerankable = [n for n, t in TASKS.items() if getattr(t, "rerank_by", None)]
        raise UserError(f"rerank is for {_names(rerankable)}, not {spec}")
    if judged and scoring.by_ear == "never":
        by_ear = evaluations_where(lambda s: s.by_ear != "never")
        raise UserError(f"judge is for {_names(by_ear)} (speech out), not {spec}")


def evaluate(ck: Checkpoint, spec: str, split: Split, *, out: Path | None = None,
             opts: DecodingOptions = DecodingOptions(), options: EvalOptions = EvalOptions(),
             judge: Judge | None = None) -> dict:
    """The report of `ck` on `spec` (a task spec or "resynthesis") over `split` (see `dmlm.api.DMLM.evaluate`).

    `judge`: what transcribes speech out (t2s: scored on units without one; resynthesis: required)."""
    from dmlm.evaluation.s2st import evaluate_s2st
    from dmlm.evaluation.speech import evaluate_resynthesis, evaluate_t2s_audio
    from dmlm.evaluation.tasks import evaluate_task

    check_evaluation(spec, opts, options, judge is not None)
    by_ear = scoring_for(spec).by_ear
    if by_ear == "never" or (by_ear == "with_judge" and judge is None):
        return evaluate_task(ck, spec, split, out, opts, options)
    if judge is None:
        raise UserError(f"{spec} is judged by ear: give a judge (a Whisper preset, an ASR checkpoint or an object "
                        "with transcribe(wavs))")
    folder = Path(out).with_suffix("") if out else None
    if scoring_for(spec).judged_against == "translation":  # S2ST: ASR-BLEU against the translation
        rep = evaluate_s2st(ck, spec, split, judge, opts, options, out_dir=folder)
    elif is_task(spec):
        rep = evaluate_t2s_audio(ck, split, judge, opts, options, out_dir=folder)
    else:
        rep = evaluate_resynthesis(ck.codebook("speech"), ck.vocoder(), split, judge, options, out_dir=folder)
    if out:
        atomic_write_json(out, rep)
    return rep
