"""Decoding: dmlm's greedy loop returns exactly the ids (and bitwise the logits) of transformers' `generate`."""

from __future__ import annotations

import random
from collections.abc import Sequence

import numpy as np
import pytest
import torch
from transformers import LogitsProcessorList

from dmlm.data.shards import TokenStore
import dmlm.decoding.greedy
from dmlm.decoding import DecodingOptions, ModalityFilter, generate
from dmlm.decoding.generate import _left_pad
from dmlm.decoding.greedy import MIN_ROWS, greedy
from dmlm.modeling import ModelConfig, build_model, load_checkpoint
from dmlm.tasks import Sample, get_task
from dmlm.vocab import Vocab


def _both(model, prompts, vocab, **opts) -> list[list[int]]:
    """dmlm's greedy ids, after checking they equal `generate`'s."""
    fast = generate(model, prompts, vocab, "text", DecodingOptions(engine="dmlm", **opts))
    slow = generate(model, prompts, vocab, "text", DecodingOptions(engine="transformers", **opts))
    assert fast == slow
    return fast


def _tiny_model(family: str = "llama"):
    """A random 2-layer d=64 model over 64 text ids, and 24 prompts of 3-41 tokens.

    Untied output embeddings and a louder close-tag row make rows stop after 0 to 12 tokens
    (a random tied model just repeats its last token and never closes)."""
    vocab = Vocab(text_size=64, speech_size=16)
    model = build_model(ModelConfig(family=family, hidden_size=64, layers=2, heads=2, intermediate_size=128,
                                    tie_embeddings=False), vocab, seed=0).eval()
    with torch.no_grad():
        model.get_output_embeddings().weight[vocab.close("text")] *= 3
    rng = random.Random(0)
    prompts = [[vocab.bos] + [rng.randrange(vocab.used_size) for _ in range(rng.randint(2, 40))] for _ in range(24)]
    return model, vocab, prompts


@pytest.fixture(scope="module")
def tiny():
    return _tiny_model()


@pytest.mark.parametrize("batch_size", [1, 5, 24])
def test_greedy_equals_generate_on_a_random_llama(tiny, batch_size):
    model, vocab, prompts = tiny
    outs = _both(model, prompts, vocab, max_new_tokens=12, batch_size=batch_size)
    lengths = [len(o) for o in outs]
    # stopping is exercised: rows close at different steps, and some run to max_new_tokens
    assert max(lengths) == 12 and len({n for n in lengths if n < 12}) >= 3


@pytest.mark.parametrize("family", ["gpt2", "opt"])
def test_greedy_equals_generate_for_other_families(family):
    model, vocab, prompts = _tiny_model(family)
    assert len({len(o) for o in _both(model, prompts, vocab, max_new_tokens=12, batch_size=24)}) > 3


def _bitwise(model, vocab, prompts, monkeypatch, steps: int = 8, extra: Sequence[int] = ()) -> None:
    """Every step's logits of the allowed ids are bitwise those of `generate` (close tag not
    allowed: every row runs all steps)."""
    close = vocab.close("text")
    filt = ModalityFilter(vocab, "text", extra=extra)
    allowed = filt.allowed_ids(vocab.size)
    ids, mask = _left_pad(prompts, vocab.pad)
    seen: list[torch.Tensor] = []
    logits = dmlm.decoding.greedy._Model._logits
    monkeypatch.setattr(dmlm.decoding.greedy._Model, "_logits", lambda self, h: seen.append(logits(self, h)) or seen[-1])
    greedy(model, ids, mask, allowed, close, max_new_tokens=steps)
    with torch.inference_mode():
        ref = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=steps, eos_token_id=close,
                             pad_token_id=vocab.pad, logits_processor=LogitsProcessorList([filt]), do_sample=False,
                             return_dict_in_generate=True, output_logits=True).logits
    assert len(seen) == len(ref) == steps
    assert all(torch.equal(a, b[:, allowed].float()) for a, b in zip(seen, ref))


@pytest.mark.parametrize("family", ["llama", "gpt2", "opt"])
def test_greedy_logits_are_bitwise_those_of_generate(family, monkeypatch):
    """The same forward on the same inputs, less the unread work: not merely the same argmax."""
    _bitwise(*_tiny_model(family), monkeypatch)


def test_the_packed_prompt_pass_in_chunks_is_bitwise(tiny, monkeypatch):
    model, vocab, prompts = tiny
    chunks: list[int] = []
    packing = dmlm.decoding.greedy._packing
    monkeypatch.setattr(dmlm.decoding.greedy, "_packing", lambda mask, first: chunks.append(len(mask)) or packing(mask, first))
    monkeypatch.setattr(dmlm.decoding.greedy, "PROMPT_CHUNK", 60)
    _bitwise(model, vocab, prompts, monkeypatch)
    assert len(chunks) > 8 and 1 in chunks and sum(chunks) == len(prompts)  # one prompt longer than a chunk: alone


def test_the_cache_buffer_grows_as_rows_run_on(tiny, monkeypatch):
    model, vocab, prompts = tiny
    monkeypatch.setattr(dmlm.decoding.greedy, "STEP_SLOTS", 1)  # room for 1 step, then 2, 4, 8
    _bitwise(model, vocab, prompts, monkeypatch, steps=9)
    assert max(len(o) for o in _both(model, prompts, vocab, max_new_tokens=12, batch_size=24)) == 12  # rows dropped too


def test_prompts_of_one_length_a_full_head_and_models_without_a_plain_head(tiny, monkeypatch):
    model, vocab, prompts = tiny
    same = [p[:3] for p in prompts]  # no padding: `generate` drops the mask, so does greedy
    _bitwise(model, vocab, same, monkeypatch)
    monkeypatch.setattr(dmlm.decoding.greedy, "PROMPT_CHUNK", 10)  # packed in chunks all the same
    _bitwise(model, vocab, same, monkeypatch)
    monkeypatch.undo()
    most = [i for i in range(vocab.size) if i != vocab.close("text")]
    _bitwise(model, vocab, prompts, monkeypatch, extra=most)  # too many allowed ids to copy their head rows
    monkeypatch.setattr(dmlm.decoding.greedy, "PLAIN_HEAD", ())  # the model's own forward, full head
    _bitwise(model, vocab, prompts, monkeypatch)


def test_the_packed_row_leaves_no_padding(tiny):
    model, vocab, prompts = tiny
    ids, mask = _left_pad(prompts, vocab.pad)
    widths: list[int] = []
    hook = model.base_model.register_forward_pre_hook(lambda m, a, kw: widths.append(kw["input_ids"].shape),
                                                      with_kwargs=True)
    try:
        greedy(model, ids, mask, ModalityFilter(vocab, "text").allowed_ids(vocab.size), vocab.close("text"), 1)
    finally:
        hook.remove()
    # rows of whole prompts, back to back: every real token once, no pad, chunks within PROMPT_CHUNK
    assert all(w[0] == 1 and w[1] <= dmlm.decoding.greedy.PROMPT_CHUNK for w in widths)
    assert sum(w[1] for w in widths) == sum(map(len, prompts)) and len(widths) == 2
    assert model.config._attn_implementation == "sdpa"  # restored after the prompt pass


def test_results_come_back_in_input_order(tiny):
    model, vocab, prompts = tiny
    opts = DecodingOptions(max_new_tokens=6, batch_size=7)
    assert generate(model, prompts[::-1], vocab, "text", opts) == generate(model, prompts, vocab, "text", opts)[::-1]
    one_by_one = [generate(model, [p], vocab, "text", opts)[0] for p in prompts[:6]]
    assert generate(model, prompts[:6], vocab, "text", opts) == one_by_one


def test_max_new_tokens_and_the_target_modality_are_respected(tiny):
    model, vocab, prompts = tiny
    for n in (1, 3):
        outs = _both(model, prompts, vocab, max_new_tokens=n)
        assert all(len(o) <= n for o in outs) and any(len(o) == n for o in outs)
    lo, hi = vocab.range("text")
    assert all(lo <= t < hi for o in _both(model, prompts, vocab, max_new_tokens=12) for t in o)
    assert generate(model, prompts, vocab, "text", DecodingOptions(max_new_tokens=0)) == [[] for _ in prompts]


def test_max_new_per_prompt_stops_a_looping_output_near_its_prompts_length():
    """A random tied model never closes (it loops): with max_new_per_prompt=a each batch stops at
    ceil(a x its longest prompt) + 16 new tokens; the same ids as without it up to there; 0 is off."""
    import math

    from dmlm.decoding.generate import PER_PROMPT_SLACK
    from dmlm.util.errors import UserError

    vocab = Vocab(text_size=64, speech_size=16)
    model = build_model(ModelConfig(hidden_size=64, layers=2, heads=2, intermediate_size=128), vocab, seed=0).eval()
    prompts = [[vocab.bos] + list(range(3, 3 + n)) for n in (4, 30)]
    full = _both(model, prompts, vocab, max_new_tokens=80, batch_size=1)
    assert [len(o) for o in full] == [80, 80]  # it loops
    capped = _both(model, prompts, vocab, max_new_tokens=80, batch_size=1, max_new_per_prompt=0.5)
    want = [math.ceil(0.5 * len(p)) + PER_PROMPT_SLACK for p in prompts]
    assert [len(o) for o in capped] == want and all(c == f[: len(c)] for c, f in zip(capped, full))
    with pytest.raises(UserError, match="max_new_per_prompt"):
        DecodingOptions(max_new_per_prompt=-1)


def test_greedy_stops_at_the_close_tag_and_drops_finished_rows(tiny):
    model, vocab, prompts = tiny
    close = vocab.close("text")
    filt = ModalityFilter(vocab, "text", extra=[close])
    ids, mask = _left_pad(prompts, vocab.pad)
    shapes: list[tuple[int, int]] = []
    hook = model.base_model.register_forward_pre_hook(lambda m, a, kw: shapes.append(tuple(kw["input_ids"].shape)),
                                                      with_kwargs=True)
    try:
        outs = greedy(model, ids, mask, filt.allowed_ids(vocab.size), close, max_new_tokens=12)
        assert len(outs) == len(prompts) and max(len(o) for o in outs) == 12
        # after the packed prompt pass (rows of one), the batch shrank as rows finished, to
        # multiples of MIN_ROWS, and ran every step of the longest row
        steps = [b for b, n in shapes if n == 1]
        assert all(b == 1 for b, n in shapes if n > 1) and steps[0] == len(prompts) and len(steps) == 11
        assert steps == sorted(steps, reverse=True) and steps[-1] < len(prompts) / 2
        assert all(b % MIN_ROWS == 0 for b in steps if b < len(prompts))
        # a filter that allows only the close tag: the prompt pass, nothing generated
        shapes.clear()
        assert greedy(model, ids, mask, torch.tensor([close]), close, max_new_tokens=12) == [[] for _ in prompts]
        assert all(n > 1 for _, n in shapes)
    finally:
        hook.remove()


def test_filter_ids_are_those_the_logits_processor_keeps():
    vocab = Vocab(text_size=300, speech_size=16, bos_id=1, eos_id=2)
    filt = ModalityFilter(vocab, "text", extra=[vocab.close("text")])
    scores = torch.randn(3, vocab.size + 64)  # model rows past the layout are masked too
    kept = filt(None, scores)
    ids = filt.allowed_ids(scores.shape[-1])
    assert torch.equal(torch.isfinite(kept[0]).nonzero().squeeze(1), ids) and torch.equal(kept[:, ids], scores[:, ids])
    assert set(range(3, 300)) <= set(ids.tolist()) and not {1, 2, vocab.pad, vocab.speech_start} & set(ids.tolist())
    assert vocab.close("text") in ids.tolist()


def test_engine_is_checked():
    with pytest.raises(ValueError, match="engine"):
        DecodingOptions(engine="vllm")


@pytest.fixture(scope="module")
def ck(trained):
    return load_checkpoint(trained)


@pytest.mark.parametrize("batch_size", [1, 3, 8])
def test_greedy_equals_generate_on_the_trained_checkpoint(ck, corpus, batch_size):
    stores = [TokenStore(corpus.units / name) for name in ("tiny", "dev")]
    units = [np.asarray(s[i]) for s in stores for i in range(len(s))]
    prompts = [get_task("asr").prompt(Sample(id=str(i), units=u), ck.vocab) for i, u in enumerate(units)]
    assert len({len(p) for p in prompts}) > 1  # left padding is exercised
    outs = _both(ck.model, prompts, ck.vocab, batch_size=batch_size, max_new_tokens=16)
    refs = [ck.tokenizer.encode(t, add_special_tokens=False) for t in corpus.texts(corpus.tiny)]
    assert outs[:4] == refs  # the memorized utterances, each stopped at its close tag


# -- compute_type="bfloat16": bf16 matmuls and cache, not bitwise; checked against fp32 to bf16 tolerance


def test_bf16_copy_leaves_the_model_alone_and_multiplies_in_bf16(tiny):
    model, vocab, prompts = tiny
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fast = dmlm.decoding.greedy.for_compute(model, "bfloat16")
    assert dmlm.decoding.greedy.for_compute(model, "float32") is model
    assert model.config._attn_implementation == "sdpa" and fast.config._attn_implementation == dmlm.decoding.greedy.STEP
    assert all(torch.equal(v, before[k]) and v.dtype == torch.float32 for k, v in model.state_dict().items())
    layer = fast.model.layers[0]
    assert isinstance(layer.mlp, dmlm.decoding.greedy._Bf16GatedMLP) and layer.self_attn.q_proj.weight.dtype == torch.bfloat16
    x = torch.randn(3, 64)
    ref = model.model.layers[0].mlp(x)
    assert torch.allclose(layer.mlp(x), ref, atol=0.02 * ref.abs().max().item())
    with pytest.raises(ValueError, match="compute_type"):
        dmlm.decoding.greedy.for_compute(model, "float16")


@pytest.mark.parametrize("kv_heads", [4, 2, 1])
def test_step_attention_over_blocks_is_sdpa_over_the_whole_cache(kv_heads):
    """One query per row against a prompt block plus step blocks (the last one partly filled),
    grouped heads folded in, pads masked: sdpa's output on the concatenated cache, to bf16 precision."""
    torch.manual_seed(0)
    b, h, d, widths = 3, 4, 16, (7, 32, 32, 5)
    keys = [torch.randn(b, kv_heads, w, d).bfloat16() for w in widths]
    values = [torch.randn(b, kv_heads, w, d).bfloat16() for w in widths]
    query = torch.randn(b, h, 1, d)
    keep = torch.ones(b, 1, 1, sum(widths), dtype=torch.bool)
    keep[1, ..., :3] = False  # a left-padded row
    out, _ = dmlm.decoding.greedy._step_attention(None, query, keys, values, keep)  # (B, 1, H, D)
    k, v = (torch.cat(x, 2).float().repeat_interleave(h // kv_heads, 1) for x in (keys, values))
    ref = torch.nn.functional.scaled_dot_product_attention(query, k, v, attn_mask=keep).transpose(1, 2)
    assert out.shape == ref.shape and out.dtype == torch.float32
    assert torch.allclose(out, ref, atol=0.03), (out - ref).abs().max()


def test_bf16_greedy_follows_generate_on_the_trained_checkpoint(ck, corpus, monkeypatch):
    """Trained logits have margins far above bf16 rounding: the memorized transcripts come out
    the same, and nearly every id equals fp32 `generate`'s. Blocks of 1 or 2 steps make rows
    attend over several blocks (and finished rows get dropped): the ids stay the same."""
    stores = [TokenStore(corpus.units / name) for name in ("tiny", "dev")]
    units = [np.asarray(s[i]) for s in stores for i in range(len(s))]
    prompts = [get_task("asr").prompt(Sample(id=str(i), units=u), ck.vocab) for i, u in enumerate(units)]
    fast = generate(ck.model, prompts, ck.vocab, "text", DecodingOptions(compute_type="bfloat16", max_new_tokens=40,
                                                                         batch_size=8))
    ref = generate(ck.model, prompts, ck.vocab, "text", DecodingOptions(engine="transformers", max_new_tokens=40,
                                                                        batch_size=8))
    refs = [ck.tokenizer.encode(t, add_special_tokens=False) for t in corpus.texts(corpus.tiny)]
    assert fast[:4] == refs
    same = sum(a == b for a, b in zip(fast, ref))
    assert same >= 0.8 * len(ref), f"{same} of {len(ref)} rows as generate's"
    for block in (1, 2):  # whole blocks only; a partly filled last block every other step
        monkeypatch.setattr(dmlm.decoding.greedy, "STEP_BLOCK", block)
        assert generate(ck.model, prompts, ck.vocab, "text",
                        DecodingOptions(compute_type="bfloat16", max_new_tokens=40, batch_size=8)) == fast
    assert max(map(len, fast)) >= 4  # 4 blocks of 1, 2 of 2


def test_block_cache_keeps_every_step_and_drops_rows(monkeypatch):
    monkeypatch.setattr(dmlm.decoding.greedy, "STEP_BLOCK", 3)
    layer = dmlm.decoding.greedy._BlockLayer(batch=4, capacity=100, dtype=torch.bfloat16)
    prompt = torch.randn(4, 2, 5, 8)
    keys, _ = layer.update(prompt, -prompt)  # an unpacked prompt pass: one (B, H, 5, D) block
    assert keys.shape == (4, 2, 5, 8) and keys.dtype == torch.bfloat16 and keys.is_contiguous()
    steps = [torch.randn(4, 2, 1, 8) for _ in range(7)]
    for x in steps:
        keys, values = layer.update(x, -x)
    assert [k.shape[2] for k in keys] == [5, 3, 3, 1] and layer.get_seq_length() == 12
    assert all(k.is_contiguous() for k in keys[:-1])
    full = torch.cat([prompt, *steps], 2).bfloat16()
    assert torch.equal(torch.cat(keys, 2), full) and torch.equal(torch.cat(values, 2), -torch.cat([prompt, *steps], 2).bfloat16())
    layer.batch_select_indices(torch.tensor([0, 2]))
    keys, _ = layer.update(steps[0][:2], steps[0][:2])
    assert torch.equal(torch.cat(keys, 2)[:, :, :12], full[[0, 2]]) and layer.get_seq_length() == 13


def test_bf16_greedy_on_a_random_model_stays_close_to_generate(tiny):
    """A random model's logits have near-ties, so ids may part from `generate`'s; the first
    step (the prompt pass) agrees on nearly every row, and stopping works."""
    model, vocab, prompts = tiny
    fast = generate(model, prompts, vocab, "text", DecodingOptions(compute_type="bfloat16", max_new_tokens=12,
                                                                   batch_size=24))
    ref = generate(model, prompts, vocab, "text", DecodingOptions(engine="transformers", max_new_tokens=12,
                                                                  batch_size=24))
    first = sum(a[:1] == b[:1] for a, b in zip(fast, ref))
    assert first >= 20, f"{first} of 24 first ids as generate's"
    assert any(len(o) < 12 for o in fast) and all(len(o) <= 12 for o in fast)


def test_compute_type_is_checked():
    with pytest.raises(ValueError, match="compute_type"):
        DecodingOptions(compute_type="int8")
    with pytest.raises(ValueError, match="greedy decoding with the dmlm engine"):
        DecodingOptions(compute_type="bfloat16", strategy="beam")


@pytest.mark.parametrize("family", ["llama", "gpt2", "opt"])
def test_bf16_greedy_runs_every_plain_family(family, monkeypatch):
    """GPT-2 (Conv1D projections stay fp32) and OPT (biased linears) decode through the bf16 copy
    and its block cache past several blocks; a random model's ids mostly match `generate`'s."""
    monkeypatch.setattr(dmlm.decoding.greedy, "STEP_BLOCK", 3)
    model, vocab, prompts = _tiny_model(family)
    opts = dict(max_new_tokens=40, batch_size=24)
    fast = generate(model, prompts, vocab, "text", DecodingOptions(compute_type="bfloat16", **opts))
    ref = generate(model, prompts, vocab, "text", DecodingOptions(engine="transformers", **opts))
    assert sum(a == b for a, b in zip(fast, ref)) >= 20 and all(len(o) <= 40 for o in fast)
