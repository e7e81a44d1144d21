"""Build the causal LM behind a DMLM.

Design decisions:
- Any Hugging Face causal-LM family works (Llama/SmolLM2, OPT, GPT-2): from pretrained
  weights (a preset, hub id or local dir) or randomly initialized from a small config.
- `init=random` is the pretrained LLM's exact architecture and tokenizer with fresh weights:
  the control arm that isolates what the pretrained *weights* bring. Every option that changes
  the pretrained shape (`keep_layers`, `trim_vocab`) applies to it the same way, so the two arms
  of an init study differ only in their starting values.
- For a CPU-sized pretrained start (measured in bench/pretrained_speed.py): `keep_layers` keeps
  the first N decoder layers (the config is cut before loading, so only those are read), and
  `trim_vocab` keeps the embedding rows of the text ids the corpus uses
  (`dmlm.tokenizers.trim`), in the trimmed tokenizer's order. The result is still a plain
  model of its family: `from_pretrained` loads the checkpoint without dmlm.
- New embedding rows (specials, units, codes) start at the mean of the pretrained rows plus
  small noise: a neutral start that does not disturb the LM's output distribution, the
  usual practice when extending a vocabulary (Hewitt, 2021). With init=random they are drawn by
  the model's own init like every other row: that arm is a model trained from scratch.
  `new_rows_init` chooses otherwise (`spread`: the mean plus the rows' full spread, so unit rows
  start as distinct from each other as text rows are; docs/design/training.md).
- `adapter: lora` injects peft's LoRA layers into the built model (`dmlm.modeling.adapters`).
- Saving and loading, and the checkpoint folder's layout, are `dmlm.modeling.checkpoint`'s.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from collections.abc import Sequence

from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel

from dmlm.util.errors import UserError
from dmlm.util.progress import quiet_transformers
from dmlm.vocab import Vocab


@dataclass
class ModelConfig:
    init: str = "scratch"
    """scratch (random init from the size fields below), pretrained (weights of `llm`) or random (`llm`'s
    architecture and tokenizer, randomly initialized: the control arm of a pretrained start)."""
    llm: str = "smollm2-135m"
    """Pretrained LLM: a dmlm preset, hub id or local directory (init=pretrained or random)."""
    keep_layers: int = 0
    """init=pretrained/random: keep only the first N decoder layers of `llm` (0: all); a CPU-sized LLM."""
    trim_vocab: bool = False
    """init=pretrained/random: keep only the text tokens the training texts use, closed under BPE merges, and
    their embedding rows; the tokenizer still encodes and decodes any text exactly (dmlm.tokenizers.trim)."""
    family: str = "llama"
    """Architecture for init=scratch: llama, gpt2 or opt."""
    hidden_size: int = 256
    layers: int = 4
    heads: int = 4
    intermediate_size: int = 1024
    max_positions: int = 1024
    dropout: float = 0.0
    tie_embeddings: bool = True
    new_rows_init: str = "auto"
    """init=pretrained/random: start of the embedding rows dmlm adds (specials, units, codes): mean (the mean of the
    LLM's rows plus 2 % of their spread as noise: new tokens start as an average one and barely move the LM's output),
    spread (the mean plus the rows' full per-dimension spread: new rows as distinct from each other as text rows),
    random (the model's own init) or auto (mean for init=pretrained, random for init=random)."""
    adapter: str = "none"
    """none (train the weights themselves) or lora: low-rank adapters (peft) on the body's linear layers, which stay
    frozen; the embedding rows still train fully; checkpoints are saved with the adapters merged (plain model)."""
    lora_rank: int = 16
    """adapter=lora: rank r of each adapter (its trainable weights: r x (inputs + outputs) per layer)."""
    lora_alpha: float = 32.0
    """adapter=lora: scale of the adapters' output (peft's lora_alpha; the update is alpha / r times B A x)."""
    lora_dropout: float = 0.0
    """adapter=lora: dropout on the adapters' input (training only)."""
    lora_targets: list[str] = field(default_factory=lambda: ["all-linear"])
    """adapter=lora: module names to adapt (e.g. [q_proj, v_proj]); [all-linear]: every linear layer of the body,
    never the output layer (peft's "all-linear"). The embeddings and the output layer cannot be adapted."""

    @property
    def from_llm(self) -> bool:
        """Whether the architecture and text tokenizer are `llm`'s (init=pretrained or random)."""
        return self.init in ("pretrained", "random")

    def validate(self) -> None:
        if self.init not in ("scratch", "pretrained", "random"):
            raise UserError(f"model.init must be scratch, pretrained or random, got {self.init!r}")
        if self.keep_layers < 0:
            raise UserError(f"model.keep_layers must be >= 0 (0: all layers), got {self.keep_layers}")
        if not self.from_llm and (self.keep_layers or self.trim_vocab):
            raise UserError("model.keep_layers and model.trim_vocab cut a pretrained LLM; they need "
                            "model.init=pretrained or random (size a scratch model with model.layers and "
                            "data.bpe_vocab_size)")
        if self.new_rows_init not in NEW_ROWS_INITS:
            raise UserError(f"model.new_rows_init must be one of {', '.join(NEW_ROWS_INITS)}, "
                            f"got {self.new_rows_init!r}")
        if not self.from_llm and self.new_rows_init != "auto":
            raise UserError("model.new_rows_init starts the rows added to a pretrained LLM's vocabulary; it needs "
                            "model.init=pretrained or random (a scratch model initializes every row alike)")
        if self.adapter not in ("none", "lora"):
            raise UserError(f"model.adapter must be none or lora, got {self.adapter!r}")
        if self.adapter == "lora" and not (self.lora_rank >= 1 and self.lora_alpha > 0 and 0 <= self.lora_dropout < 1
                                           and self.lora_targets):
            raise UserError(f"model.adapter=lora needs lora_rank >= 1, lora_alpha > 0, 0 <= lora_dropout < 1 and at "
                            f"least one lora_targets entry; got rank {self.lora_rank}, alpha {self.lora_alpha}, "
                            f"dropout {self.lora_dropout}, targets {self.lora_targets}")


NEW_ROWS_INITS = ("auto", "mean", "spread", "random")


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


def llm_config(cfg: ModelConfig):
    """The config of `cfg.llm`, cut to `cfg.keep_layers` decoder layers."""
    from dmlm.util.assets import llm_dir

    config = AutoConfig.from_pretrained(llm_dir(cfg.llm))
    if cfg.keep_layers:
        total = config.num_hidden_layers
        if cfg.keep_layers > total:
            raise UserError(f"model.keep_layers={cfg.keep_layers} but {cfg.llm} has {total} layers")
        config.num_hidden_layers = cfg.keep_layers
        if isinstance(getattr(config, "layer_types", None), list):  # per-layer attention kinds (newer configs)
            config.layer_types = config.layer_types[: cfg.keep_layers]
    return config


def llm_body(cfg: ModelConfig) -> PreTrainedModel:
    """`cfg.llm` cut to `cfg.keep_layers`, with its pretrained weights (`init: pretrained`) or fresh ones
    (`init: random`), in fp32, before any vocabulary change."""
    from dmlm.util.assets import llm_dir

    config = llm_config(cfg)
    if cfg.init == "pretrained":
        # the dropped layers' weights are skipped by design: no report of them
        with quiet_transformers(report=not cfg.keep_layers):
            return AutoModelForCausalLM.from_pretrained(llm_dir(cfg.llm), config=config, dtype=torch.float32)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32)


def build_model(cfg: ModelConfig, vocab: Vocab, seed: int = 0, text_rows: Sequence[int] | None = None) -> PreTrainedModel:
    """The LM for `vocab`. With `cfg.trim_vocab`, `text_rows[i]` is the LLM id whose embedding row text id i
    keeps (`TextTokenizer.source_ids` of the trimmed tokenizer)."""
    cfg.validate()
    torch.manual_seed(seed)
    if cfg.init == "scratch":
        return AutoModelForCausalLM.from_config(_scratch_config(cfg, vocab))
    model = llm_body(cfg)
    if cfg.trim_vocab:
        if text_rows is None or len(text_rows) != vocab.text_size:
            raise ValueError(f"model.trim_vocab needs the {vocab.text_size} kept LLM ids of the trimmed tokenizer, "
                             f"got {None if text_rows is None else len(text_rows)}")
        keep_rows(model, text_rows)
    init = cfg.new_rows_init if cfg.new_rows_init != "auto" else "mean" if cfg.init == "pretrained" else "random"
    extend_embeddings(model, vocab, init=init)
    if cfg.adapter == "lora":
        from dmlm.modeling.adapters import add_lora

        add_lora(model, cfg)
    return model


@torch.no_grad()
def keep_rows(model: PreTrainedModel, rows: Sequence[int]) -> None:
    """Shrink the input (and untied output) embeddings to `rows` of the old ones, in that order."""
    w_in = model.get_input_embeddings().weight
    head = model.get_output_embeddings()
    untied = head is not None and head.weight is not w_in
    if max(rows) >= w_in.shape[0]:
        raise ValueError(f"row {max(rows)} is past the model's {w_in.shape[0]} embedding rows")
    idx = torch.as_tensor(list(rows), dtype=torch.long)
    kept_in = w_in[idx].clone()
    kept_out = head.weight[idx].clone() if untied else None
    kept_bias = head.bias[idx].clone() if untied and getattr(head, "bias", None) is not None else None
    model.resize_token_embeddings(len(idx), mean_resizing=False)  # re-ties a tied head
    model.get_input_embeddings().weight.copy_(kept_in)
    if untied:
        model.get_output_embeddings().weight.copy_(kept_out)
        if kept_bias is not None:
            model.get_output_embeddings().bias.copy_(kept_bias)
    model.config.vocab_size = len(idx)


@torch.no_grad()
def extend_embeddings(model: PreTrainedModel, vocab: Vocab, init: str = "mean") -> None:
    """Grow input (and untied output) embeddings to vocab.size. New rows (`model.new_rows_init`): "mean" = the mean
    of the old rows + 0.02 x their per-dimension std as noise, "spread" = the mean + 1 x that std (as distinct as
    the old rows), "random" = the model's own init (a randomly initialized LLM: every row random, as from scratch)."""
    old = model.get_input_embeddings().weight.shape[0]
    if old > vocab.text_size:
        # the model has spare rows past its tokenizer (common padding); they become ours
        old = vocab.text_size
    model.resize_token_embeddings(vocab.size, mean_resizing=False)  # new rows: the model's `_init_weights`
    embeddings = {id(e): e for e in (model.get_input_embeddings(), model.get_output_embeddings()) if e is not None}
    noise = {"mean": 0.02, "spread": 1.0}.get(init)
    for emb in embeddings.values() if noise is not None else ():
        w = emb.weight
        mean, std = w[:old].mean(0), w[:old].std(0)
        w[old:] = mean + noise * std * torch.randn_like(w[old:])
    model.config.vocab_size = vocab.size
    model.config.pad_token_id = vocab.pad


def model_summary(cfg: ModelConfig | None, model: PreTrainedModel) -> dict:
    n = sum(p.numel() for p in model.parameters())
    w_in = model.get_input_embeddings().weight
    out = model.get_output_embeddings()
    emb = w_in.numel() + (out.weight.numel() if out is not None and out.weight is not w_in else 0)  # untied head too
    return {"params": n, "params_non_embedding": n - emb, "family": model.config.model_type,
            **({"config": asdict(cfg)} if cfg else {})}
