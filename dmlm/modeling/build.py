"""Build the causal LM behind a DMLM.

Design decisions:
- Any Hugging Face causal-LM family works (Llama/SmolLM2, OPT, GPT-2): from pretrained
  weights (a preset, hub id or local dir) or randomly initialized from a small config.
- New embedding rows (specials, units, codes) start at the mean of the pretrained rows plus
  small noise: a neutral start that does not disturb the LM's output distribution, the
  usual practice when extending a vocabulary (Hewitt, 2021).
- Saving and loading, and the checkpoint folder's layout, are `dmlm.modeling.checkpoint`'s.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from transformers import AutoModelForCausalLM, PreTrainedModel

from dmlm.util.errors import UserError
from dmlm.vocab import Vocab


@dataclass
class ModelConfig:
    init: str = "scratch"
    """scratch (random init from the size fields below) or pretrained (weights of `llm`)."""
    llm: str = "smollm2-135m"
    """Pretrained LLM: a dmlm preset, hub id or local directory (init=pretrained)."""
    family: str = "llama"
    """Architecture for init=scratch: llama, gpt2 or opt."""
    hidden_size: int = 256
    layers: int = 4
    heads: int = 4
    intermediate_size: int = 1024
    max_positions: int = 1024
    dropout: float = 0.0
    tie_embeddings: bool = True


def _scratch_config(cfg: ModelConfig, vocab: Vocab):
    if cfg.family == "llama":
        from transformers import LlamaConfig

        return LlamaConfig(
            vocab_size=vocab.size, hidden_size=cfg.hidden_size, num_hidden_layers=cfg.layers,
            num_attention_heads=cfg.heads, num_key_value_heads=cfg.heads, intermediate_size=cfg.intermediate_size,
            max_position_embeddings=cfg.max_positions, attention_dropout=cfg.dropout,
            tie_word_embeddings=cfg.tie_embeddings, bos_token_id=vocab.bos, eos_token_id=vocab.eos,
            pad_token_id=vocab.pad, rope_theta=10000.0,
        )
    if cfg.family == "gpt2":
        from transformers import GPT2Config

        return GPT2Config(
            vocab_size=vocab.size, n_embd=cfg.hidden_size, n_layer=cfg.layers, n_head=cfg.heads,
            n_inner=cfg.intermediate_size, n_positions=cfg.max_positions, resid_pdrop=cfg.dropout,
            embd_pdrop=cfg.dropout, attn_pdrop=cfg.dropout, tie_word_embeddings=cfg.tie_embeddings,
            bos_token_id=vocab.bos, eos_token_id=vocab.eos, pad_token_id=vocab.pad,
        )
    if cfg.family == "opt":
        from transformers import OPTConfig

        return OPTConfig(
            vocab_size=vocab.size, hidden_size=cfg.hidden_size, num_hidden_layers=cfg.layers,
            num_attention_heads=cfg.heads, ffn_dim=cfg.intermediate_size, max_position_embeddings=cfg.max_positions,
            dropout=cfg.dropout, word_embed_proj_dim=cfg.hidden_size, tie_word_embeddings=cfg.tie_embeddings,
            bos_token_id=vocab.bos, eos_token_id=vocab.eos, pad_token_id=vocab.pad,
        )
    raise UserError(f"unknown model family {cfg.family!r}; expected llama, gpt2 or opt")


def build_model(cfg: ModelConfig, vocab: Vocab, seed: int = 0) -> PreTrainedModel:
    torch.manual_seed(seed)
    if cfg.init == "scratch":
        model = AutoModelForCausalLM.from_config(_scratch_config(cfg, vocab))
        return model
    if cfg.init != "pretrained":
        raise UserError(f"model.init must be scratch or pretrained, got {cfg.init!r}")
    from dmlm.util.assets import llm_dir

    model = AutoModelForCausalLM.from_pretrained(llm_dir(cfg.llm), torch_dtype=torch.float32)
    extend_embeddings(model, vocab)
    return model


@torch.no_grad()
def extend_embeddings(model: PreTrainedModel, vocab: Vocab) -> None:
    """Grow input (and untied output) embeddings to vocab.size; new rows = mean + noise."""
    old = model.get_input_embeddings().weight.shape[0]
    if old > vocab.text_size:
        # the model has spare rows past its tokenizer (common padding); they become ours
        old = vocab.text_size
    model.resize_token_embeddings(vocab.size, mean_resizing=False)
    for emb in {id(e): e for e in (model.get_input_embeddings(), model.get_output_embeddings()) if e is not None}.values():
        w = emb.weight
        mean, std = w[:old].mean(0), w[:old].std(0)
        w[old:] = mean + 0.02 * std * torch.randn_like(w[old:])
    model.config.vocab_size = vocab.size
    model.config.pad_token_id = vocab.pad


def model_summary(cfg: ModelConfig | None, model: PreTrainedModel) -> dict:
    n = sum(p.numel() for p in model.parameters())
    w_in = model.get_input_embeddings().weight
    out = model.get_output_embeddings()
    emb = w_in.numel() + (out.weight.numel() if out is not None and out.weight is not w_in else 0)  # untied head too
    return {"params": n, "params_non_embedding": n - emb, "family": model.config.model_type,
            **({"config": asdict(cfg)} if cfg else {})}
