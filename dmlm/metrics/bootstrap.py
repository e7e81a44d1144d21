"""Confidence intervals for corpus metrics: bootstrap over test utterances, pooled across seeds.

A corpus metric (WER, BLEU, chrF, CIDEr, unit accuracy) is a function of statistics that add
up over utterances: WER is (S + D + I) / N summed over utterances, BLEU a function of summed
n-gram matches and lengths. `utterance_stats` turns each scored utterance into its row of
those statistics and `score` maps summed rows back to the metric, so that scoring a resample
is a matrix product, not a re-run of the metric.

Design decisions:
- **Pooled across seeds.** Every seed of an arm decodes the same test utterances; an
  utterance's statistics are summed over seeds, and the bootstrap resamples utterances
  (Koehn, 2004: paired bootstrap resampling). The interval so covers the test-set sampling
  of a score averaged over the seeds trained; the spread between seeds is reported beside it
  as their standard deviation, not folded in (three seeds are too few to resample).
- **Paired.** An arm and its reference are resampled with the same utterance draw, so the
  interval of their difference leaves out what the two share (hard utterances are hard for
  both), which is what makes small differences resolvable.
- **Percentile intervals** (2.5 and 97.5 percentiles of the resampled statistic). A verdict
  says "better" or "worse" only when the 95 % interval of the difference excludes zero.
- Statistics come from the metric's own library where it has them (sacrebleu's BLEU and chrF
  sufficient statistics, jiwer's alignment counts), so the full-sample score equals the
  evaluation report's.
"""

from __future__ import annotations

from collections.abc import Sequence

import jiwer
import numpy as np
from rapidfuzz.distance import Levenshtein
from sacrebleu.metrics import BLEU, CHRF

from dmlm.metrics.captioning import cider_items
from dmlm.metrics.normalize import get_normalizer, normalize

LOWER_IS_BETTER = {"wer": True, "cer": True, "unit_error_rate": True, "bleu": False, "chrf": False,
                   "cider": False, "unit_accuracy": False, "asr_bleu": False, "asr_chrf": False}
"""Every metric the bootstrap knows, and its direction."""

_HEARD = "asr_"
"""ASR-BLEU/chrF (`dmlm.evaluation.s2st`): BLEU/chrF of judge transcripts, both sides basic-normalized first."""


def base_metric(metric: str) -> str:
    """`wer_heldout_voice` is `wer` on a subset of the utterances."""
    return metric.removesuffix("_heldout_voice")


def _text_metric(metric: str) -> str:
    """The sacrebleu metric behind `metric` (`asr_bleu` is BLEU of transcripts)."""
    return base_metric(metric).removeprefix(_HEARD)


def utterance_stats(metric: str, refs: Sequence, hyps: Sequence, normalizer: str = "basic") -> np.ndarray:
    """(n, d) additive statistics of `metric` for each (ref, hyp) pair."""
    m = base_metric(metric)
    if m not in LOWER_IS_BETTER:
        raise ValueError(f"no bootstrap statistics for metric {metric!r}; known: {sorted(LOWER_IS_BETTER)}")
    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} references but {len(hyps)} hypotheses")
    if m in ("wer", "cer"):
        norm = get_normalizer(normalizer)
        rows = []
        for r, h in zip(refs, hyps):
            r, h = norm(r), norm(h)
            out = jiwer.process_words(r, h) if m == "wer" else jiwer.process_characters(r, h)
            n = out.hits + out.substitutions + out.deletions
            rows.append((out.substitutions + out.deletions + out.insertions, n))
        return np.asarray(rows, dtype=np.float64)
    if _text_metric(m) in ("bleu", "chrf"):
        if m.startswith(_HEARD):  # as the S2ST report scores them, so the full-sample score equals the report's
            refs, hyps = [normalize(r) for r in refs], [normalize(h) for h in hyps]
        scorer = BLEU() if _text_metric(m) == "bleu" else CHRF()
        return np.asarray(scorer._extract_corpus_statistics(list(hyps), [list(refs)]), dtype=np.float64)
    if m == "cider":
        return np.asarray([(s, 1.0) for s in cider_items(refs, hyps)], dtype=np.float64)
    rows = []  # unit accuracy / error rate: one edit alignment per pair, as `dmlm.metrics.unit_scores`
    for r, h in zip(refs, hyps):
        ops = Levenshtein.editops([int(u) for u in r], [int(u) for u in h])
        sub = sum(op.tag == "replace" for op in ops)
        dele = sum(op.tag == "delete" for op in ops)
        rows.append((len(r) - sub - dele, len(ops), len(r)))
    return np.asarray(rows, dtype=np.float64)


def score(metric: str, stats: np.ndarray) -> np.ndarray:
    """The metric of summed statistics: `stats` is (d,) or (B, d); returns a float or (B,)."""
    m = base_metric(metric)
    s = np.atleast_2d(stats)
    if m in ("wer", "cer"):
        out = 100.0 * s[:, 0] / np.maximum(s[:, 1], 1)
    elif m == "cider":
        out = s[:, 0] / np.maximum(s[:, 1], 1)
    elif m == "unit_accuracy":
        out = 100.0 * s[:, 0] / np.maximum(s[:, 2], 1)
    elif m == "unit_error_rate":
        out = 100.0 * s[:, 1] / np.maximum(s[:, 2], 1)
    else:
        bleu = _text_metric(m) == "bleu"
        scorer = BLEU() if bleu else CHRF()
        out = np.asarray([scorer._compute_score_from_stats([int(x) if bleu else x for x in row]).score
                          for row in s])
    return out if np.ndim(stats) == 2 else float(out[0])


def resample_counts(n: int, draws: int, seed: int = 0) -> np.ndarray:
    """(draws, n) counts of each utterance in `draws` bootstrap resamples of n utterances."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(n, np.full(n, 1.0 / n), size=draws).astype(np.float64)


def interval(metric: str, stats: np.ndarray, counts: np.ndarray) -> tuple[float, float]:
    """95 % percentile interval of the metric over the resamples in `counts` ((B, n) @ (n, d))."""
    values = score(metric, counts @ stats)
    lo, hi = np.percentile(values, [2.5, 97.5])
    return float(lo), float(hi)


def paired_difference(metric: str, arm: np.ndarray, reference: np.ndarray, counts: np.ndarray) -> dict:
    """The arm's metric minus the reference's on the full sample, its paired 95 % interval, and a verdict.

    `arm` and `reference` are (n, d) statistics of the same n utterances in the same order.
    """
    if arm.shape[0] != reference.shape[0]:
        raise ValueError(f"paired bootstrap needs the same utterances: {arm.shape[0]} against {reference.shape[0]}")
    delta = score(metric, arm.sum(0)) - score(metric, reference.sum(0))
    diffs = score(metric, counts @ arm) - score(metric, counts @ reference)
    lo, hi = (float(x) for x in np.percentile(diffs, [2.5, 97.5]))
    return {"delta": float(delta), "ci95": [lo, hi], "verdict": verdict(metric, lo, hi)}


def verdict(metric: str, lo: float, hi: float) -> str:
    """better / worse when the interval of (arm − reference) excludes zero, in the metric's direction."""
    if lo <= 0.0 <= hi:
        return "no difference"
    lower = LOWER_IS_BETTER[base_metric(metric)]
    return "better" if (hi < 0.0) == lower else "worse"
