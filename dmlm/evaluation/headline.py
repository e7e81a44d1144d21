"""The headline metrics: one table that the CLI, the demo's summary and its report read.

Each row is a task key of a run's summary (`report.json`'s "tasks"), its label, and the
metrics shown for it with their column headers. `METRIC_KEYS` is every metric a summary keeps
from a full evaluation report (full reports stay in the run's eval/ folder).
"""

from __future__ import annotations

ERROR_RATES = [("wer", "WER %"), ("cer", "CER %"), ("wer_heldout_voice", "WER % held-out voice")]

TASK_ROWS: list[tuple[str, str, list[tuple[str, str]]]] = [
    ("asr", "ASR (mixture model)", ERROR_RATES),
    ("asr_only", "ASR (ASR-only model)", ERROR_RATES),
    ("s2tt", "S2TT en→es", [("bleu", "BLEU"), ("chrf", "chrF"), ("bleu_heldout_voice", "BLEU held-out voice"),
                            ("baseline_bleu", "baseline BLEU")]),
    ("i2t", "I2T captioning", [("cider", "CIDEr"), ("bleu", "BLEU"), ("baseline_cider", "baseline CIDEr")]),
    ("t2s", "T2S", [("unit_accuracy", "unit acc. %"), ("unit_error_rate", "unit error %"), ("wer", "Whisper WER %"),
                    ("greedy_wer", "Whisper WER %, greedy (no rerank)"),
                    ("original_wer", "Whisper WER % of the recordings"), ("asr_only_judge_wer", "ASR-only-model WER %"),
                    ("asr_only_judge_original_wer", "its WER % of the recordings")]),
    ("resynthesis", "Resynthesis (codebook + vocoder)", [
        ("wer", "Whisper WER %"), ("original_wer", "Whisper WER % of the recordings"),
        ("wer_vocoder_voice", "Whisper WER %, clips in the vocoder's voice"),
        ("original_wer_vocoder_voice", "Whisper WER % of those recordings"),
        ("asr_only_judge_wer", "ASR-only-model WER %"), ("asr_only_judge_original_wer", "its WER % of the recordings")]),
]

METRIC_KEYS = ("wer", "cer", "wer_heldout_voice", "cer_heldout_voice", "sentence_accuracy", "bleu", "chrf",
               "bleu_heldout_voice", "chrf_heldout_voice", "baseline_bleu", "baseline_chrf", "cider", "baseline_cider",
               "unit_accuracy", "unit_error_rate", "length_ratio", "perplexity", "original_wer", "wer_vocoder_voice",
               "cer_vocoder_voice", "original_wer_vocoder_voice", "utterances", "records")

SPEECH_OUT_KEYS = ("wer", "cer", "wer_heldout_voice", "original_wer", "wer_vocoder_voice", "original_wer_vocoder_voice")
"""What a by-ear report (T2S audio, resynthesis) contributes to its task's summary row."""


def headline(report: dict) -> dict:
    """The headline numbers of one evaluation report (what `dmlm evaluate` prints)."""
    return {k: report[k] for k in METRIC_KEYS if k in report}
