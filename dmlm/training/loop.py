"""The pieces of a training run: start or resume, one optimizer step, the dev loss, the save.

Design decisions:
- `accelerate` owns devices, DDP/FSDP/DeepSpeed and mixed precision; dmlm owns the data order
  and the loss. The loss denominators of a step are summed over its micro-batches and all-reduced
  over ranks *before* the forward passes (they depend only on masks), so the length-normalized
  loss is exact under accumulation and data parallelism (see `dmlm.training.loss`).
- Every rank walks the same global data order (`dmlm.training.data_order`); rank r takes
  micro-batches r, r+world, … of each step, and the counts logged (tokens by modality, examples
  by task) are summed over ranks.
- The LR schedule is `dmlm.util.schedule.warmup_cosine` on the progress fraction (step/steps, or
  with a time budget the larger of that and elapsed/max_minutes): the demo anneals fully within
  its budget on any machine.
- A save writes the model and the training state (`dmlm.training.state.TrainingState`) into one
  checkpoint folder (`dmlm.modeling.save_checkpoint`), so they are published together.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dmlm.modeling import CheckpointFiles, build_model, load_checkpoint, save_checkpoint
from dmlm.modeling.adapters import adapter_state, has_adapters
from dmlm.tasks import Rendered
from dmlm.tokenizers.text import unified_hf_tokenizer
from dmlm.training.config import RunConfig
from dmlm.training.data_order import BatchStream, Progress, bucket_batches, collate, padding_share
from dmlm.training.distributed import clip_grad_norm, no_sync, parallel_mode, prepare_model, shard
from dmlm.training.loss import logit_positions, loss_counts, loss_weights, multimodal_loss
from dmlm.training.packing import check_packing, collate_packed, packed_attention_mask
from dmlm.training.setup import Setup, check_fits
from dmlm.training.sharded import restore_training_state, stage_shards
from dmlm.training.state import (
    TrainingState,
    check_world,
    has_state,
    legacy_state_dir,
    load_progress,
    restore_adapters,
    restore_rng_state,
    state_dir_of,
)
from dmlm.training.trainable import Trainable
from dmlm.util.errors import UserError
from dmlm.util.schedule import warmup_cosine

log = logging.getLogger(__name__)


# -- the loss of a micro-batch ------------------------------------------------------------

def forward_batch(model, batch: dict, keep: torch.Tensor | None = None):
    """The model's output on a collated micro-batch (packed rows get their positions and masks).

    keep (B, T) bool: run the output layer only there (`logits_to_keep`; logits (N, V), row-major).
    It goes through the model's own forward, so DDP, adapters and a family's logit scaling see it.
    """
    kw = {} if keep is None else {"logits_to_keep": keep}
    if "segment" in batch:  # packed rows: positions restart and attention stops at each example
        return model(input_ids=batch["input_ids"], attention_mask=packed_attention_mask(batch["segment"]),
                     position_ids=batch["position_ids"], use_cache=False, **kw)
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False, **kw)


def compile_layers(model) -> int:
    """`train.compile`: compile each decoder layer in place (`nn.Module.compile`, dynamic shapes: micro-batch
    lengths vary). The layers are alike, so one compiled graph serves them all (seconds, not minutes), and
    parameter names, saving and adapters are unchanged. The layers are the model's ModuleList of
    `num_hidden_layers` blocks (any family); returns how many were compiled."""
    n = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    lists = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList) and len(m) == n]
    if not n or len(lists) != 1:
        raise UserError(f"train.compile: cannot find the {n} decoder layers of this {type(model).__name__} "
                        f"({len(lists)} lists of that length); set train.compile=false")
    for layer in lists[0]:
        layer.compile(dynamic=True)
    return len(lists[0])


def compute_loss(model, batch: dict, loss: str, counts: torch.Tensor, lambdas: torch.Tensor,
                 at_targets: bool = False) -> torch.Tensor:
    """The training objective of one micro-batch, normalized by the step's global `counts`; with
    `at_targets` the logits are computed only where the loss reads them (same value)."""
    w = loss_weights(loss, batch["attention_mask"], batch["target"], batch.get("segment"))
    out = forward_batch(model, batch, logit_positions(w) if at_targets else None)
    return multimodal_loss(out.logits, batch["input_ids"], w, batch["modality"], loss, counts, lambdas)


@torch.no_grad()
def check_logits_at_targets(model) -> None:
    """Refuse `train.logits_at_targets` for a model whose forward cannot keep chosen positions' logits.

    A short random sequence with a scattered keep mask must give the full forward's logits at those
    positions (`logits_to_keep` as a boolean (B, T) mask, transformers' `slice_logits_to_keep`); a
    family without it, or one that slices differently, fails by name before training.
    """
    family = model.config.model_type
    device = next(model.parameters()).device
    g = torch.Generator().manual_seed(0)  # not the global RNG: training randomness stays as without the option
    ids = torch.randint(0, model.get_input_embeddings().num_embeddings, (2, 6), generator=g).to(device)
    keep = torch.tensor([[0, 1, 0, 1, 1, 0], [1, 0, 0, 0, 1, 0]], dtype=torch.bool, device=device)
    was_training = model.training
    model.eval()
    try:
        full = model(input_ids=ids).logits.float()[keep]
        kept = model(input_ids=ids, logits_to_keep=keep).logits.float()
    except Exception as e:  # noqa: BLE001 - any failure means: this family cannot keep chosen positions
        raise UserError(f"train.logits_at_targets: the {family!r} model family cannot compute logits at chosen "
                        f"positions ({type(e).__name__}: {e}); set train.logits_at_targets=false") from e
    finally:
        model.train(was_training)
    if kept.shape != full.shape or not torch.allclose(kept, full, atol=1e-4, rtol=1e-4):
        raise UserError(f"train.logits_at_targets: the {family!r} model family gives other logits at the kept "
                        f"positions ({tuple(kept.shape)} vs {tuple(full.shape)}); set train.logits_at_targets=false")


@torch.no_grad()
def dev_loss(model, rendered: list[Rendered], cfg: RunConfig, pad: int, device) -> dict[str, float]:
    """Mean per-token target loss on the dev set: over all tasks ("all") and per task spec."""
    return _means(dev_sums(model, rendered, cfg, pad, device))


@torch.no_grad()
def dev_sums(model, rendered: list[Rendered], cfg: RunConfig, pad: int, device) -> dict[str, list[float]]:
    """Task spec -> [summed target-token loss, target tokens] of `rendered`."""
    model.eval()
    sums: dict[str, list[float]] = {}
    for idx in bucket_batches(np.array([len(r.ids) for r in rendered]), cfg.train.batch_tokens, 0, 0):
        items = [rendered[i] for i in idx]
        b = {k: v.to(device) for k, v in collate(items, pad).items()}
        w = loss_weights("target", b["attention_mask"], b["target"])
        ce = _token_losses(model, b, w, cfg.train.logits_at_targets)
        nll, n = (ce * w).sum(1).tolist(), w.sum(1).tolist()
        for r, x, c in zip(items, nll, n):
            acc = sums.setdefault(r.task, [0.0, 0.0])
            acc[0] += x
            acc[1] += c
    model.train()
    return sums


def _means(sums: dict[str, list[float]]) -> dict[str, float]:
    """{"all": the token-weighted mean over every task, task: its mean} of `dev_sums`."""
    out = {"all": sum(v[0] for v in sums.values()) / max(1.0, sum(v[1] for v in sums.values()))}
    out.update({t: v[0] / max(v[1], 1.0) for t, v in sorted(sums.items())})
    return out


def listening_record(matched: dict[str, list[float]], mismatched: dict[str, list[float]]) -> dict[str, float]:
    """The log fields of `train.dev_mismatched` from the `dev_sums` of the dev set and of its mismatched copy:
    "dev_loss_mismatched" and "dev_listening" (mismatched - matched) over the tasks the copy has (those with a
    source), and one of each per task when there are several. The targets are the same tokens in both."""
    m = _means(mismatched)
    ref = _means({t: matched[t] for t in mismatched})
    rec = {"dev_loss_mismatched": m["all"], "dev_listening": m["all"] - ref["all"]}
    if len(mismatched) > 1:
        for t in sorted(mismatched):
            rec.update({f"dev_loss_mismatched_{t}": m[t], f"dev_listening_{t}": m[t] - ref[t]})
    return rec


def _token_losses(model, b: dict, w: torch.Tensor, at_targets: bool) -> torch.Tensor:
    """(B, T-1) cross-entropy of each predicted token; with `at_targets` only where `w` > 0 (0 elsewhere)."""
    if not at_targets:
        logits = forward_batch(model, b).logits
        return torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2).float(), b["input_ids"][:, 1:],
                                                 reduction="none")
    keep = w > 0
    logits = forward_batch(model, b, logit_positions(w)).logits  # (N, V)
    ce = torch.zeros_like(w)
    ce[keep] = torch.nn.functional.cross_entropy(logits.float(), b["input_ids"][:, 1:][keep], reduction="none")
    return ce


def dev_record(losses: dict[str, float]) -> dict[str, float]:
    """The log fields of a dev pass: "dev_loss", and one per task when there are several."""
    rec = {"dev_loss": losses["all"]}
    if len(losses) > 2:  # several tasks: one curve each
        rec.update({f"dev_loss_{t}": v for t, v in losses.items() if t != "all"})
    return rec


# -- a run ----------------------------------------------------------------------------------

@dataclass
class Run:
    """A run being trained: its config, accelerator, examples, model, optimizer and position."""

    cfg: RunConfig
    acc: Any  # accelerate.Accelerator
    S: Setup
    model: Any  # prepared by `acc` (DDP-wrapped under torchrun)
    opt: torch.optim.Optimizer
    progress: Progress
    stream: BatchStream
    info: dict  # model summary and padding share, saved in the checkpoint's meta
    hf_tokenizer: Any  # the unified tokenizer saved with the model
    trainable: Trainable  # what trains at each step, and the embedding rows' rates

    @property
    def out(self) -> Path:
        return Path(self.cfg.train.out)

    @property
    def main(self) -> bool:
        return self.acc.is_main_process

    def fraction(self) -> float:
        """How much of the budget is done (>= 1: finished)."""
        return self.progress.fraction(self.cfg.train)

    def dev(self) -> dict[str, float]:
        """The dev pass's log fields (with train.dev_mismatched, the listening gap's too)."""
        model, pad = self.acc.unwrap_model(self.model), self.S.vocab.pad
        matched = dev_sums(model, self.S.dev, self.cfg, pad, self.acc.device)
        rec = dev_record(_means(matched))
        if self.S.dev_mismatched:
            rec.update(listening_record(matched, dev_sums(model, self.S.dev_mismatched, self.cfg, pad,
                                                          self.acc.device)))
        return rec


def accelerator(cfg: RunConfig):
    """The `Accelerator` of train.precision ("auto": bf16 autocast where it is native), seeded."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    precision = cfg.train.precision
    if precision == "auto":  # bf16 autocast where it is native (dmlm.util.precision)
        from dmlm.util.precision import native_bf16

        precision = "bf16" if native_bf16("cuda" if torch.cuda.is_available() else "cpu") else "fp32"
    acc = Accelerator(mixed_precision="bf16" if precision == "bf16" else "no", cpu=not torch.cuda.is_available())
    set_seed(cfg.train.seed)
    return acc


def start_or_resume(cfg: RunConfig, S: Setup, acc, resume: bool) -> tuple[Any, Progress]:
    """The model and progress to train from: the saved ones (`resume` and a training state), else new."""
    out = Path(cfg.train.out)
    state_dir = state_dir_of(out)
    if resume and has_state(state_dir):
        files = CheckpointFiles(out)
        progress = load_progress(files)  # checksums of model and state, and one step in all parts
        ck = load_checkpoint(files)
        if ck.vocab.to_dict() != S.vocab.to_dict():
            raise UserError(f"{out}: checkpoint vocabulary differs from this config's; cannot resume")
        check_world(progress, acc.num_processes, cfg.train.grad_accum, state_dir)
        log.info("resuming from step %d", progress.step)
        return restore_adapters(ck.model, cfg, state_dir).train(), progress  # model.adapter=lora: unmerged again
    if resume and acc.is_main_process:  # a first run under --resume (studies, the demo) is normal; a
        # checkpoint without its state is not: that one is worth a warning
        (log.warning if CheckpointFiles.is_checkpoint(out) else log.info)(
            "--resume given but %s has no training state; starting fresh", state_dir)
    model = build_model(cfg.model, S.vocab, seed=cfg.train.seed, text_rows=S.text.source_ids)
    if cfg.model.init == "pretrained":  # the start keeps what the LLM knows, or is refused (logged either way)
        from dmlm.training.start_check import check_start

        check_start(cfg, model, S.text)
    return model, Progress()


def prepare(cfg: RunConfig, S: Setup, acc, model, progress: Progress) -> Run:
    """Optimizer, accelerate's wrapping, the saved optimizer and RNG state (resumed) and the data stream."""
    hf_tok = unified_hf_tokenizer(S.text, S.vocab)
    check_fits(model, S)
    model = shard(cfg, acc, model)  # train.parallel=fsdp: before the optimizer, which holds the sharded weights
    trainable = Trainable.of(cfg, model, S.vocab.text_size, acc.num_processes)
    decay = [p for n, p in trainable.optimized() if p.ndim >= 2]
    no_decay = [p for n, p in trainable.optimized() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.train.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.train.lr, betas=(0.9, 0.95))
    if cfg.train.packing:
        check_packing(model)  # before `prepare`: in fp32, outside autocast, the test is exact
    if cfg.train.logits_at_targets:
        check_logits_at_targets(model)  # likewise
    if cfg.train.compile:
        log.info("train.compile: %d decoder layers compiled (the first steps include compiling)", compile_layers(model))
    model, opt = prepare_model(acc, model, opt)
    if progress.step > 0:
        state_dir = state_dir_of(Path(cfg.train.out))
        restore_training_state(model, opt, state_dir)  # the optimizer's (sharded: and the model's) saved state
        restore_rng_state(state_dir)
    progress.world_size, progress.grad_accum = acc.num_processes, cfg.train.grad_accum
    stream = BatchStream(S.train, cfg.train.batch_tokens, cfg.train.seed, progress, S.mixture, S.pools,
                         cfg.train.packing, cfg.train.pack_tokens)
    return Run(cfg, acc, S, model, opt, progress, stream, _summary(cfg, S, acc.unwrap_model(model), stream), hf_tok,
               trainable)


def _summary(cfg: RunConfig, S: Setup, model, stream: BatchStream) -> dict:
    """The model summary and the padding share of the data order, logged and saved in the meta."""
    from dmlm.modeling import model_summary

    pad_share = padding_share(stream.lengths, cfg.train.batch_tokens, cfg.train.seed,
                              stream.row_tokens if cfg.train.packing else 0)
    info = model_summary(cfg.model, model)
    info["padding_share"] = pad_share
    log.info("padding share of micro-batches: %.1f %% length-bucketed vs %.1f %% in random order",
             100 * pad_share["bucketed"], 100 * pad_share["random"])
    if cfg.train.packing:
        log.info("packing (used): %.1f %% padding in rows of %d tokens", 100 * pad_share["packed"], stream.row_tokens)
    log.info("model: %.2fM parameters (%.2fM non-embedding), vocab %d", info["params"] / 1e6,
             info["params_non_embedding"] / 1e6, S.vocab.size)
    return info


# -- one optimizer step -----------------------------------------------------------------------

def _micro_batches(r: Run) -> tuple[list, list[dict[str, torch.Tensor]]]:
    """This rank's micro-batches of the next step, as drawn and as collated tensors on its device."""
    acc, packing = r.acc, r.cfg.train.packing
    # every rank walks the same global order; rank r takes micro-batches r, r+world, …
    step_batches = [r.stream.next() for _ in range(r.cfg.train.grad_accum * acc.num_processes)]
    mine = step_batches[acc.process_index :: acc.num_processes]
    micro = [(collate_packed if packing else collate)(b, r.S.vocab.pad) for b in mine]
    return mine, [{k: v.to(acc.device) for k, v in b.items()} for b in micro]


def _accumulate(r: Run, micro: list[dict[str, torch.Tensor]]) -> float:
    """Forward and backward over the micro-batches, the loss normalized by the step's global counts;
    returns the step's loss summed over ranks."""
    acc, loss = r.acc, r.cfg.train.loss
    counts = sum(loss_counts(loss, loss_weights(loss, b["attention_mask"], b["target"], b.get("segment")),
                             b["modality"][:, 1:]) for b in micro)
    counts = acc.reduce(counts, reduction="sum")  # global denominators over ranks
    lambdas = torch.tensor(r.cfg.train.lambdas, dtype=torch.float32, device=acc.device)
    step_loss = 0.0
    for i, b in enumerate(micro):
        ctx = no_sync(acc, r.model) if i < len(micro) - 1 else contextlib.nullcontext()
        with ctx:
            with acc.autocast():
                out = compute_loss(r.model, b, loss, counts, lambdas, at_targets=r.cfg.train.logits_at_targets)
            acc.backward(out * acc.num_processes)  # DDP averages grads; the loss is already global
        step_loss += float(out.detach())
    return float(acc.reduce(torch.tensor(step_loss, device=acc.device), reduction="sum"))


def _step_counts(r: Run, mine: list, micro: list[dict[str, torch.Tensor]]) -> dict[str, int]:
    """Tokens (all, and by modality) and examples by task of this step, summed over ranks."""
    local = torch.tensor([float(b["attention_mask"].sum()) for b in micro]).sum().reshape(1)
    local_mod = torch.tensor([sum(float(((b["modality"] == m) & (b["attention_mask"] > 0)).sum()) for b in micro)
                              for m in range(3)])
    examples = [x for b in mine for x in ([x for row in b for x in row] if r.cfg.train.packing else b)]
    local_tasks = torch.tensor([float(sum(x.task == t for x in examples)) for t in r.S.pools])
    tok = r.acc.reduce(torch.cat([local, local_mod, local_tasks]).to(r.acc.device), reduction="sum").tolist()
    counts = {"tokens": int(tok[0]), "tokens_text": int(tok[1]), "tokens_speech": int(tok[2]),
              "tokens_image": int(tok[3])}
    if len(r.S.pools) > 1:
        counts.update({f"examples_{t}": int(n) for t, n in zip(r.S.pools, tok[4:])})
    counts["examples"] = int(sum(tok[4:]))
    return counts


def _advance(r: Run, tokens: int, examples: int, seconds: float) -> None:
    """Count the step in the progress; ranks agree on the elapsed time (the time budget ends together)."""
    p = r.progress
    p.step += 1
    p.tokens += tokens
    p.examples += examples
    p.elapsed += seconds
    if r.acc.num_processes > 1:
        import torch.distributed as dist

        t = torch.tensor([p.elapsed], dtype=torch.float64)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        p.elapsed = float(t)


def train_step(r: Run) -> dict:
    """One optimizer step (its micro-batches accumulated over grad_accum and ranks); returns its log row."""
    cfg, t0 = r.cfg.train, time.time()
    mine, micro = _micro_batches(r)
    lr = cfg.lr * warmup_cosine(r.fraction(), cfg.warmup_steps / max(1, cfg.steps), cfg.min_lr_ratio)
    for g in r.opt.param_groups:
        g["lr"] = lr
    r.trainable.enter(r.progress.step)  # this step's stage: what is frozen
    loss = _accumulate(r, micro)
    held = r.trainable.before_update()  # frozen rows' gradients zeroed
    gnorm = clip_grad_norm(r.acc, r.model, cfg.clip)
    check_finite(loss, float(gnorm), r.progress.step + 1, mine, lr)  # before the update: weights stay finite
    r.opt.step()
    r.trainable.after_update(held)  # the embedding rows' own rates
    r.opt.zero_grad(set_to_none=True)
    counts = _step_counts(r, mine, micro)
    _advance(r, counts["tokens"], counts.pop("examples"), time.time() - t0)
    examples = {k: counts.pop(k) for k in list(counts) if k.startswith("examples_")}
    return {"step": r.progress.step, "loss": loss, "lr": lr, "grad_norm": float(gnorm), **counts,
            "elapsed": r.progress.elapsed, **examples, **r.trainable.log_fields()}


class NonFiniteLoss(UserError):
    """The loss or gradient norm of a step is inf or NaN: the run stops before the update, unsaved."""


def check_finite(loss: float, grad_norm: float, step: int, batches: list, lr: float) -> None:
    """Refuse to take a step whose loss or gradient norm is not finite (a learning rate too high, bad
    data): the weights would turn to NaN and every later save would be garbage. Names the step, the
    tasks of its examples and the learning rate; the last save (if any) is untouched."""
    if np.isfinite(loss) and np.isfinite(grad_norm):
        return
    examples = [x for b in batches for x in b]
    examples = [y for x in examples for y in (x if isinstance(x, list) else [x])]  # packed rows hold lists
    tasks = sorted({getattr(x, "task", "?") for x in examples})
    raise NonFiniteLoss(f"step {step}: the loss is {loss} and the gradient norm {grad_norm} (tasks "
                        f"{', '.join(tasks)}; learning rate {lr:.3g}); stopped before the update, nothing of this "
                        "step saved. Lower train.lr (or check the data of these tasks) and train again")


def snapshot_dir(out: Path, step: int) -> Path:
    """Where the snapshot of step `step` of the run training into `out` is kept (`train.snapshots`)."""
    return out.with_name(out.name + ".snapshots") / f"step-{step}"


def save_snapshot(r: Run) -> Path | None:
    """Keep a copy of the model at this step (`train.snapshots`): a plain model folder, no training state,
    written once (a resumed run that passes the step again keeps the first)."""
    path = snapshot_dir(r.out, r.progress.step)
    if not r.main or CheckpointFiles.is_checkpoint(path):
        return None
    meta = {"tasks": r.cfg.data.tasks, "config": asdict(r.cfg), "step": r.progress.step, "model_summary": r.info,
            "examples": r.progress.examples, "tokens": r.progress.tokens, "snapshot": True}
    codebooks = {m: Path(p) for m, p in (("speech", r.cfg.data.codebook), ("image", r.cfg.data.image_codebook)) if p}
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_checkpoint(path, r.acc.unwrap_model(r.model), r.hf_tokenizer, r.S.vocab, meta, codebooks)


def save(r: Run) -> None:
    """Save model and training state at the current step: the main process writes the checkpoint; with
    train.parallel=fsdp every rank first writes its shard of the state (`dmlm.training.sharded`)."""
    shards = stage_shards(r.model, r.opt, r.out, r.cfg) if parallel_mode(r.cfg) == "fsdp" else None  # collective
    if not r.main:
        return
    cfg, out = r.cfg, r.out
    model = shards.model if shards is not None else r.acc.unwrap_model(r.model)  # unsharded, on the CPU
    bad = [n for n, p in model.named_parameters() if not torch.isfinite(p).all()]
    if bad:  # never published: a checkpoint of NaN weights decodes to garbage
        raise NonFiniteLoss(f"step {r.progress.step}: {len(bad)} weight tensor(s) hold inf or NaN ({bad[0]}, ...); "
                            f"not saved (the last save in {out}, if any, is untouched). Lower train.lr and train again")
    meta = {"tasks": cfg.data.tasks, "config": asdict(cfg), "step": r.progress.step, "model_summary": r.info}
    codebooks = {m: Path(p) for m, p in (("speech", cfg.data.codebook), ("image", cfg.data.image_codebook)) if p}
    state = TrainingState(None if shards else r.opt, r.progress, cfg, adapter_state(model) if has_adapters(model)
                          else None, shards.folder if shards else None)
    save_checkpoint(out, model, r.hf_tokenizer, r.S.vocab, meta, codebooks, write_state=state.save)
    if legacy_state_dir(out).is_dir():  # an older run's state, superseded by the one inside the checkpoint
        shutil.rmtree(legacy_state_dir(out), ignore_errors=True)
