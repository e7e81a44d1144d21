"""Task metrics (translation, captioning, speech units, perplexity, baseline) against hand values."""

from __future__ import annotations

import math
import random

import jiwer
import numpy as np
import pytest

from dmlm.metrics.captioning import caption_scores, cider
from dmlm.metrics import perplexity, translation_scores, trivial_baseline, unit_scores

# --- translation ----------------------------------------------------------------------------


def test_translation_scores_against_a_hand_computed_bleu():
    r = translation_scores(["the cat sat on the mat"], ["the cat sat on a mat"])
    # n-gram precisions 5/6, 3/5, 2/4, 1/3, same length (no brevity penalty): (1/12) ** (1/4)
    assert r["bleu"] == pytest.approx(100 * (1 / 12) ** 0.25, abs=1e-9)
    assert 0 < r["chrf"] < 100
    assert "nrefs:1" in r["bleu_signature"] and "tok:13a" in r["bleu_signature"]
    assert "version:" in r["chrf_signature"]


def test_translation_scores_identical_and_unrelated():
    refs = ["a red cat sits", "two dogs run fast"]
    same = translation_scores(refs, refs)
    assert same["bleu"] == pytest.approx(100) and same["chrf"] == pytest.approx(100)
    other = translation_scores(refs, ["xyz qqq", "www vvv"])
    assert other["bleu"] == 0.0 and other["chrf"] < 10


def test_translation_scores_reject_bad_input():
    with pytest.raises(ValueError, match="2 references but 1"):
        translation_scores(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="no segments"):
        translation_scores([], [])


# --- CIDEr-D --------------------------------------------------------------------------------

DISTINCT = [
    "a red cat sits on the mat",
    "two dogs run in the park",
    "a man rides a blue bicycle",
    "the girl eats a green apple",
]


def test_cider_of_exact_matches_is_exactly_ten():
    # Each n-gram order has a vector of nonzero weight and hyp == the only ref: cosine 1 per order.
    refs = [[s] for s in DISTINCT]
    assert cider(refs, DISTINCT) == pytest.approx(10.0, abs=1e-12)
    # Case and punctuation go through `normalize` first.
    assert cider(refs, [s.upper() + "." for s in DISTINCT]) == pytest.approx(10.0, abs=1e-12)


def test_cider_of_short_exact_matches_lacks_the_missing_orders():
    # Three words: orders 1-3 score 1 and the 4-gram vectors are empty, so 10 * 3 / 4.
    refs = [["red cat sits"], ["two dogs run"], ["man rides bike"]]
    assert cider(refs, [r[0] for r in refs]) == pytest.approx(7.5, abs=1e-12)


def test_cider_of_a_single_item_is_zero():
    # idf = log(N / df) = log(1 / 1) for every reference n-gram: CIDEr needs a corpus.
    assert cider([["a red cat sits on the mat"]], ["a red cat sits on the mat"]) == 0.0


def test_cider_against_a_hand_computation():
    # N = 3 items; df: a 1, b 2, c 2, d 1, every bigram and trigram 1. L = log 3, m = log 3/2.
    L, m = math.log(3), math.log(1.5)
    refs = [["a b a"], ["b c"], ["c d"]]
    # Items 2 and 3 match exactly: orders 1 and 2 score 1, orders 3 and 4 are empty -> 5 each.
    # Item 1, "a a a": unigram h = {a: 3L}, r = {a: 2L, b: m}; clipping gives min(3L, 2L) * 2L
    # over |h| |r| = 3L sqrt(4L^2 + m^2); bigram "a a" and trigram "a a a" are not in r; equal
    # lengths, no penalty.
    unigram = 4 * L * L / (3 * L * math.sqrt(4 * L * L + m * m))
    expected = (10 * unigram / 4 + 5 + 5) / 3
    assert cider(refs, ["a a a", "b c", "c d"]) == pytest.approx(expected, rel=1e-12)
    unclipped = (10 * (6 * L * L / (3 * L * math.sqrt(4 * L * L + m * m))) / 4 + 10) / 3
    assert cider(refs, ["a a a", "b c", "c d"]) != pytest.approx(unclipped, rel=1e-3)
    # "a a": unigram cosine 2L / sqrt(4L^2 + m^2), one word short of "a b a": exp(-1 / 72).
    short = 2 * L / math.sqrt(4 * L * L + m * m) * math.exp(-1 / 72)
    assert cider(refs, ["a a", "b c", "c d"]) == pytest.approx((10 * short / 4 + 10) / 3, rel=1e-12)


def test_cider_orders_exact_over_partial_over_unrelated():
    refs = [[s] for s in DISTINCT]
    exact = cider(refs, DISTINCT)
    partial = cider(refs, ["a red cat sits on a rug"] + DISTINCT[1:])
    unrelated = cider(refs, ["purple elephants sing opera loudly"] + DISTINCT[1:])
    assert exact > partial > unrelated
    assert cider(refs, ["zz yy xx ww vv"] * 4) == 0.0


def test_cider_is_invariant_to_the_order_of_the_corpus():
    refs = [[s, s.replace("a ", "the ")] for s in DISTINCT]
    hyps = ["a red cat on the mat", "dogs run in a park", "a man rides a bike", "a girl eats"]
    order = [2, 0, 3, 1]
    permuted = cider([refs[i] for i in order], [hyps[i] for i in order])
    assert permuted == pytest.approx(cider(refs, hyps), rel=1e-12)
    swapped_refs = cider([r[::-1] for r in refs], hyps)
    assert swapped_refs == pytest.approx(cider(refs, hyps), rel=1e-12)


def test_cider_averages_over_references():
    one = [[s] for s in DISTINCT]
    two = [[s, "an unrelated caption of it"] for s in DISTINCT]
    # Matching one of two references: at most (10 + something smaller) / 2.
    assert 0 < cider(two, DISTINCT) < cider(one, DISTINCT)
    # A duplicated reference changes neither df (a set per item) nor the mean over references.
    dup = [[s, s] for s in DISTINCT]
    assert cider(dup, DISTINCT) == pytest.approx(cider(one, DISTINCT), rel=1e-12)


def test_cider_rejects_bad_input():
    with pytest.raises(ValueError, match="2 reference sets but 1"):
        cider([["a"], ["b"]], ["a"])
    with pytest.raises(ValueError, match="no captions"):
        cider([], [])
    with pytest.raises(ValueError, match="no reference"):
        cider([["a"], []], ["a", "b"])
    with pytest.raises(TypeError, match="list of reference lists"):
        cider(["a cat", "a dog"], ["a cat", "a dog"])


def test_caption_scores_with_uneven_reference_counts():
    refs = [["a red cat sits on the mat", "a cat on a mat"], ["two dogs run in the park"]]
    hyps = ["a cat on a mat", "two dogs run in the park"]
    r = caption_scores(refs, hyps)
    assert r["bleu"] == pytest.approx(100)  # each hypothesis equals one of its references
    assert r["cider"] == pytest.approx(cider(refs, hyps))
    assert "nrefs:2" in r["bleu_signature"]
    # Padding repeats a reference, which moves no BLEU count.
    # The one-word hypothesis makes the choice visible: an empty padding reference would be
    # the closest length and lift the brevity penalty.
    hyps2 = ["a cat sat on the rug", "dogs"]
    padded = [[refs[0][0], refs[0][1]], [refs[1][0], refs[1][0]]]
    assert caption_scores(refs, hyps2)["bleu"] == caption_scores(padded, hyps2)["bleu"]
    hyps2 = ["a cat sat on the rug", "dogs run in a park"]
    single = caption_scores([[r[0]] for r in refs], hyps2)["bleu"]
    assert caption_scores(refs, hyps2)["bleu"] > single  # the second reference adds matches


# --- speech units ---------------------------------------------------------------------------


def test_unit_scores_against_a_hand_computation():
    r = unit_scores([[1, 2, 3, 4], [5, 6], [7, 8, 9]], [[1, 2, 4], [5, 6, 7, 8], [7, 0, 9]])
    # one deletion (3), two insertions (7, 8), one substitution (8 -> 0), over 9 reference units
    assert (r["substitutions"], r["deletions"], r["insertions"], r["ref_units"]) == (1, 1, 2, 9)
    assert r["unit_error_rate"] == pytest.approx(100 * 4 / 9)
    assert r["unit_accuracy"] == pytest.approx(100 * 7 / 9)
    assert r["length_ratio"] == pytest.approx(10 / 9)
    assert r["utterances"] == 3


def test_unit_scores_perfect_empty_and_numpy():
    refs = [np.array([3, 1, 4, 1, 5]), np.array([9, 2, 6])]
    r = unit_scores(refs, [x.copy() for x in refs])
    assert (r["unit_error_rate"], r["unit_accuracy"], r["length_ratio"]) == (0.0, 100.0, 1.0)
    r = unit_scores(refs, [[], []])
    assert (r["unit_error_rate"], r["unit_accuracy"], r["length_ratio"]) == (100.0, 0.0, 0.0)
    # Unit ids past 255 are not confused with each other (no byte or character encoding).
    r = unit_scores([[256, 512, 70000]], [[256, 0, 70000]])
    assert r["substitutions"] == 1 and r["unit_accuracy"] == pytest.approx(200 / 3)


def test_unit_scores_agree_with_jiwer_on_words():
    rng = random.Random(0)
    refs = [[rng.randrange(8) for _ in range(rng.randint(1, 30))] for _ in range(200)]
    hyps = [[u if rng.random() < 0.7 else rng.randrange(8) for u in r if rng.random() < 0.9]
            + [rng.randrange(8)] * rng.randint(0, 2) for r in refs]
    r = unit_scores(refs, hyps)
    w = jiwer.process_words([" ".join(f"u{u}" for u in x) for x in refs],
                            [" ".join(f"u{u}" for u in x) for x in hyps])
    assert (r["substitutions"], r["deletions"], r["insertions"]) == (
        w.substitutions, w.deletions, w.insertions)
    assert r["unit_error_rate"] == pytest.approx(100 * w.wer)
    assert r["unit_accuracy"] == pytest.approx(100 * w.hits / r["ref_units"])


def test_unit_scores_reject_bad_input():
    with pytest.raises(ValueError, match="2 references but 1"):
        unit_scores([[1], [2]], [[1]])
    with pytest.raises(ValueError, match="no utterances"):
        unit_scores([], [])
    with pytest.raises(ValueError, match="empty"):
        unit_scores([[1], []], [[1], [2]])


# --- perplexity and baseline ----------------------------------------------------------------


def test_perplexity():
    assert perplexity(10 * math.log(4), 10) == pytest.approx(4.0)
    assert perplexity(0.0, 3) == 1.0
    assert perplexity(1e6, 1) == math.inf
    with pytest.raises(ValueError, match="positive token count"):
        perplexity(1.0, 0)


def test_trivial_baseline_prefers_the_most_frequent_sentence():
    # "zebra" is less typical than "the ..." sentences, but it is the only repeated target.
    targets = ["the cat", "zebra", "the dog", "the cow", "zebra", "the pig", "the hen"]
    assert trivial_baseline(targets) == "zebra"
    assert trivial_baseline(["a b", "c d", "a b"]) == "a b"


def test_trivial_baseline_breaks_ties_by_mean_word_frequency_then_text():
    # the 2, sat 2, every other word 1: "the sat" has mean log 2; the long sentence has the
    # same sum (2 log 2) but a lower mean, and would win the text tie if sums were compared.
    assert trivial_baseline(["the cat sat on a mat", "the sat"]) == "the sat"
    # Equal means: the lexicographically smallest, whatever the input order.
    targets = ["the dog sat", "a zebra", "the cat sat", ""]
    assert trivial_baseline(targets) == "the cat sat"
    assert trivial_baseline(targets[::-1]) == "the cat sat"
    assert trivial_baseline(["", "x"]) == "x"
    with pytest.raises(ValueError, match="no training targets"):
        trivial_baseline([])
