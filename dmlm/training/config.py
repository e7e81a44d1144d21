"""The settings of one training run: data, model and optimization (`dmlm train CONFIG.yaml`).

Data paths have no defaults: a run names its manifests, token stores, codebooks and output
folder (a recipe such as `dmlm demo` fills them), and a missing one is an error naming the key
(`RunConfig.validate`), never a silent read of some other run's folder. Values that type-check
but cannot train (zero or negative steps, `save_every: 0`, heads that do not divide the hidden
size, an unknown precision, a negative learning rate) are refused there too, by key, before any
work starts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from dmlm.modeling import ModelConfig
from dmlm.tasks import get_task, parse_spec, reads
from dmlm.util.config import ConfigError


@dataclass
class DataConfig:
    train: str = ""
    """Training manifest (JSONL)."""
    dev: str = ""
    """Dev manifest, for the dev loss during training (empty: no dev loss)."""
    units: str = ""
    """Folder of token stores written by `dmlm tokenize` (one per manifest, named after it)."""
    codebook: str = ""
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
    unpaired_only: list[str] = field(default_factory=list)
    """Task specs that read only the `unpaired` manifests, not `train` (e.g. [text_lm, speech_lm, image_lm]): the
    unpaired data of mixed supervision as more data, not the paired records' text, audio or images reused."""
    speakers: dict[str, list[str]] = field(default_factory=dict)
    """Task spec -> the only speakers whose records it trains on, e.g. {t2s: [piper:en_US-joe-medium]}: a TTS
    voice learned from one speaker while ASR hears them all (tasks not named use every record)."""


@dataclass
class Stage:
    """One stage of `train.stages`: what trains, for how many steps."""

    steps: int = 0
    """Optimizer steps of this stage; the last stage leaves it 0 (it runs to the end of the run)."""
    train: str = "all"
    """What trains: new_rows (only the embedding rows dmlm adds: specials, speech units, image codes; the body and
    the text rows frozen), embeddings (every embedding row; the body frozen), adapters (the LoRA adapters and every
    embedding row; needs model.adapter=lora) or all (every weight; not with adapters)."""


STAGE_KINDS = ("new_rows", "embeddings", "adapters", "all")


@dataclass
class TrainConfig:
    out: str = ""
    """Checkpoint folder (a Hugging Face model dir); training state lives in OUT/training_state/."""
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
    logits_at_targets: bool = False
    """Run the output layer only at the positions the loss reads (with loss target or target_length_normalized:
    the target span, not the speech prompt); same loss, less compute (docs/design/loss.md)."""
    stages: list[Stage] = field(default_factory=list)
    """Staged training, e.g. [{steps: 200, train: new_rows}, {train: adapters}]: the first 200 steps train only the
    new rows, then the adapters (see `Stage`); one schedule, one run, resumable across the boundary. Empty: one
    stage, adapters with model.adapter=lora, else all (docs/design/training.md)."""
    lr_new_rows: float = 1.0
    """Learning-rate multiplier of the embedding rows dmlm adds (specials, speech units, image codes; an untied
    head's too), e.g. 10: a pretrained start's unit rows learn faster than its body (docs/design/training.md)."""
    lr_text_rows: float = 1.0
    """Learning-rate multiplier of the text rows (the LLM's own embedding rows); 0 keeps them as they start."""
    allow_lossy_start: bool = False
    """model.init=pretrained: train even if the start check fails (the built model's text perplexity more than 2 %
    above the untouched LLM's on the run's held-out text, e.g. after model.keep_layers cut it); it is still logged."""
    eval_every: int = 250
    dev_mismatched: bool = False
    """Each dev pass also scores the dev set with every example's source (speech, text or image the prompt reads)
    taken from another dev example of its task, the target kept, and logs dev_loss_mismatched and dev_listening
    (mismatched minus matched, over the tasks with a source; per task too): about 0 when the model ignores its
    input, large when it transcribes from it. Dev loss alone rewards a good text prior (docs/design/training.md)."""
    save_every: int = 500
    snapshots: list[int] = field(default_factory=list)
    """Steps at which a copy of the model is also kept, a plain model folder without training state
    (`OUT.snapshots/step-N`, `dmlm.training.loop.snapshot_dir`): what learning curves score (`dmlm study`'s
    `curve`). Each is written once; a resumed run keeps those already written."""
    log_every: int = 10
    seed: int = 0
    compile: bool = False
    """Compile each decoder layer with torch.compile (inductor; needs a C compiler): faster steps at full depth
    after seconds of compiling (what it saves: bench/pretrained_speed.py, docs/performance.md). Numerics differ
    from eager at rounding level, so a resumed run keeps its setting."""
    precision: str = "auto"
    """auto (bf16 autocast where the GPU or CPU has native bf16, else fp32; `dmlm.util.precision`), fp32 or bf16."""
    parallel: str = "auto"
    """How several processes share the work: ddp (each holds the whole model and optimizer), fsdp (FSDP2: weights,
    gradients and optimizer state sharded over them, the training state saved sharded), auto (fsdp when launched
    with configs/accelerate/fsdp.yaml, else ddp; `dmlm.training.distributed`)."""


PRECISIONS = ("auto", "fp32", "bf16")


def _check_snapshots(t: TrainConfig) -> None:
    bad = [s for s in t.snapshots if not (isinstance(s, int) and 0 < s < t.steps)]
    if bad:
        raise ConfigError(f"train.snapshots: expected steps in [1, train.steps={t.steps}), got {bad}")
    if t.snapshots and t.parallel == "fsdp":
        raise ConfigError("train.snapshots: not written under train.parallel=fsdp (a snapshot is the main process's "
                          "unsharded model); use ddp, or score the checkpoints saved every train.save_every")


@dataclass
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def validate(self) -> None:
        """The paths a training run cannot start without, named by key."""
        need = {"data.train": self.data.train, "train.out": self.train.out}
        if any(_reads_tokens(spec) for spec in self.data.tasks):
            need["data.units"] = self.data.units
        missing = [k for k, v in need.items() if not v]
        if missing:
            raise ConfigError(f"the run config does not set {', '.join(missing)} (e.g. {missing[0]}=PATH): "
                              "a training run names its own data and output folder")
        self.check_values()

    def check_values(self) -> None:
        """Values that type-check but cannot train (a zero step count divides by zero, a negative one
        trains forever, an unknown precision would run as fp32): an error naming the key."""
        from dmlm.training.loss import LOSSES

        t, m, d = self.train, self.model, self.data
        m.validate()  # e.g. a scratch model asked to trim an LLM's vocabulary: refused when the config loads
        positive = {"train.steps": t.steps, "train.batch_tokens": t.batch_tokens, "train.grad_accum": t.grad_accum,
                    "train.eval_every": t.eval_every, "train.save_every": t.save_every, "train.log_every": t.log_every,
                    "train.lr": t.lr, "train.clip": t.clip, "data.bpe_vocab_size": d.bpe_vocab_size}
        if m.init == "scratch":  # a pretrained LLM brings its own sizes
            positive.update({"model.hidden_size": m.hidden_size, "model.layers": m.layers, "model.heads": m.heads,
                             "model.intermediate_size": m.intermediate_size, "model.max_positions": m.max_positions})
        non_negative = {"train.max_minutes": t.max_minutes, "train.warmup_steps": t.warmup_steps,
                        "train.weight_decay": t.weight_decay, "train.pack_tokens": t.pack_tokens,
                        "model.dropout": m.dropout}
        for key, v in positive.items():
            if not v > 0:  # (also catches NaN)
                raise ConfigError(f"{key}: must be > 0, got {v!r}")
        for key, v in non_negative.items():
            if not v >= 0:
                raise ConfigError(f"{key}: must be >= 0, got {v!r}")
        for key, v in {**positive, **non_negative, "train.min_lr_ratio": t.min_lr_ratio}.items():
            if not math.isfinite(v) and key != "train.max_minutes":  # inf trains to NaN at once
                raise ConfigError(f"{key}: must be a finite number, got {v!r}")
        if not 0 <= t.seed < 2**32:  # numpy's and accelerate's seeds are 32-bit unsigned
            raise ConfigError(f"train.seed: must be in [0, 2**32), got {t.seed!r}")
        if not 0 <= t.min_lr_ratio <= 1:
            raise ConfigError(f"train.min_lr_ratio: must be in [0, 1], got {t.min_lr_ratio!r}")
        if not 0 <= m.dropout < 1:
            raise ConfigError(f"model.dropout: must be in [0, 1), got {m.dropout!r}")
        if t.precision not in PRECISIONS:
            raise ConfigError(f"train.precision: expected one of {', '.join(PRECISIONS)}, got {t.precision!r}")
        from dmlm.training.distributed import PARALLEL

        if t.parallel not in PARALLEL:
            raise ConfigError(f"train.parallel: expected one of {', '.join(PARALLEL)}, got {t.parallel!r}")
        if t.loss not in LOSSES:
            raise ConfigError(f"train.loss: expected one of {', '.join(LOSSES)}, got {t.loss!r}")
        if len(t.lambdas) != 3 or not all(0 <= x < math.inf for x in t.lambdas):
            raise ConfigError(f"train.lambdas: expected 3 weights >= 0 (text, speech, image), got {t.lambdas!r}")
        if d.weights and (not all(0 <= w < math.inf for w in d.weights) or not sum(d.weights) > 0):
            raise ConfigError(f"data.weights: expected finite weights >= 0 with a positive sum, got {d.weights!r}")
        _check_stages(t, m)
        _check_snapshots(t)
        if m.init == "scratch" and m.hidden_size % m.heads:
            raise ConfigError(f"model.heads: {m.heads} does not divide model.hidden_size={m.hidden_size} "
                              "(each head gets hidden_size / heads dimensions)")


def _check_stages(t: TrainConfig, m: ModelConfig) -> None:
    """train.stages names known kinds that fit model.adapter, and every stage but the last has its steps;
    the per-row learning-rate multipliers are finite, the new rows' positive."""
    lora = m.adapter == "lora"
    for i, stage in enumerate(t.stages):
        key, last = f"train.stages[{i}]", i == len(t.stages) - 1
        if stage.train not in STAGE_KINDS:
            raise ConfigError(f"{key}.train: expected one of {', '.join(STAGE_KINDS)}, got {stage.train!r}")
        if stage.train == "adapters" and not lora:
            raise ConfigError(f"{key}.train=adapters needs model.adapter=lora (model.adapter={m.adapter})")
        if stage.train == "all" and lora:
            raise ConfigError(f"{key}.train=all: with model.adapter=lora the body stays frozen under its adapters; "
                              "train adapters instead (or set model.adapter=none to train every weight)")
        if last and stage.steps != 0:
            raise ConfigError(f"{key}.steps={stage.steps}: the last stage runs to the end of the run; "
                              "leave its steps 0")
        if not last and not stage.steps > 0:
            raise ConfigError(f"{key}.steps: every stage but the last needs steps > 0, got {stage.steps!r}")
    if t.stages and sum(s.steps for s in t.stages) >= t.steps:
        raise ConfigError(f"train.stages: the stages before the last take {sum(s.steps for s in t.stages)} of the "
                          f"run's {t.steps} train.steps; the last stage ({t.stages[-1].train}) would never run")
    if not (0 < t.lr_new_rows < math.inf and 0 <= t.lr_text_rows < math.inf):
        raise ConfigError(f"train.lr_new_rows must be > 0 and train.lr_text_rows >= 0 (finite multipliers of "
                          f"train.lr), got {t.lr_new_rows!r} and {t.lr_text_rows!r}")


def _reads_tokens(spec: str) -> bool:
    """True if task `spec` reads or writes speech units or image codes (from `data.units`)."""
    task = get_task(parse_spec(spec)[0])
    return reads(task, "speech") or reads(task, "image")
