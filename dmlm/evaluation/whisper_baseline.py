"""Whisper beside a DMLM on the same clips: `dmlm evaluate-whisper MANIFEST`.

Design decisions:
- The baseline is the Whisper whose encoder makes dmlm's speech units (the `whisper-base` preset,
  CTranslate2 int8, through `WhisperJudge`), decoded as its authors decode: log-mel padded to
  30 s, the prompt `<|startoftranscript|><|en|><|transcribe|><|notimestamps|>` (English forced,
  no previous text), greedy. Only English recordings are scored.
- Scored as `dmlm evaluate --task asr` scores a DMLM: the ASR task's references
  (`Task.reference`) and `evaluate` (WER/CER after dmlm's normalizer), the same voice groups
  (training voices at the top level, the held-out voice under `heldout_voice` and as
  `*_heldout_voice` keys) and the same per-group `limit` (`limit_per_group`), so the two reports
  sit in one table. Whisper writes digits and its own spellings ("300", "gray") that dmlm's
  normalizer counts as errors; each group also carries `whisper_english`, its WER/CER after
  Whisper's own normalizer on both sides, the figure Whisper is usually quoted at.
- Training-voice records in the neural voice are also scored as their own group
  (`neural_voice`): the natural-sounding voice is where Whisper is strongest.
- Per-utterance rows (`id`, `ref`, `hyp`, `heldout_voice`, `speaker`) go to `*.hyps.jsonl`
  beside the report, like a DMLM's, so `dmlm.metrics.bootstrap` can pair the two systems
  utterance by utterance; each group's report has the 95 % bootstrap interval of its WER.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from dmlm.data.manifest import HELDOUT_VOICE, is_heldout_voice, read_manifest
from dmlm.data.synth import NEURAL_VOICE
from dmlm.evaluation.grouping import limit_per_group, voice_groups
from dmlm.evaluation.judge import WHISPER_PROMPT, Judge, WhisperJudge, transcribe
from dmlm.metrics import error_rates
from dmlm.metrics.bootstrap import interval, resample_counts, utterance_stats
from dmlm.tasks import Sources, get_task
from dmlm.util.audio import load_audio
from dmlm.util.errors import UserError
from dmlm.util.io import atomic_write_json, write_jsonl
from dmlm.util.progress import tqdm

log = logging.getLogger(__name__)

LANG = "en"
BOOTSTRAP_DRAWS = 1000
NEURAL_GROUP = "neural_voice"


def scored_records(manifest: Path, limit: int | None = None, language: str = LANG) -> list:
    """The recordings in `language` the ASR task reads, the first `limit` of each voice group (all when falsy)."""
    if limit is not None and limit < 0:
        raise UserError(f"limit must be >= 0 records per voice group, got {limit}")
    task = get_task("asr")
    records = [r for r in read_manifest(manifest) if r.audio is not None and task.takes(r, language)
               and (r.lang or LANG) == language]
    records = limit_per_group(records, limit)
    if not records:
        raise UserError(f"{manifest}: no record with audio in language {language!r} to transcribe")
    return records


def _group_report(rows: list[dict], language: str = LANG) -> dict:
    """The ASR task's scores of `rows`, Whisper's-normalizer WER/CER (English), and the WER's 95 % bootstrap
    interval."""
    refs, hyps = [r["ref"] for r in rows], [r["hyp"] for r in rows]
    out = get_task("asr").evaluate(rows)
    if language == LANG:
        own = error_rates(refs, hyps, normalizer="whisper_english")
        out["whisper_english"] = {"wer": own["wer"], "cer": own["cer"]}
    stats = utterance_stats("wer", refs, hyps)
    out["ci95"] = list(interval("wer", stats, resample_counts(len(rows), BOOTSTRAP_DRAWS)))
    return out


def score_rows(rows: list[dict], language: str = LANG) -> dict:
    """Scores by voice group, as `dmlm evaluate --task asr` lays them out, plus the neural voice's group."""
    groups = voice_groups(rows)
    seen = [rows[i] for i in groups.get("seen", [])]
    held = [rows[i] for i in groups.get(HELDOUT_VOICE, [])]
    out = _group_report(seen, language) if seen else {}
    if held:
        hv = out[HELDOUT_VOICE] = _group_report(held, language)
        out.update({f"{k}_{HELDOUT_VOICE}": v for k, v in hv.items() if isinstance(v, float)})
    neural = [r for r in seen if r.get("speaker") == NEURAL_VOICE]
    if neural:
        out[NEURAL_GROUP] = _group_report(neural, language)
    return out


def transcribe_records(manifest: Path, records: list, judge: Judge, batch: int = 64,
                       progress: bool = True) -> list[str]:
    """`judge`'s transcripts of the records' audio, read `batch` clips at a time."""
    hyps: list[str] = []
    bar = tqdm(total=len(records), desc="whisper", unit="clip", disable=not progress)
    for s in range(0, len(records), batch):
        part = records[s : s + batch]
        hyps += transcribe([load_audio(r.audio_path(manifest)) for r in part], judge)
        bar.update(len(part))
    bar.close()
    return hyps


def evaluate_whisper(manifest: str | Path, *, model: str = "whisper-base", limit: int | None = None,
                     out: str | Path | None = None, judge: Judge | None = None, progress: bool = True,
                     language: str = LANG) -> dict:
    """Whisper `model` (a preset or a CTranslate2 folder; `judge` replaces it, e.g. in tests) on `manifest`'s
    recordings in `language` (Whisper forced to it), scored like `dmlm evaluate --task asr`: {"utterances", "wer", "cer", ...,
    "heldout_voice": {...}, "neural_voice": {...}}. `out`: the JSON report, `*.hyps.jsonl` beside it."""
    t0 = time.time()
    manifest = Path(manifest)
    records = scored_records(manifest, limit, language)
    task, sources = get_task("asr"), Sources(manifest, None)
    refs = [task.reference(r, sources, language) for r in records]  # a record without its text: named, before decoding
    judge = judge if judge is not None else WhisperJudge(model, language=language)
    log.info("transcribing %d clips with %s", len(records), model)
    hyps = transcribe_records(manifest, records, judge, progress=progress)
    rows = [{"id": r.id, "ref": ref, "hyp": hyp, HELDOUT_VOICE: is_heldout_voice(r), "speaker": r.speaker}
            for r, ref, hyp in zip(records, refs, hyps)]
    report = {
        "task": "asr" if language == LANG else f"asr:{language}", "language": language, "system": getattr(judge, "model_name", model), "manifest": str(manifest.resolve()),
        "records": len(rows),
        "decoding": {"strategy": "greedy", "prompt": list(WHISPER_PROMPT), "engine": getattr(judge, "engine", None)},
        "normalizer": task.scoring.normalizer, **score_rows(rows, language), "seconds": round(time.time() - t0, 1),
    }
    if out:
        out = Path(out)
        atomic_write_json(out, report)
        write_jsonl(out.with_suffix(".hyps.jsonl"), rows)
    return report
