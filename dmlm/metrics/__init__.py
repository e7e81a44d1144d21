"""Corpus metrics as pure functions: percentages unless said otherwise.

- ASR: word and character error rates (jiwer) after `normalize`.
- Translation: sacrebleu BLEU and chrF on the raw text, with their signatures.
- Text-to-speech units: unit error rate and accuracy from one edit alignment (rapidfuzz).
- Perplexity from a summed negative log-likelihood, and the most-frequent-target baseline.

Captioning (CIDEr-D) lives in `dmlm.metrics.captioning`.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

import jiwer
from rapidfuzz.distance import Levenshtein
from sacrebleu.metrics import BLEU, CHRF

from dmlm.metrics.normalize import get_normalizer, normalize
from dmlm.util.errors import UserError


def error_rates(refs: Sequence[str], hyps: Sequence[str], normalizer: str = "basic") -> dict[str, float]:
    """Corpus-level WER and CER (%) over normalized text (`dmlm.metrics.normalize.NORMALIZERS`);
    empty hypotheses count as deletions."""
    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} references but {len(hyps)} hypotheses")
    if not refs:
        raise UserError("no utterances to score")
    norm = get_normalizer(normalizer)
    r = [norm(x) for x in refs]
    h = [norm(x) for x in hyps]
    if any(not x for x in r):
        raise UserError("a reference is empty after normalization")
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


def _check_pairs(refs: Sequence[object], hyps: Sequence[object], what: str) -> None:
    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} references but {len(hyps)} hypotheses")
    if not refs:
        raise UserError(f"no {what} to score")


def translation_scores(refs: Sequence[str], hyps: Sequence[str]) -> dict[str, float | str]:
    """Corpus BLEU and chrF (sacrebleu defaults), one reference per segment, with signatures.

    No normalizer runs before sacrebleu: its own tokenizer (13a for BLEU, characters for chrF)
    is the standard that published numbers use, and the mini-world text is already lowercase
    without punctuation, so `normalize` would change nothing there. The signatures record the
    exact sacrebleu settings for the report.
    """
    _check_pairs(refs, hyps, "segments")
    bleu, chrf = BLEU(), CHRF()
    return {
        "bleu": bleu.corpus_score(list(hyps), [list(refs)]).score,
        "chrf": chrf.corpus_score(list(hyps), [list(refs)]).score,
        "bleu_signature": str(bleu.get_signature()),
        "chrf_signature": str(chrf.get_signature()),
    }


def unit_scores(refs: Sequence[Sequence[int]], hyps: Sequence[Sequence[int]]) -> dict[str, float]:
    """Corpus speech-unit error rate, accuracy (%) and length ratio for text-to-speech units.

    Each pair is aligned once by rapidfuzz's minimum-edit alignment (the one jiwer uses for
    words), and every count comes from that alignment: error rate = (S + D + I) / N, accuracy
    = hits / N with hits = N - S - D, so the two differ only by the insertions. Several
    minimum-edit alignments can exist (ref [1, 2], hyp [2, 3]: two substitutions, or a
    deletion and an insertion); rapidfuzz's choice is deterministic (there, the substitutions),
    so the hits can fall short of the longest common subsequence.
    """
    _check_pairs(refs, hyps, "utterances")
    subs = dels = ins = ref_units = hyp_units = 0
    for r, h in zip(refs, hyps):
        if len(r) == 0:
            raise UserError("a reference unit sequence is empty")
        # Plain lists: rapidfuzz hashes elements, and numpy scalars must become ints first.
        ops = Levenshtein.editops([int(u) for u in r], [int(u) for u in h])
        for op in ops:
            if op.tag == "replace":
                subs += 1
            elif op.tag == "delete":
                dels += 1
            else:
                ins += 1
        ref_units += len(r)
        hyp_units += len(h)
    return {
        "unit_error_rate": 100.0 * (subs + dels + ins) / ref_units,
        "unit_accuracy": 100.0 * (ref_units - subs - dels) / ref_units,
        "length_ratio": hyp_units / ref_units,
        "substitutions": subs,
        "deletions": dels,
        "insertions": ins,
        "ref_units": ref_units,
        "utterances": len(refs),
    }


def perplexity(total_nll: float, n_tokens: int) -> float:
    """exp(mean negative log-likelihood in nats per token); inf where that overflows."""
    if n_tokens <= 0:
        raise UserError(f"perplexity needs a positive token count, got {n_tokens}")
    try:
        return math.exp(total_nll / n_tokens)
    except OverflowError:
        return math.inf


def trivial_baseline(train_targets: Sequence[str]) -> str:
    """The constant prediction a model must beat: the most frequent training target sentence.

    Sentences are compared as given and words are whitespace-split (targets are expected to be
    normalized already). Synthetic corpora often hold only unique sentences, so ties go to the
    sentence whose words are most typical, the highest mean log corpus frequency of its words
    (a length-neutral choice; summing would favour long sentences), then to the
    lexicographically smallest. Word means use `math.fsum`, so word order cannot tip a tie.
    """
    if not train_targets:
        raise UserError("no training targets")
    sentence_counts = Counter(train_targets)
    word_counts = Counter(w for s in train_targets for w in s.split())

    def typicality(sentence: str) -> float:
        words = sentence.split()
        if not words:
            return -math.inf
        return math.fsum(math.log(word_counts[w]) for w in words) / len(words)

    return min(sentence_counts, key=lambda s: (-sentence_counts[s], -typicality(s), s))
