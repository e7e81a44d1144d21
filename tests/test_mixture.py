"""The mixture sampler: frequencies follow the weights; epochs are a pure function of (seed, epoch)."""

from __future__ import annotations

from collections import Counter

import pytest

from dmlm.data.mixture import Mixture


def test_frequencies_follow_the_weights():
    m = Mixture([1000, 50, 300], [0.6, 0.1, 0.3], seed=3, names=["asr", "i2t", "t2s"])
    counts = Counter()
    for e in range(5):
        counts.update(t for t, _ in m.epoch(e))
    total = sum(counts.values())
    for t, w in enumerate([0.6, 0.1, 0.3]):
        assert abs(counts[t] / total - w) < 0.01


def test_every_example_is_seen_before_any_repeats():
    m = Mixture([7, 5], [0.5, 0.5], seed=0)
    # task 1 has 5 examples but takes 6 per epoch: the first 5 draws are a permutation
    draws = [i for e in range(3) for t, i in m.epoch(e) if t == 1]
    assert sorted(draws[:5]) == list(range(5)) and sorted(draws[5:10]) == list(range(5))
    draws0 = [i for e in range(4) for t, i in m.epoch(e) if t == 0]
    assert sorted(draws0[:7]) == list(range(7))


def test_epochs_are_deterministic_and_differ():
    a, b = Mixture([40, 10], [1, 1], seed=5), Mixture([40, 10], [1, 1], seed=5)
    assert a.epoch(2) == b.epoch(2)
    assert a.epoch(1) != a.epoch(2)
    assert Mixture([40, 10], [1, 1], seed=6).epoch(0) != a.epoch(0)


def test_single_task_epoch_is_a_permutation():
    m = Mixture([100], [1.0], seed=1)
    idx = [i for _, i in m.epoch(4)]
    assert sorted(idx) == list(range(100))


def test_zero_weight_task_is_left_out():
    m = Mixture([10, 10], [1.0, 0.0])
    assert {t for t, _ in m.epoch(0)} == {0} and len(m.epoch(0)) == 20


@pytest.mark.parametrize("sizes,weights,msg", [([3], [1, 2], "1 tasks but 2 weights"), ([3, 0], [1, 1], "'1' has weight 1 but no examples"),
                                               ([3], [-1], "negative"), ([3], [0], "all task weights are zero")])
def test_bad_mixtures_are_errors(sizes, weights, msg):
    with pytest.raises(ValueError, match=msg):
        Mixture(sizes, weights)
