"""`evaluate(checkpoint, task, manifest, ...)`: one entry point for scoring every task.

- Text and unit targets (asr, s2tt:LANG, i2t, t2s without a judge) and the LM tasks go to
  `dmlm.evaluation.tasks.evaluate_task` (decoded or teacher-forced, scored by the task).
- Speech out judged by ear (t2s with a judge, resynthesis) goes to `dmlm.evaluation.speech`:
  units -> the checkpoint's vocoder -> the judge -> WER against the text.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dmlm.data.split import Split
from dmlm.decoding import DecodingOptions
from dmlm.modeling import Checkpoint, load_checkpoint
from dmlm.tasks import parse_spec
from dmlm.util.errors import UserError
from dmlm.util.io import atomic_write_json


def evaluate(model: Checkpoint | str | Path, task: str, manifest: str | Path, *, units: str | Path | None = None,
             out: str | Path | None = None, limit: int | None = None, judge: Any = None,
             judge_engine: str = "ctranslate2", voice_clips: int | None = 0,
             opts: DecodingOptions = DecodingOptions(), progress: bool = True) -> dict:
    """The report of `model` on `task` over `manifest` (see `dmlm.api.DMLM.evaluate`)."""
    from dmlm.evaluation.judge import build_judge
    from dmlm.evaluation.speech import evaluate_resynthesis, evaluate_t2s_audio
    from dmlm.evaluation.tasks import evaluate_task

    name = task.split(":")[0]
    if name != "resynthesis":
        parse_spec(task)  # an unknown task is an error naming the registered ones
    if voice_clips != 0 and name != "resynthesis":
        raise UserError(f"voice_clips is for the resynthesis task, not {task}")
    if opts.rerank > 1 and name != "t2s":
        raise UserError(f"rerank is for t2s, not {task}")
    if name not in ("t2s", "resynthesis") and judge:
        raise UserError(f"judge is for t2s and resynthesis (speech out), not {task}")
    by_ear = name == "resynthesis" or (name == "t2s" and judge)
    if not by_ear:
        ck = model if isinstance(model, Checkpoint) else load_checkpoint(model)
        return evaluate_task(ck, task, manifest, out, opts, units=units, limit=limit, progress=progress)
    judge_ = build_judge(judge or "whisper-base", engine=judge_engine) if judge is None or isinstance(judge, (str, Path)) \
        else judge
    folder = Path(out).with_suffix("") if out else None
    if name == "resynthesis":
        store = Split(manifest, units).store("speech") if units is not None else None
        rep = evaluate_resynthesis(model, manifest, store, judge_, n=limit, out_dir=folder, voice_clips=voice_clips)
    else:
        ck = model if isinstance(model, Checkpoint) else load_checkpoint(model)
        rep = evaluate_t2s_audio(ck, manifest, judge_, opts, n=limit, out_dir=folder)
    if out:
        atomic_write_json(out, rep)
    return rep
