"""Sequence packing: no token attends across examples, each example's logits and the loss are
those of the examples run unpacked, less padding, exact resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from dmlm.training.packing import collate_packed, pack_rows, packed_attention_mask, packed_batches, row_length
from dmlm.training.loss import LOSSES, loss_counts, loss_weights
from dmlm.modeling import ModelConfig, build_model
from dmlm.training.packing import check_packing
from dmlm.tasks import Rendered
from dmlm.training.data_order import collate, padding_share
from dmlm.training.loop import forward_batch, compute_loss
from dmlm.training.train import train
from dmlm.vocab import MOD_IMAGE, MOD_SPEECH, MOD_TEXT, Vocab

VOCAB = Vocab(text_size=300, speech_size=16, image_size=8)
FAMILIES = ("llama", "gpt2", "opt")


def _example(n: int, rng: np.random.Generator, source: int = MOD_SPEECH) -> Rendered:
    """`n` tokens shaped like a task: [bos, tag, source tokens…, target text tokens…], the last third judged."""
    k = max(1, n // 3)
    modality = [MOD_TEXT, MOD_TEXT] + [source] * (n - 2 - k) + [MOD_TEXT] * k
    lo = {MOD_TEXT: (0, VOCAB.text_size), MOD_SPEECH: VOCAB.range("speech"), MOD_IMAGE: VOCAB.range("image")}
    ids = [int(rng.integers(*lo[m])) for m in modality]
    return Rendered(ids=ids, target=[0] * (n - k) + [1] * k, modality=modality, prompt_len=n - k)


def _examples(lengths, seed=0) -> list[Rendered]:
    rng = np.random.default_rng(seed)
    return [_example(int(n), rng, (MOD_SPEECH, MOD_IMAGE, MOD_TEXT)[i % 3]) for i, n in enumerate(lengths)]


def _rows(examples: list[Rendered], row_tokens: int) -> list[list[Rendered]]:
    lengths = np.array([len(r.ids) for r in examples])
    return [[examples[i] for i in row] for row in pack_rows(lengths, row_tokens, seed=0, epoch=0)]


def _tiny(family: str, attn: str = "sdpa"):
    """A 2-layer d=64 model of `family` (dmlm's own scratch configs) with attention implementation `attn`."""
    cfg = ModelConfig(family=family, hidden_size=64, layers=2, heads=2, intermediate_size=128, max_positions=128)
    model = build_model(cfg, VOCAB, seed=0)
    model.set_attn_implementation(attn)
    return model.eval()


# -- masks and positions ------------------------------------------------------------------

def test_packed_rows_never_attend_across_examples_and_positions_restart():
    lengths = np.random.default_rng(0).integers(3, 40, size=60)
    examples = _examples(lengths)
    rows = _rows(examples, row_tokens=90)
    batch = collate_packed(rows, VOCAB.pad)
    mask = packed_attention_mask(batch["segment"])  # (B, 1, T, T), additive
    B, T = batch["input_ids"].shape
    assert mask.shape == (B, 1, T, T) and mask.dtype == torch.float32
    blocked = torch.finfo(torch.float32).min
    seen = 0
    for b, row in enumerate(rows):
        # the example each position holds, from the row itself (not from `segment`); -1: padding
        owner = [e for e, r in enumerate(row) for _ in r.ids]
        owner += [-1] * (T - len(owner))
        start = 0
        for r in row:
            n = len(r.ids)
            assert batch["position_ids"][b, start : start + n].tolist() == list(range(n))  # restart at 0
            assert batch["input_ids"][b, start : start + n].tolist() == r.ids
            start += n
            seen += 1
        o = torch.tensor(owner)
        allowed = (o[:, None] == o[None, :]) & torch.ones(T, T, dtype=torch.bool).tril()  # query q sees key k
        assert torch.equal(mask[b, 0] == 0, allowed) and (mask[b, 0][~allowed] == blocked).all()
        assert not allowed[o[:, None] != o[None, :]].any()  # never across examples (nor example <-> padding)
        assert allowed.diagonal().all()  # every query sees itself: no all-masked row (sdpa would give NaN)
        assert batch["attention_mask"][b].tolist() == [int(o >= 0) for o in owner]
    assert seen == len(examples)


def test_pack_rows_place_every_example_once_within_the_row():
    lengths = np.random.default_rng(1).integers(5, 120, size=700)
    rows = pack_rows(lengths, 240, seed=3, epoch=2)
    assert sorted(i for r in rows for i in r) == list(range(700))
    assert all(sum(lengths[i] for i in r) <= 240 for r in rows)
    assert rows == pack_rows(lengths, 240, seed=3, epoch=2)  # a pure function of (seed, epoch): exact resume
    assert rows != pack_rows(lengths, 240, seed=3, epoch=3)
    batches = packed_batches(lengths, 1000, 240, seed=3, epoch=2)
    assert all(len(b) * 240 <= 1000 for b in batches) and [r for b in batches for r in b] == rows
    assert row_length(120, 1000) == 500 and row_length(120, 6000) == 500 and row_length(300, 1000) == 1000
    with pytest.raises(ValueError, match="pack_tokens"):
        row_length(120, 1000, pack_tokens=100)


# -- the model sees each example as if alone ----------------------------------------------

@pytest.mark.parametrize("family,attn", [(f, "sdpa") for f in FAMILIES] + [("llama", "eager")])
def test_logits_of_a_packed_example_equal_the_example_run_alone(family, attn):
    model = _tiny(family, attn=attn)
    examples = _examples([11, 4, 23, 7, 1, 15, 9], seed=2)
    rows = _rows(examples, row_tokens=40)
    assert max(len(r) for r in rows) >= 3  # several examples share a row
    batch = collate_packed(rows, VOCAB.pad)
    with torch.no_grad():
        logits = forward_batch(model, batch).logits  # (B, T, V)
        for b, row in enumerate(rows):
            at = 0
            for r in row:
                alone = model(input_ids=torch.tensor([r.ids])).logits[0]
                torch.testing.assert_close(logits[b, at : at + len(r.ids)], alone, atol=1e-5, rtol=1e-5)
                at += len(r.ids)
    check_packing(model)  # the guard training runs passes for these families


def test_a_family_that_cannot_pack_is_refused_by_name():
    from transformers import AutoConfig, AutoModelForCausalLM

    # BLOOM builds its ALiBi biases from a 2-D padding mask: a 4-D block mask cannot reach them
    bloom = AutoModelForCausalLM.from_config(AutoConfig.for_model("bloom", vocab_size=64, hidden_size=32, n_layer=1,
                                                                  n_head=2))
    with pytest.raises(ValueError, match="'bloom' model family"):
        check_packing(bloom)


# -- the loss ---------------------------------------------------------------------------------

@pytest.mark.parametrize("loss", LOSSES)
def test_loss_and_gradients_of_a_packed_batch_equal_those_unpacked(loss):
    model = _tiny("llama").train()
    examples = _examples([31, 6, 18, 12, 25, 9, 14, 3, 20], seed=4)
    rows = _rows(examples, row_tokens=48)
    assert len(rows) < len(examples)
    lambdas = torch.tensor([1.0, 0.5, 2.0])

    def run(batches: list[dict]) -> tuple[float, torch.Tensor, list[torch.Tensor]]:
        counts = sum(loss_counts(loss, loss_weights(loss, b["attention_mask"], b["target"], b.get("segment")),
                                 b["modality"][:, 1:]) for b in batches)
        model.zero_grad()
        total = sum(compute_loss(model, b, loss, counts, lambdas) for b in batches)
        total.backward()
        return float(total.detach()), counts, [p.grad.clone() for p in model.parameters()]

    # unpacked in two micro-batches, packed in one: the step's loss does not depend on either
    plain = run([collate(examples[:4], VOCAB.pad), collate(examples[4:], VOCAB.pad)])
    packed = run([collate_packed(rows, VOCAB.pad)])
    assert torch.equal(plain[1], packed[1])  # same per-modality denominators, token for token
    assert packed[0] == pytest.approx(plain[0], abs=1e-5)
    for g1, g2 in zip(plain[2], packed[2]):
        torch.testing.assert_close(g1, g2, atol=1e-5, rtol=1e-4)


# -- padding ------------------------------------------------------------------------------------

def _demo_like_lengths(n: int, seed: int = 0) -> np.ndarray:
    """Lengths shaped like the mini-world mixture (measured there: speech tasks 41–140 tokens around 77,
    text LM 12–36, images 70–96)."""
    rng = np.random.default_rng(seed)
    kind = rng.choice(3, size=n, p=[0.72, 0.15, 0.13])
    speech = np.clip(rng.normal(77, 15, n), 41, 140)
    text = np.clip(rng.normal(19, 4, n), 12, 36)
    image = rng.integers(70, 97, n)
    return np.where(kind == 0, speech, np.where(kind == 1, text, image)).astype(int)


def test_packing_reduces_the_padding_share():
    lengths = _demo_like_lengths(20000)
    share = padding_share(lengths, 2000, seed=0, row_tokens=row_length(int(lengths.max()), 2000))
    assert share["packed"] < share["bucketed"] < share["random"]
    assert share["packed"] < 0.01


# -- training -------------------------------------------------------------------------------------

def test_packed_training_resumes_exactly_and_records_its_padding(run_config, tmp_path):
    """Packed: 6 steps straight vs. stop after 4 and resume: identical losses and weights."""
    common = ("train.packing=true", "train.steps=6", "train.batch_tokens=400", "train.grad_accum=2",
              "train.eval_every=3", "train.save_every=100", "train.warmup_steps=2")
    straight = train(run_config(tmp_path / "a" / "model", *common))
    cfg = run_config(tmp_path / "b" / "model", *common)
    train(cfg, stop_at=4)
    resumed = train(cfg, resume=True)

    def steps(out: Path) -> list[tuple]:
        rows = [json.loads(line) for line in Path(f"{out}.log.jsonl").read_text().splitlines()]
        return [(r["step"], r["loss"], r["grad_norm"], r["tokens"], r.get("dev_loss")) for r in rows if "loss" in r]

    a, b = steps(straight), steps(resumed)
    assert [r[0] for r in a] == [1, 2, 3, 4, 5, 6] and a == b
    assert all(np.isfinite(r[1]) for r in a)
    wa, wb = load_file(straight / "model.safetensors"), load_file(resumed / "model.safetensors")
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=0, msg=k)
    share = json.loads((straight / "dmlm.json").read_text())["model_summary"]["padding_share"]
    assert set(share) == {"bucketed", "random", "packed"} and 0 <= share["packed"] < 1
