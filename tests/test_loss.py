"""The multimodal loss against a hand computation, and its independence of batch splitting."""

from __future__ import annotations

import math

import pytest
import torch

from dmlm.training.loss import LOSSES, loss_counts, loss_weights, multimodal_loss
from dmlm.vocab import MOD_SPEECH, MOD_TEXT

V = 11


@pytest.fixture
def batch():
    """3 sequences of lengths 7, 5, 6 (right-padded to 7): speech then text, target = last 3."""
    g = torch.Generator().manual_seed(0)
    B, T = 3, 7
    lengths = [7, 5, 6]
    ids = torch.randint(0, V, (B, T), generator=g)
    attn = torch.zeros(B, T, dtype=torch.long)
    target = torch.zeros(B, T, dtype=torch.long)
    modality = torch.full((B, T), MOD_TEXT, dtype=torch.long)
    for b, n in enumerate(lengths):
        attn[b, :n] = 1
        target[b, n - 3 : n] = 1
        modality[b, 1 : n - 3] = MOD_SPEECH  # [tag, speech..., text, text, text]
        ids[b, n:] = 0
    logits = torch.randn(B, T, V, generator=g)
    return logits, ids, attn, target, modality


def _hand(logits, ids, attn, target, modality, loss, lambdas=(1.0, 1.0, 1.0)):
    """Straight from the definitions in DESIGN.md, one token at a time."""
    per_mod: dict[int, list[float]] = {}
    all_: list[float] = []
    for b in range(ids.shape[0]):
        for t in range(1, ids.shape[1]):  # position t is predicted from logits at t-1
            w = int(target[b, t]) if loss in ("target", "target_length_normalized") else int(attn[b, t])
            if not w:
                continue
            lp = logits[b, t - 1].double().log_softmax(-1)
            ce = -float(lp[ids[b, t]])
            all_.append(ce)
            per_mod.setdefault(int(modality[b, t]), []).append(ce)
    if loss in ("length_normalized", "target_length_normalized"):
        return sum(lambdas[m] * sum(v) / len(v) for m, v in per_mod.items())
    return sum(all_) / len(all_)


def _loss(logits, ids, attn, target, modality, loss, lambdas=None):
    w = loss_weights(loss, attn, target)
    c = loss_counts(loss, w, modality[:, 1:])
    return multimodal_loss(logits, ids, w, modality, loss, c, lambdas)


@pytest.mark.parametrize("loss", LOSSES)
def test_each_loss_matches_a_hand_computation(batch, loss):
    got = float(_loss(*batch, loss))
    assert got == pytest.approx(_hand(*batch, loss), rel=1e-5)


def test_length_normalized_with_lambdas(batch):
    lam = (0.7, 0.2, 5.0)  # image weight is irrelevant: no image tokens
    got = float(_loss(*batch, "length_normalized", torch.tensor(lam)))
    assert got == pytest.approx(_hand(*batch, "length_normalized", lam), rel=1e-5)


def test_losses_differ_as_defined(batch):
    full, tgt, ln = (float(_loss(*batch, m)) for m in ("full", "target", "length_normalized"))
    assert len({round(full, 6), round(tgt, 6), round(ln, 6)}) == 3


def test_target_length_normalized_averages_each_modality_of_the_targets(batch):
    """A target span of speech and text (T2S's units, then its close tags): one mean per modality."""
    logits, ids, attn, target, modality = batch
    target = target.clone()
    for b, n in enumerate([7, 5, 6]):
        target[b, n - 4] = 1  # the last speech token joins the target span
    b2 = (logits, ids, attn, target, modality)
    got = float(_loss(*b2, "target_length_normalized"))
    assert got == pytest.approx(_hand(*b2, "target_length_normalized"), rel=1e-5)
    assert got != pytest.approx(float(_loss(*b2, "target")), rel=1e-4)
    w = loss_weights("target_length_normalized", attn, target)
    assert loss_counts("target_length_normalized", w, modality[:, 1:]).tolist() == [9.0, 3.0, 0.0]


def test_counts_are_per_modality_for_length_normalized(batch):
    logits, ids, attn, target, modality = batch
    w = loss_weights("length_normalized", attn, target)
    c = loss_counts("length_normalized", w, modality[:, 1:])
    # predicted positions: lengths-1 = 6+4+5 = 15 tokens; text = 3 per sequence
    assert c.tolist() == [9.0, 6.0, 0.0]
    assert loss_counts("full", loss_weights("full", attn, target), modality[:, 1:]).tolist() == [15.0]
    assert loss_counts("target", loss_weights("target", attn, target), modality[:, 1:]).tolist() == [9.0]


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("split", [[1, 2], [2, 1], [1, 1, 1]])
def test_micro_batches_with_global_counts_sum_to_the_batch_loss(batch, loss, split):
    logits, ids, attn, target, modality = batch
    whole = float(_loss(*batch, loss))
    parts = []
    s = 0
    for n in split:
        parts.append(tuple(x[s : s + n] for x in batch))
        s += n
    counts = sum(loss_counts(loss, loss_weights(loss, p[2], p[3]), p[4][:, 1:]) for p in parts)
    shares = [float(multimodal_loss(p[0], p[1], loss_weights(loss, p[2], p[3]), p[4], loss, counts)) for p in parts]
    assert math.fsum(shares) == pytest.approx(whole, rel=1e-6)
    # with per-micro-batch (local) counts the mean of the parts would generally differ: the reason for global counts
    local = [float(_loss(*p, loss)) for p in parts]
    assert sum(local) != pytest.approx(whole, rel=1e-3)


def test_gradients_do_not_depend_on_the_split(batch):
    logits, ids, attn, target, modality = batch
    loss = "length_normalized"
    a = logits.clone().requires_grad_()
    _loss(a, ids, attn, target, modality, loss).backward()
    b = logits.clone().requires_grad_()
    parts = [slice(0, 1), slice(1, 3)]
    counts = sum(loss_counts(loss, loss_weights(loss, attn[p], target[p]), modality[p][:, 1:]) for p in parts)
    for p in parts:
        multimodal_loss(b[p], ids[p], loss_weights(loss, attn[p], target[p]), modality[p], loss, counts).backward()
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-7)


def test_unknown_loss_is_an_error(batch):
    with pytest.raises(ValueError, match="unknown loss"):
        loss_weights("mean", batch[2], batch[3])
