"""Build, save and load the causal LM behind a DMLM.

Design decisions:
- Any Hugging Face causal-LM family works (Llama/SmolLM2, OPT, GPT-2): from pretrained
  weights (a preset, hub id or local dir) or randomly initialized from a small config.
- New embedding rows (specials, units, codes) start at the mean of the pretrained rows plus
  small noise: a neutral start that does not disturb the LM's output distribution, the
  usual practice when extending a vocabulary (Hewitt, 2021).
- A checkpoint is a plain Hugging Face model directory plus `dmlm.json` (vocabulary layout,
  tasks, codebook fingerprints, config) and `codebooks/`; it loads with
  `AutoModelForCausalLM.from_pretrained` + `AutoTokenizer.from_pretrained`. It is written to
  a temp folder and renamed into place, so a killed save never leaves half a checkpoint.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, PreTrainedModel

from dmlm.vocab import Vocab

DMLM_JSON = "dmlm.json"
FORMAT_VERSION = 1


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
    raise ValueError(f"unknown model family {cfg.family!r}; expected llama, gpt2 or opt")


def build_model(cfg: ModelConfig, vocab: Vocab, seed: int = 0) -> PreTrainedModel:
    torch.manual_seed(seed)
    if cfg.init == "scratch":
        model = AutoModelForCausalLM.from_config(_scratch_config(cfg, vocab))
        return model
    if cfg.init != "pretrained":
        raise ValueError(f"model.init must be scratch or pretrained, got {cfg.init!r}")
    from dmlm.assets import llm_dir

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


def save_checkpoint(
    out_dir: str | Path, model: PreTrainedModel, hf_tokenizer, vocab: Vocab, meta: dict,
    codebooks: dict[str, Path] | None = None,
) -> Path:
    """Write a complete checkpoint folder atomically (temp folder + rename)."""
    out = Path(out_dir)
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp, safe_serialization=True)
    hf_tokenizer.save_pretrained(tmp)
    cb_dir = tmp / "codebooks"
    cb_dir.mkdir()
    for modality, path in (codebooks or {}).items():
        shutil.copy2(path, cb_dir / f"{modality}.safetensors")
    if (out / "vocoder").is_dir():  # trained separately (`dmlm vocoder train`): survives re-saves
        shutil.copytree(out / "vocoder", tmp / "vocoder")
    info = {"format_version": FORMAT_VERSION, "vocab": vocab.to_dict(), **meta}
    (tmp / DMLM_JSON).write_text(json.dumps(info, indent=1, default=str))
    old = out.with_name(f".{out.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)
    return out


@dataclass
class Checkpoint:
    path: Path
    model: PreTrainedModel
    tokenizer: object  # unified PreTrainedTokenizer
    vocab: Vocab
    meta: dict

    def codebook(self, modality: str = "speech"):
        """The checkpoint's codebook, loaded once (its feature extractor is expensive to build)."""
        cache = self.__dict__.setdefault("_codebooks", {})
        if modality in cache:
            return cache[modality]
        path = self.path / "codebooks" / f"{modality}.safetensors"
        if not path.is_file():
            raise FileNotFoundError(f"{self.path}: checkpoint has no {modality} codebook ({path})")
        if modality == "image":
            from dmlm.tokenizers.image import ImageCodebook

            cb = ImageCodebook.load(path)
        else:
            from dmlm.tokenizers.speech import Codebook

            cb = Codebook.load(path)
        cb.check(self.vocab.fingerprints.get(modality), f"checkpoint {self.path}")
        cache[modality] = cb
        return cb


def load_checkpoint(path: str | Path, device: str = "cpu") -> Checkpoint:
    from transformers import AutoTokenizer

    path = Path(path)
    info_path = path / DMLM_JSON
    if not info_path.is_file():
        raise FileNotFoundError(f"{path}: not a dmlm checkpoint (no {DMLM_JSON})")
    meta = json.loads(info_path.read_text())
    vocab = Vocab.from_dict(meta.pop("vocab"))
    model = AutoModelForCausalLM.from_pretrained(path).to(device).eval()
    tok = AutoTokenizer.from_pretrained(path)
    if len(tok) != vocab.size:
        raise ValueError(f"{path}: tokenizer has {len(tok)} ids, dmlm.json layout says {vocab.size}")
    return Checkpoint(path, model, tok, vocab, meta)


def model_summary(cfg: ModelConfig | None, model: PreTrainedModel) -> dict:
    n = sum(p.numel() for p in model.parameters())
    w_in = model.get_input_embeddings().weight
    out = model.get_output_embeddings()
    emb = w_in.numel() + (out.weight.numel() if out is not None and out.weight is not w_in else 0)  # untied head too
    return {"params": n, "params_non_embedding": n - emb, "family": model.config.model_type,
            **({"config": asdict(cfg)} if cfg else {})}


@torch.no_grad()
def check_packing(model: PreTrainedModel) -> None:
    """Refuse packed training (`train.packing`) with a model that would let packed examples meet.

    Two short random sequences run packed in one row (positions restarting, block-diagonal
    mask, `dmlm.data.packing`) and each alone must give the same logits. Families that build
    position biases from a 2-D mask (BLOOM's ALiBi) or ignore `position_ids` fail, by name.
    """
    from dmlm.data.packing import packed_attention_mask

    family = model.config.model_type
    device = next(model.parameters()).device
    g = torch.Generator().manual_seed(0)  # not the global RNG: training randomness stays as without packing
    V = model.get_input_embeddings().num_embeddings
    a, b = (torch.randint(0, V, (1, n), generator=g).to(device) for n in (5, 3))
    segment = torch.tensor([[0] * 5 + [1] * 3], device=device)
    positions = torch.tensor([[*range(5), *range(3)]], device=device)
    was_training = model.training
    model.eval()
    try:
        packed = model(input_ids=torch.cat([a, b], 1), attention_mask=packed_attention_mask(segment),
                       position_ids=positions, use_cache=False).logits.float()
        alone = torch.cat([model(input_ids=x).logits.float() for x in (a, b)], 1)
    except Exception as e:  # noqa: BLE001 - any failure means: this family cannot run packed rows
        raise ValueError(f"train.packing: the {family!r} model family cannot run packed rows "
                         f"({type(e).__name__}: {e}); set train.packing=false") from e
    finally:
        model.train(was_training)
    err = float((packed - alone).abs().max())
    tol = (1e-4 if next(model.parameters()).dtype == torch.float32 else 3e-2) * max(1.0, float(alone.abs().max()))
    if not err <= tol:
        raise ValueError(f"train.packing: the {family!r} model family lets packed examples attend to each other "
                         f"(logits differ by {err:.3g} from each example run alone); set train.packing=false")
