"""Captioning metrics: CIDEr-D (Vedantam et al., 2015) and corpus BLEU over several references.

CIDEr-D is written from the paper's definition, with the choices of the coco-caption scorer
whose numbers papers report:

- Tokens: `normalize` (lowercase, punctuation to spaces, the rule WER uses), then whitespace
  split; coco-caption's PTB tokenizer also lowercases and drops punctuation.
- Each sentence becomes one vector per n-gram order n = 1..4: an n-gram's weight is its raw
  count in the sentence times its idf, log(N / df), where N is the number of items (images) in
  the scored corpus and df the number of items whose references contain the n-gram (at least
  1, so an n-gram no reference has weighs log N). The idf comes from the references being
  scored, so a score depends on the whole corpus, and a single-item corpus scores 0.
- Order n compares the hypothesis h with each reference r by min(h, r) . r / (|h| |r|)
  (clipping: repeating an n-gram cannot earn more than the reference holds), times the
  Gaussian length penalty exp(-(len h - len r)^2 / (2 sigma^2)), sigma = 6. A zero vector (no
  n-gram of that order, or all of weight 0) contributes 0.
- An item's score is the mean over orders and references, times 10; the corpus score is the
  mean over items. Lengths are counted in words; coco-caption counts bigrams (words - 1),
  which gives the same difference unless exactly one of the two sentences is empty.

So a hypothesis equal to an item's only reference, at least 4 words long and holding an
n-gram of every order that not every item's references share, scores exactly 10.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

from sacrebleu.metrics import BLEU

from dmlm.metrics.normalize import normalize
from dmlm.util.errors import UserError

MAX_ORDER = 4
SIGMA = 6.0

NGram = tuple[str, ...]


def _ngram_counts(sentence: str) -> Counter[NGram]:
    words = normalize(sentence).split()
    return Counter(
        tuple(words[i:i + n]) for n in range(1, MAX_ORDER + 1) for i in range(len(words) - n + 1)
    )


def _tfidf(counts: Counter[NGram], df: Counter[NGram], log_n: float) -> list[dict[NGram, float]]:
    """One {n-gram: weight} map per order (index n - 1)."""
    vec: list[dict[NGram, float]] = [{} for _ in range(MAX_ORDER)]
    for gram, tf in counts.items():
        vec[len(gram) - 1][gram] = tf * (log_n - math.log(max(1, df[gram])))
    return vec


def _norm(v: dict[NGram, float]) -> float:
    return math.sqrt(math.fsum(w * w for w in v.values()))


def _length(counts: Counter[NGram]) -> int:
    return sum(c for gram, c in counts.items() if len(gram) == 1)


def _check(refs: Sequence[Sequence[str]], hyps: Sequence[str]) -> None:
    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} reference sets but {len(hyps)} hypotheses")
    if not refs:
        raise UserError("no captions to score")
    if any(isinstance(r, str) for r in refs):
        raise TypeError("refs must be a list of reference lists, one list per item")
    if any(len(r) == 0 for r in refs):
        raise UserError("an item has no reference caption")


def cider(refs: Sequence[Sequence[str]], hyps: Sequence[str]) -> float:
    """Corpus CIDEr-D: `refs[i]` holds the reference captions of item i, `hyps[i]` its caption.

    See the module docstring for the definition; the idf comes from `refs` itself.
    """
    scores = cider_items(refs, hyps)
    return math.fsum(scores) / len(scores)


def cider_items(refs: Sequence[Sequence[str]], hyps: Sequence[str]) -> list[float]:
    """Each item's CIDEr-D (the corpus score is their mean), with the idf of the whole of `refs`:
    what a bootstrap over items resamples."""
    _check(refs, hyps)
    ref_counts = [[_ngram_counts(r) for r in item] for item in refs]
    df: Counter[NGram] = Counter()
    for item in ref_counts:
        df.update(set().union(*item))
    log_n = math.log(len(refs))

    item_scores = []
    for item, hyp in zip(ref_counts, hyps):
        h_counts = _ngram_counts(hyp)
        h_vec = _tfidf(h_counts, df, log_n)
        h_norm = [_norm(v) for v in h_vec]
        per_ref = []
        for r_counts in item:
            r_vec = _tfidf(r_counts, df, log_n)
            delta = _length(h_counts) - _length(r_counts)
            penalty = math.exp(-(delta ** 2) / (2 * SIGMA ** 2))
            sims = []
            for n in range(MAX_ORDER):
                r_norm = _norm(r_vec[n])
                if h_norm[n] == 0 or r_norm == 0:
                    sims.append(0.0)
                    continue
                dot = math.fsum(min(w, r_vec[n].get(g, 0.0)) * r_vec[n].get(g, 0.0)
                                for g, w in h_vec[n].items())
                sims.append(penalty * dot / (h_norm[n] * r_norm))
            per_ref.append(math.fsum(sims) / MAX_ORDER)
        item_scores.append(10.0 * math.fsum(per_ref) / len(per_ref))
    return item_scores


def caption_scores(refs: Sequence[Sequence[str]], hyps: Sequence[str]) -> dict[str, float | str]:
    """CIDEr-D and sacrebleu corpus BLEU (with its signature) over several references per item.

    sacrebleu wants reference streams of equal length, so items with fewer references are
    padded with their first one. That changes nothing: BLEU clips n-gram counts by the maximum
    over references and takes the closest reference length, and a duplicate moves neither.
    BLEU sees the raw text (sacrebleu's 13a tokenizer), as in `translation_scores`.
    """
    _check(refs, hyps)
    width = max(len(r) for r in refs)
    streams = [[item[k] if k < len(item) else item[0] for item in refs] for k in range(width)]
    bleu = BLEU()
    return {
        "cider": cider(refs, hyps),
        "bleu": bleu.corpus_score(list(hyps), streams).score,
        "bleu_signature": str(bleu.get_signature()),
    }
