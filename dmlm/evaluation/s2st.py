"""Speech-to-speech translation judged by ear: ASR-BLEU, with its ceiling, for each way the model can translate.

Design decisions:
- ASR-BLEU as the field reports it (Translatotron, UnitY, SeamlessM4T): the speech out is vocoded, an
  independent recognizer (Whisper-base, its language forced to the target's) transcribes it, and BLEU
  and chrF (sacrebleu defaults) score the transcripts against the reference translation. Transcripts and
  references go through the basic normalizer first (lowercase, no punctuation): Whisper writes
  sentence case and full stops, the mini-world references neither.
- The ceiling is the same judge on the target language's own recordings of the same sentences
  (`custom.parallel`): what a perfect S2ST system, voiced like the corpus, would score.
- Three ways side by side, each scored on the same clips by the same judge: direct (`s2st`), chained
  in one decode (`s2st_chain`: text, then units) and the cascade (s2tt, then t2s in the target language,
  two decodes of the same model); a report holds every way the model was trained for, the spec's own
  first (`ways_of`).
- Held-out-voice source clips are scored apart, like every task with speech in.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from dmlm.data.manifest import HELDOUT_VOICE, is_heldout_voice, read_manifest
from dmlm.data.split import Split
from dmlm.decoding import DecodingOptions
from dmlm.evaluation.grouping import limit_per_group
from dmlm.evaluation.judge import Judge, transcribe
from dmlm.evaluation.options import EvalOptions
from dmlm.metrics import translation_scores
from dmlm.metrics.normalize import normalize
from dmlm.modeling import Checkpoint
from dmlm.tasks import get_task, parse_spec
from dmlm.util.errors import UserError
from dmlm.util.io import atomic_write_json, write_jsonl

WAY_TASKS = {"direct": ("s2st",), "chained": ("s2st_chain",), "cascade": ("s2tt", "t2s")}
"""What each way needs the model to have been trained for (`dmlm.inference.S2ST_WAYS` decodes them)."""
CEILING_HYPS = "ceiling.hyps.jsonl"
"""The ceiling's transcripts, beside the ways' hyps.jsonl in the report's folder (so the ceiling gets an interval)."""


def ways_of(ck: Checkpoint, spec: str) -> list[str]:
    """The ways `ck` can translate speech into `spec`'s language: the spec's own first, then the others its
    training tasks cover (a checkpoint listing no tasks: the spec's way alone)."""
    name, lang = parse_spec(spec)
    own = "chained" if getattr(get_task(name), "via_text", False) else "direct"
    trained = {parse_spec(t)[0] for t in ck.tasks}
    langs = {parse_spec(t)[1] for t in ck.tasks}
    others = [w for w in WAY_TASKS if w != own and trained and set(WAY_TASKS[w]) <= trained and lang in langs]
    return [own, *others]


def asr_bleu(refs: list[str], hyps: list[str]) -> dict:
    """BLEU and chrF of judge transcripts against reference translations, both basic-normalized."""
    s = translation_scores([normalize(r) for r in refs], [normalize(h) for h in hyps])
    return {"asr_bleu": s["bleu"], "asr_chrf": s["chrf"]}


def score_rows(rows: list[dict]) -> dict:
    """ASR-BLEU of `rows` ({"ref", "hyp", "heldout_voice"}), training voices and the held-out voice apart."""
    seen = [r for r in rows if not r[HELDOUT_VOICE]]
    held = [r for r in rows if r[HELDOUT_VOICE]]
    out = asr_bleu([r["ref"] for r in seen], [r["hyp"] for r in seen]) if seen else {}
    if held:
        out.update({f"{k}_{HELDOUT_VOICE}": v for k, v in asr_bleu([r["ref"] for r in held],
                                                                    [r["hyp"] for r in held]).items()})
    return out


def _hear(judge_: Judge, wavs: list) -> list[str]:
    """Transcripts of `wavs`; a missing clip (None: no units) is an empty transcript."""
    ok = [i for i, w in enumerate(wavs) if w is not None]
    hyps = [""] * len(wavs)
    for i, h in zip(ok, transcribe([wavs[i] for i in ok], judge_) if ok else []):
        hyps[i] = h
    return hyps


def _ceiling(split: Split, records: list, lang: str, refs: list[str], judge_: Judge) -> tuple[dict, list[dict]]:
    """ASR-BLEU of the target language's recordings of the training-voice records' sentences, and its rows
    (`id`: the source record, `recording`: the target-language recording heard)."""
    from dmlm.tokenizers.tokenize import load_record_audio

    by_id = {r.id: r for r in read_manifest(split.manifest)}
    pairs = [(r, by_id.get(r.custom.get("parallel", {}).get(lang)), ref) for r, ref in zip(records, refs)
             if not is_heldout_voice(r)]
    pairs = [(r, t, ref) for r, t, ref in pairs if t is not None and t.audio]
    if not pairs:
        return {}, []
    hyps = _hear(judge_, [load_record_audio(split.manifest, t) for _, t, _ in pairs])
    rows = [{"id": r.id, "recording": t.id, "ref": ref, "hyp": h, HELDOUT_VOICE: False}
            for (r, t, ref), h in zip(pairs, hyps)]
    return {f"ceiling_{k}": v for k, v in asr_bleu([ref for _, _, ref in pairs], hyps).items()}, rows


def evaluate_s2st(ck: Checkpoint, spec: str, split: Split, judge_: Judge, opts: DecodingOptions = DecodingOptions(),
                  options: EvalOptions = EvalOptions(), out_dir: Path | None = None) -> dict:
    """The ASR-BLEU report of `ck` on `spec` (`s2st:LANG` or `s2st_chain:LANG`) over `split`: every way it can
    translate (`ways_of`), the spec's own way's scores at the top, and the ceiling."""
    from dmlm.evaluation.tasks import sources_for
    from dmlm.inference import S2ST_WAYS, s2st_units

    t0 = time.time()
    name, lang = parse_spec(spec)
    task = get_task(name)
    if getattr(judge_, "language", lang) != lang:
        raise UserError(f"{spec}: the judge transcribes {judge_.language!r}, not {lang!r}: build it with language={lang!r}")
    records = [r for r in read_manifest(split.manifest) if r.audio and task.takes(r, lang)]
    records = limit_per_group(records, options.limit)
    if not records:
        raise UserError(f"{split.manifest}: no recording to translate into {lang!r} (records need custom.parallel; "
                        "`dmlm prepare mini-world` with speech_langs writes it)")
    src = sources_for(ck, split, records, {"speech"})
    samples = [task.source_sample(r, src, lang) for r in records]
    refs = [task.reference(r, src, lang) for r in records]
    report: dict = {"task": spec, "model": str(Path(ck.path).resolve()), "manifest": str(split.manifest.resolve()),
                    "judge": getattr(judge_, "model_name", type(judge_).__name__), "language": lang,
                    "normalizer": "basic, then sacrebleu defaults (13a tokenizer)", "records": len(records), "ways": {}}
    rows = []
    for way in ways_of(ck, spec):
        units = s2st_units(ck, samples, way, opts, options.progress)
        hyps = _hear(judge_, _vocode_some(ck, units, lang))
        way_rows = [{"id": r.id, "way": way, "task": S2ST_WAYS[way] or "s2tt+t2s", "ref": ref, "hyp": h,
                     "units": len(u), HELDOUT_VOICE: is_heldout_voice(r)}
                    for r, ref, h, u in zip(records, refs, hyps, units)]
        report["ways"][way] = score_rows(way_rows)
        rows += way_rows
    report.update(report["ways"][ways_of(ck, spec)[0]])
    ceiling, ceiling_rows = _ceiling(split, records, lang, refs, judge_)
    report.update(ceiling)
    report["seconds"] = round(time.time() - t0, 1)
    if out_dir is not None:
        atomic_write_json(Path(out_dir) / "report.json", report)
        write_jsonl(Path(out_dir) / "hyps.jsonl", rows)
        write_jsonl(Path(out_dir) / CEILING_HYPS, ceiling_rows)
    return report


def _vocode_some(ck: Checkpoint, units: list[np.ndarray], lang: str) -> list:
    """Waveforms of the non-empty unit sequences, in the vocoder's voice of `lang` (None for the empty ones)."""
    from dmlm.inference import vocode

    said = [i for i, u in enumerate(units) if len(u)]
    out: list = [None] * len(units)
    for i, w in zip(said, vocode(ck.vocoder(), [units[i] for i in said], lang=lang) if said else []):
        out[i] = w
    return out
