"""Typed configuration: dataclasses are the config; YAML files and `a.b=value` overrides fill them.

Design decisions:
- Every stage's settings are a dataclass with defaults and a docstring per field (the help
  text); there are no dotted-string component lookups that fail only at run time: an unknown
  key or a value of the wrong type is an error naming the key.
- The resolved config is saved beside every checkpoint and report.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dmlm.model import ModelConfig


class ConfigError(ValueError):
    pass


@dataclass
class DataConfig:
    train: str = "runs/demo/data/train.jsonl"
    """Training manifest (JSONL)."""
    dev: str = "runs/demo/data/dev.jsonl"
    """Dev manifest, for the dev loss during training."""
    units: str = "runs/demo/units"
    """Folder of token stores written by `dmlm tokenize` (one per manifest, named after it)."""
    codebook: str = "runs/demo/codebook.safetensors"
    """Speech codebook used to make the units (empty: a model without speech)."""
    text_tokenizer: str = ""
    """Text tokenizer folder; empty: a BPE trained on the training text (scratch) or the LLM's own (pretrained)."""
    bpe_vocab_size: int = 1000
    """Size of the BPE trained for from-scratch models."""
    image_codebook: str = ""
    """Image codebook (`dmlm codebook fit --modality image`); needed when a task reads or writes images."""
    unpaired: list[str] = field(default_factory=list)
    """More training manifests (e.g. text-only or image-only): their records join every task that can use them."""
    tasks: list[str] = field(default_factory=lambda: ["asr"])
    """Task specs of the mixture: asr, t2s, s2tt:LANG, i2t, text_lm[:LANG], speech_lm, image_lm."""
    weights: list[float] = field(default_factory=list)
    """Sampling weight of each task (a share of examples); empty: equal weights."""
    speakers: dict[str, list[str]] = field(default_factory=dict)
    """Task spec -> the only speakers whose records it trains on, e.g. {t2s: [piper:en_US-joe-medium]}: a TTS
    voice learned from one speaker while ASR hears them all (tasks not named use every record)."""


@dataclass
class TrainConfig:
    out: str = "runs/demo/model"
    """Checkpoint folder (a Hugging Face model dir); training state lives in OUT.state/."""
    steps: int = 3000
    """Optimizer steps (the LR schedule's length)."""
    max_minutes: float = 0.0
    """If > 0, a time budget: the schedule runs on max(step/steps, elapsed/max_minutes) and stops at 1."""
    batch_tokens: int = 6000
    """Tokens per micro-batch (padding included), batches bucketed by length."""
    grad_accum: int = 1
    """Micro-batches per optimizer step."""
    packing: bool = False
    """Pack several examples into each row (positions restart, no attention across examples) instead of padding buckets; same loss."""
    pack_tokens: int = 0
    """Length of a packed row; 0: the micro-batch budget cut into equal rows of at least 4x the longest example."""
    lr: float = 2e-3
    min_lr_ratio: float = 0.05
    warmup_steps: int = 100
    weight_decay: float = 0.1
    clip: float = 1.0
    loss: str = "length_normalized"
    """full, target, length_normalized (DMLM) or target_length_normalized (its per-modality means over target spans only)."""
    lambdas: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0])
    """Per-modality loss weights (text, speech, image) for the length-normalized losses."""
    eval_every: int = 250
    save_every: int = 500
    log_every: int = 10
    seed: int = 0
    precision: str = "auto"
    """auto (bf16 on GPU, fp32 on CPU), fp32 or bf16."""


@dataclass
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if tp is bool:
        if isinstance(value, str):
            if value.lower() in ("1", "true", "yes"):
                return True
            if value.lower() in ("0", "false", "no"):
                return False
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if tp in (int, float, str):
        try:
            if tp is int and isinstance(value, float) and not value.is_integer():
                raise ValueError
            return tp(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected {tp.__name__}, got {value!r}") from None
    if origin is list:
        (inner,) = typing.get_args(tp)
        if isinstance(value, str):
            value = yaml.safe_load(value) if value.startswith("[") else value.split(",")
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_coerce(v, inner, key) for v in value]
    if origin is dict:
        kt, vt = typing.get_args(tp)
        if isinstance(value, str):
            value = yaml.safe_load(value)
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return {_coerce(k, kt, f"{key}.{k}"): _coerce(v, vt, f"{key}.{k}") for k, v in value.items()}
    return value


def _fill(obj: Any, values: dict, prefix: str = "") -> Any:
    """`obj` with `values` set (nested dataclasses filled in place); a frozen dataclass (e.g.
    DecodingOptions) comes back as a new, validated instance."""
    hints = typing.get_type_hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj)}
    changes = {}
    for key, value in values.items():
        full = f"{prefix}{key}"
        if key not in names:
            raise ConfigError(f"unknown config key {full!r}; known: {', '.join(sorted(prefix + n for n in names))}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{full}: expected a mapping")
            changes[key] = _fill(current, value, f"{full}.")
        else:
            changes[key] = _coerce(value, hints[key], full)
    if not type(obj).__dataclass_params__.frozen:
        for key, value in changes.items():
            setattr(obj, key, value)
        return obj
    try:
        return dataclasses.replace(obj, **changes)
    except ValueError as e:
        raise ConfigError(f"{prefix.rstrip('.') or type(obj).__name__}: {e}") from None


def load_config(path: str | Path | None = None, overrides: list[str] = (), cls: type = RunConfig) -> Any:
    """A `cls` from defaults, then the YAML file, then `a.b=value` overrides."""
    cfg = cls()
    if path:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found")
        values = yaml.safe_load(path.read_text()) or {}
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: expected a YAML mapping at the top")
        cfg = _fill(cfg, values)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key.sub=value")
        key, value = item.split("=", 1)
        nested: dict = {}
        cur = nested
        parts = key.split(".")
        for p in parts[:-1]:
            cur = cur.setdefault(p, {})
        cur[parts[-1]] = yaml.safe_load(value) if value else value
        cfg = _fill(cfg, nested)
    return cfg


def field_docs(cls: type) -> dict[str, str]:
    """The docstring under each dataclass field (the help text of its CLI flag)."""
    import ast
    import inspect
    import textwrap

    docs: dict[str, str] = {}
    body = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0].body
    for node, nxt in zip(body, body[1:]):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str)):
            docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def dump_config(cfg: Any) -> str:
    return yaml.safe_dump(asdict(cfg), sort_keys=False)
