"""The headline metrics: what the CLI, a run's summary and its report show of each evaluation.

Each row is a task spec (or "resynthesis"), its label and the metrics shown for it with their
column headers; both are facts of the task's row (`dmlm.tasks.Scoring`), so a run with `s2tt:de`
shows an "S2TT en→de" row and nothing here names a task. `METRIC_KEYS` is every metric a summary
keeps from a full evaluation report (full reports stay in the run's eval/ folder).
"""

from __future__ import annotations

from collections.abc import Iterable

from dmlm.tasks import DEFAULT_LANG, scoring_for, scoring_rank
from dmlm.util.errors import UserError

METRIC_KEYS = ("wer", "cer", "wer_heldout_voice", "cer_heldout_voice", "sentence_accuracy", "bleu", "chrf",
               "bleu_heldout_voice", "chrf_heldout_voice", "baseline_bleu", "baseline_chrf", "cider", "baseline_cider",
               "unit_accuracy", "unit_error_rate", "length_ratio", "perplexity", "original_wer", "wer_vocoder_voice",
               "cer_vocoder_voice", "original_wer_vocoder_voice", "asr_bleu", "asr_chrf", "asr_bleu_heldout_voice",
               "asr_chrf_heldout_voice", "ceiling_asr_bleu", "ceiling_asr_chrf", "utterances", "records")

SPEECH_OUT_KEYS = ("wer", "cer", "wer_heldout_voice", "original_wer", "wer_vocoder_voice", "original_wer_vocoder_voice")
"""What a by-ear report (T2S audio, resynthesis) contributes to its task's summary row."""


def headline(report: dict) -> dict:
    """The headline numbers of one evaluation report (what `dmlm evaluate` prints)."""
    return {k: report[k] for k in METRIC_KEYS if k in report}


def headline_row(spec: str, model: str | None = None, src_lang: str = DEFAULT_LANG) -> tuple[str, list[tuple[str, str]]]:
    """(label, [(metric, header)]) of `spec`'s headline row, e.g. ("S2TT en→de", [("bleu", "BLEU"), ...])
    for `s2tt:de`; `model` names which model it scores ("ASR (ASR-only model)"). An unknown spec is an error."""
    scoring = scoring_for(spec)
    label = scoring.row_label(spec, src_lang)
    return (f"{label} ({model})" if model else label), list(scoring.metrics)


def scorable_metrics(spec: str) -> list[str]:
    """Every metric key a report of `spec` shows in its headline row (e.g. to check a study's metric names)."""
    return [k for k, _ in scoring_for(spec).metrics]


def scoring_order(specs: Iterable[str]) -> list[str]:
    """`specs` in report order (`dmlm.tasks.scoring_rank`: text out, speech out, resynthesis, LM tasks)."""
    return sorted(specs, key=scoring_rank)


def judged_alone(key: str) -> bool:
    """A summary key naming an evaluation of its own that is judged by ear (resynthesis); False for a
    task spec or any other key (`asr_only`, `t2s_audio`, …)."""
    try:
        return scoring_for(key).by_ear == "always"
    except UserError:
        return False
