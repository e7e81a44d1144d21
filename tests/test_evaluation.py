"""Normalizer and error rates: pure functions against hand-computed values."""

from __future__ import annotations

import pytest

from dmlm.metrics import error_rates
from dmlm.metrics.normalize import normalize


@pytest.mark.parametrize("raw,norm", [
    ("Hello, World!", "hello world"),
    ("  The   red\tcat.\n", "the red cat"),
    ("Don't STOP", "don't stop"),
    ("it\u2019s fine", "it's fine"),  # typographic apostrophe
    ("'quoted' words", "quoted words"),  # apostrophes outside words go
    ("rock'n'roll", "rock'n'roll"),
    ("snake_case-and/slash", "snake case and slash"),
    ("\ufb01ne caf\u00e9", "fine café"),  # NFKC: the fi ligature splits, é is kept
    ("¿Dónde está?", "dónde está"),
    ("100% sure: 3.5", "100 sure 3 5"),  # no number rewriting
    ("...", ""),
])
def test_normalize_examples(raw, norm):
    assert normalize(raw) == norm


def test_normalize_is_idempotent():
    for s in ("Hello, World!", "it\u2019s 'ok'", "a--b"):
        assert normalize(normalize(s)) == normalize(s)


def test_error_rates_against_a_hand_computation():
    refs = ["the cat sat", "a dog"]
    hyps = ["The cat SIT.", "a dog ran"]
    r = error_rates(refs, hyps)
    # words: 1 substitution (sat->sit) + 1 insertion (ran) over 5 reference words
    assert (r["substitutions"], r["deletions"], r["insertions"], r["ref_words"]) == (1, 0, 1, 5)
    assert r["wer"] == pytest.approx(100 * 2 / 5)
    # characters (spaces count): "the cat sat"->"the cat sit" 1 sub of 11; "a dog"->"a dog ran" 4 ins of 5
    assert r["cer"] == pytest.approx(100 * 5 / 16)
    assert r["utterances"] == 2 and r["sentence_accuracy"] == 0.0


def test_perfect_and_empty_hypotheses():
    r = error_rates(["Hello there", "good"], ["hello, there!", "Good"])
    assert r["wer"] == 0.0 and r["cer"] == 0.0 and r["sentence_accuracy"] == 100.0
    r = error_rates(["one two three"], [""])  # empty hypothesis: every word deleted
    assert r["wer"] == 100.0 and r["deletions"] == 3
    r = error_rates(["a b", "c d"], ["a x", "c d"])
    assert r["wer"] == 25.0 and r["sentence_accuracy"] == 50.0


def test_error_rates_reject_bad_input():
    with pytest.raises(ValueError, match="2 references but 1"):
        error_rates(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="no utterances"):
        error_rates([], [])
    with pytest.raises(ValueError, match="empty after normalization"):
        error_rates(["?!"], ["a"])
