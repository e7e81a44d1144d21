"""Word and character error rates (jiwer) after `normalize`, as percentages."""

from __future__ import annotations

from collections.abc import Sequence

import jiwer

from dmlm.evaluation.normalize import normalize


def error_rates(refs: Sequence[str], hyps: Sequence[str]) -> dict[str, float]:
    """Corpus-level WER and CER (%) over normalized text; empty hypotheses count as deletions."""
    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} references but {len(hyps)} hypotheses")
    if not refs:
        raise ValueError("no utterances to score")
    r = [normalize(x) for x in refs]
    h = [normalize(x) for x in hyps]
    if any(not x for x in r):
        raise ValueError("a reference is empty after normalization")
    words = jiwer.process_words(r, h)
    chars = jiwer.process_characters(r, h)
    return {
        "wer": 100.0 * words.wer,
        "cer": 100.0 * chars.cer,
        "substitutions": words.substitutions,
        "deletions": words.deletions,
        "insertions": words.insertions,
        "ref_words": sum(len(x.split()) for x in r),
        "utterances": len(r),
        "sentence_accuracy": 100.0 * sum(a == b for a, b in zip(r, h)) / len(r),
    }
