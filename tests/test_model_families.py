"""Model building: every supported family from scratch, and a pretrained start whose text
embeddings stay untouched while the new rows start at their mean."""

from __future__ import annotations

import pytest
import torch

from dmlm.modeling import ModelConfig, build_model, extend_embeddings
from dmlm.vocab import Vocab


@pytest.mark.parametrize("family", ["llama", "gpt2", "opt"])
def test_scratch_families_build_and_run(family):
    vocab = Vocab(text_size=300, speech_size=16)
    cfg = ModelConfig(family=family, hidden_size=64, layers=2, heads=2, intermediate_size=128, max_positions=256)
    model = build_model(cfg, vocab)
    assert model.get_input_embeddings().weight.shape[0] == vocab.size
    ids = torch.randint(0, vocab.used_size, (2, 17))
    out = model(input_ids=ids, attention_mask=torch.ones_like(ids))
    assert out.logits.shape == (2, 17, vocab.size)


def test_unknown_family_is_an_error():
    with pytest.raises(ValueError, match="family"):
        build_model(ModelConfig(family="mamba"), Vocab(text_size=300))


def test_pretrained_start_keeps_text_rows_and_initializes_new_rows_at_the_mean(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    lm = LlamaForCausalLM(LlamaConfig(vocab_size=320, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                                      intermediate_size=128, tie_word_embeddings=False))
    old_in = lm.get_input_embeddings().weight.detach().clone()
    old_out = lm.get_output_embeddings().weight.detach().clone()
    lm.save_pretrained(tmp_path / "lm")
    vocab = Vocab(text_size=300, speech_size=40)  # the LLM has 20 spare rows past its tokenizer

    model = build_model(ModelConfig(init="pretrained", llm=str(tmp_path / "lm")), vocab)
    w_in, w_out = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    assert w_in.shape[0] == w_out.shape[0] == vocab.size == model.config.vocab_size
    torch.testing.assert_close(w_in[:300], old_in[:300])  # text ids untouched
    torch.testing.assert_close(w_out[:300], old_out[:300])
    mean, std = old_in[:300].mean(0), old_in[:300].std(0)
    new = w_in[300:]
    assert (new - mean).abs().max() < 0.2 * std.max()  # mean + small noise, not random N(0, 0.02)
    assert not torch.equal(new[0], new[1])  # the noise breaks the symmetry between new tokens


def test_extend_embeddings_is_idempotent_in_shape():
    vocab = Vocab(text_size=300, speech_size=16)
    model = build_model(ModelConfig(hidden_size=64, layers=1, heads=2, intermediate_size=128), vocab)
    extend_embeddings(model, vocab)
    assert model.get_input_embeddings().weight.shape[0] == vocab.size
