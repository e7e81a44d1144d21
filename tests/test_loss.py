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


# -- logits only where the loss reads them (train.logits_at_targets) ---------------------------

def _rendered(lengths, seed=0):
    """Task-shaped examples: [bos, tag, speech prompt…, target text…], the last third judged."""
    from dmlm.tasks import Rendered

    rng = torch.Generator().manual_seed(seed)
    out = []
    for n in lengths:
        k = max(2, n // 3)
        modality = [MOD_TEXT, MOD_TEXT] + [MOD_SPEECH] * (n - 2 - k) + [MOD_TEXT] * k
        lo = {MOD_TEXT: (0, _VOCAB.text_size), MOD_SPEECH: _VOCAB.range("speech")}
        ids = [int(torch.randint(*lo[m], (1,), generator=rng)) for m in modality]
        out.append(Rendered(ids=ids, target=[0] * (n - k) + [1] * k, modality=modality, prompt_len=n - k))
    return out


from dmlm.vocab import Vocab  # noqa: E402

_VOCAB = Vocab(text_size=300, speech_size=16)
KINDS = ("llama", "gpt2", "opt", "pretrained")


def _model(kind: str, tmp_path):
    """A 2-layer model: one of dmlm's scratch families, or a tiny SmolLM2-shaped Llama (grouped-query
    attention, untied head) built through the pretrained path (`model.init=pretrained`)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from dmlm.modeling import ModelConfig, build_model

    if kind != "pretrained":
        cfg = ModelConfig(family=kind, hidden_size=64, layers=2, heads=2, intermediate_size=128, max_positions=128)
        return build_model(cfg, _VOCAB, seed=0).train()
    torch.manual_seed(1)
    LlamaForCausalLM(LlamaConfig(vocab_size=_VOCAB.text_size, hidden_size=64, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2, intermediate_size=128,
                                 tie_word_embeddings=False)).save_pretrained(tmp_path / "llm")
    return build_model(ModelConfig(init="pretrained", llm=str(tmp_path / "llm")), _VOCAB, seed=0).train()


def _loss_and_grads(model, batches, loss, at_targets):
    from dmlm.training.loop import compute_loss

    lambdas = torch.tensor([1.0, 0.5, 2.0])
    counts = sum(loss_counts(loss, loss_weights(loss, b["attention_mask"], b["target"], b.get("segment")),
                             b["modality"][:, 1:]) for b in batches)
    model.zero_grad()
    total = sum(compute_loss(model, b, loss, counts, lambdas, at_targets=at_targets) for b in batches)
    total.backward()
    return float(total.detach()), [p.grad.clone() for p in model.parameters() if p.grad is not None]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("loss", ["target", "target_length_normalized", "length_normalized"])
@pytest.mark.parametrize("packed", [False, True])
def test_logits_at_targets_give_the_full_logits_loss_and_gradients(kind, loss, packed, tmp_path):
    from dmlm.training.data_order import collate
    from dmlm.training.packing import collate_packed, pack_rows

    model = _model(kind, tmp_path)
    examples = _rendered([31, 6, 18, 12, 25, 9, 14, 20], seed=3)
    if packed:
        rows = pack_rows(torch.tensor([len(r.ids) for r in examples]).numpy(), 48, seed=0, epoch=0)
        batches = [collate_packed([[examples[i] for i in row] for row in rows], _VOCAB.pad)]
    else:
        batches = [collate(examples[:3], _VOCAB.pad), collate(examples[3:], _VOCAB.pad)]
    full = _loss_and_grads(model, batches, loss, at_targets=False)
    kept = _loss_and_grads(model, batches, loss, at_targets=True)
    assert kept[0] == pytest.approx(full[0], rel=1e-5)
    assert len(kept[1]) == len(full[1])
    for g_full, g_kept in zip(full[1], kept[1]):
        torch.testing.assert_close(g_kept, g_full, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("kind", KINDS)
def test_the_output_layer_runs_only_on_the_positions_predicting_targets(kind, tmp_path):
    """The head sees N rows (one per target token predicted), not the B × T of the whole batch."""
    from dmlm.training.data_order import collate
    from dmlm.training.loop import compute_loss

    model = _model(kind, tmp_path)
    examples = _rendered([30, 12, 21], seed=1)
    b = collate(examples, _VOCAB.pad)
    seen = []
    hook = model.get_output_embeddings().register_forward_hook(lambda m, i, o: seen.append(tuple(i[0].shape)))
    w = loss_weights("target", b["attention_mask"], b["target"])
    counts = loss_counts("target", w, b["modality"][:, 1:])
    compute_loss(model, b, "target", counts, torch.ones(3), at_targets=True)
    compute_loss(model, b, "target", counts, torch.ones(3), at_targets=False)
    hook.remove()
    n_targets = sum(sum(r.target[1:]) for r in examples)  # predicted target tokens
    assert seen[0] == (n_targets, 64)
    assert seen[1] == (3, 30, 64) and n_targets < 3 * 30 / 3


def test_dev_loss_is_the_same_with_logits_at_targets(tmp_path):
    from dmlm.training.config import RunConfig
    from dmlm.training.loop import dev_loss

    model = _model("llama", tmp_path)
    examples = _rendered([31, 6, 18, 12, 25, 9], seed=5)
    for i, r in enumerate(examples):
        r.task = ("asr", "t2s")[i % 2]
    cfg = RunConfig()
    off = dev_loss(model, examples, cfg, _VOCAB.pad, "cpu")
    cfg.train.logits_at_targets = True
    on = dev_loss(model, examples, cfg, _VOCAB.pad, "cpu")
    assert set(on) == {"all", "asr", "t2s"}
    for k in off:
        assert on[k] == pytest.approx(off[k], rel=1e-5)


def test_a_family_that_cannot_keep_chosen_logits_is_refused_by_name(tmp_path):
    from transformers import LlamaForCausalLM

    from dmlm.training.loop import check_logits_at_targets

    class Ignores(LlamaForCausalLM):  # a forward that drops the keep mask: full logits come back
        def forward(self, *args, logits_to_keep=0, **kwargs):
            return super().forward(*args, **kwargs)

    model = _model("llama", tmp_path)
    check_logits_at_targets(model)  # dmlm's own families pass
    ignores = Ignores(model.config)
    with pytest.raises(ValueError, match="'llama' model family gives other logits"):
        check_logits_at_targets(ignores)


def test_training_with_logits_at_targets_logs_the_same_losses(run_config, tmp_path):
    """The option wired through `dmlm train`: same step losses and dev losses as full logits."""
    import json

    from dmlm.training.train import train

    common = ("train.loss=target", "train.steps=3", "train.eval_every=3", "train.save_every=100")
    rows = {}
    for on in (False, True):
        out = train(run_config(tmp_path / str(on) / "model", *common, f"train.logits_at_targets={str(on).lower()}"))
        rows[on] = [json.loads(x) for x in open(f"{out}.log.jsonl")]
    pick = lambda rs, key: [r[key] for r in rs if key in r]  # noqa: E731
    for key in ("loss", "dev_loss"):
        # rel 1e-3: under bf16 autocast (the default here) the kept rows' matmul may round differently
        assert pick(rows[True], key) == pytest.approx(pick(rows[False], key), rel=1e-3) and pick(rows[True], key)
