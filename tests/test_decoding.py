"""Decoding: dmlm's lean greedy loop returns exactly the ids of transformers' `generate`."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from transformers import LogitsProcessorList

from dmlm.data.shards import TokenStore
from dmlm.decoding import MIN_ROWS, DecodingOptions, ModalityFilter, _left_pad, generate, greedy
from dmlm.model import ModelConfig, build_model, load_checkpoint
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


def test_greedy_logits_are_bitwise_those_of_generate(tiny):
    """The same forward on the same inputs: not merely the same argmax."""
    model, vocab, prompts = tiny
    close = vocab.close("text")
    filt = ModalityFilter(vocab, "text")  # close tag not allowed: every row runs all steps
    ids, mask = _left_pad(prompts, vocab.pad)
    seen: list[torch.Tensor] = []
    hook = model.register_forward_hook(lambda m, a, out: seen.append(out.logits[:, -1].float().clone()))
    try:
        greedy(model, ids, mask, filt.bias(vocab.size), close, max_new_tokens=8)
    finally:
        hook.remove()
    with torch.inference_mode():
        ref = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=8, eos_token_id=close,
                             pad_token_id=vocab.pad, logits_processor=LogitsProcessorList([filt]), do_sample=False,
                             return_dict_in_generate=True, output_logits=True).logits
    assert len(seen) == len(ref) == 8
    assert all(torch.equal(a, b) for a, b in zip(seen, ref))


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


def test_greedy_stops_at_the_close_tag_and_drops_finished_rows(tiny):
    model, vocab, prompts = tiny
    close = vocab.close("text")
    filt = ModalityFilter(vocab, "text", extra=[close])
    ids, mask = _left_pad(prompts, vocab.pad)
    sizes: list[int] = []
    hook = model.register_forward_pre_hook(lambda m, a, kw: sizes.append(kw["input_ids"].shape[0]), with_kwargs=True)
    try:
        outs = greedy(model, ids, mask, filt.bias(vocab.size), close, max_new_tokens=12)
        assert len(outs) == len(prompts) and max(len(o) for o in outs) == 12
        # the batch shrank as rows finished, never below MIN_ROWS, and ran every step of the longest row
        assert sizes[0] == len(prompts) and sizes == sorted(sizes, reverse=True)
        assert sizes[-1] < len(prompts) / 2 and min(sizes) >= MIN_ROWS and len(sizes) == 12
        # a filter that allows only the close tag: one forward, nothing generated
        sizes.clear()
        only_close = torch.full((vocab.size,), float("-inf"))
        only_close[close] = 0
        assert greedy(model, ids, mask, only_close, close, max_new_tokens=12) == [[] for _ in prompts]
        assert sizes == [len(prompts)]
    finally:
        hook.remove()


def test_filter_bias_is_the_logits_processor():
    vocab = Vocab(text_size=300, speech_size=16, bos_id=1, eos_id=2)
    filt = ModalityFilter(vocab, "text", extra=[vocab.close("text")])
    scores = torch.randn(3, vocab.size + 64)  # model rows past the layout are masked too
    assert torch.equal(filt(None, scores), scores + filt.bias(scores.shape[-1]))
    allowed = torch.isfinite(filt.bias(vocab.size))
    assert allowed[3:300].all() and not allowed[[1, 2, vocab.pad, vocab.speech_start]].any()
    assert allowed[vocab.close("text")]


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
