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
from dmlm.tasks import Rendered
from dmlm.tokenizers.text import unified_hf_tokenizer
from dmlm.training.config import RunConfig
from dmlm.training.data_order import BatchStream, Progress, bucket_batches, collate, padding_share
from dmlm.training.loss import loss_counts, loss_weights, multimodal_loss
from dmlm.training.packing import check_packing, collate_packed, packed_attention_mask
from dmlm.training.setup import Setup, check_fits
from dmlm.training.state import (
    TrainingState,
    check_world,
    has_state,
    legacy_state_dir,
    load_progress,
    restore_optimizer,
    restore_rng_state,
    state_dir_of,
)
from dmlm.util.errors import UserError
from dmlm.util.schedule import warmup_cosine

log = logging.getLogger(__name__)


# -- the loss of a micro-batch ------------------------------------------------------------

def forward_batch(model, batch: dict):
    """The model's output on a collated micro-batch (packed rows get their positions and masks)."""
    if "segment" in batch:  # packed rows: positions restart and attention stops at each example
        return model(input_ids=batch["input_ids"], attention_mask=packed_attention_mask(batch["segment"]),
                     position_ids=batch["position_ids"], use_cache=False)
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])


def compute_loss(model, batch: dict, loss: str, counts: torch.Tensor, lambdas: torch.Tensor) -> torch.Tensor:
    """The training objective of one micro-batch, normalized by the step's global `counts`."""
    out = forward_batch(model, batch)
    w = loss_weights(loss, batch["attention_mask"], batch["target"], batch.get("segment"))
    return multimodal_loss(out.logits, batch["input_ids"], w, batch["modality"], loss, counts, lambdas)


@torch.no_grad()
def dev_loss(model, rendered: list[Rendered], cfg: RunConfig, pad: int, device) -> dict[str, float]:
    """Mean per-token target loss on the dev set: over all tasks ("all") and per task spec."""
    model.eval()
    sums: dict[str, list[float]] = {}
    for idx in bucket_batches(np.array([len(r.ids) for r in rendered]), cfg.train.batch_tokens, 0, 0):
        items = [rendered[i] for i in idx]
        b = {k: v.to(device) for k, v in collate(items, pad).items()}
        logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
        ce = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2).float(), b["input_ids"][:, 1:],
                                               reduction="none")  # (B, T-1)
        w = loss_weights("target", b["attention_mask"], b["target"])
        nll, n = (ce * w).sum(1).tolist(), w.sum(1).tolist()
        for r, x, c in zip(items, nll, n):
            acc = sums.setdefault(r.task, [0.0, 0.0])
            acc[0] += x
            acc[1] += c
    model.train()
    out = {"all": sum(v[0] for v in sums.values()) / max(1.0, sum(v[1] for v in sums.values()))}
    out.update({t: v[0] / max(v[1], 1.0) for t, v in sorted(sums.items())})
    return out


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
        """The dev pass's log fields."""
        return dev_record(dev_loss(self.acc.unwrap_model(self.model), self.S.dev, self.cfg, self.S.vocab.pad,
                                   self.acc.device))


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
        return ck.model.train(), progress
    if resume and acc.is_main_process:  # a first run under --resume (studies, the demo) is normal; a
        # checkpoint without its state is not: that one is worth a warning
        (log.warning if CheckpointFiles.is_checkpoint(out) else log.info)(
            "--resume given but %s has no training state; starting fresh", state_dir)
    return build_model(cfg.model, S.vocab, seed=cfg.train.seed, text_rows=S.text.source_ids), Progress()


def prepare(cfg: RunConfig, S: Setup, acc, model, progress: Progress) -> Run:
    """Optimizer, accelerate's wrapping, the saved optimizer and RNG state (resumed) and the data stream."""
    hf_tok = unified_hf_tokenizer(S.text, S.vocab)
    check_fits(model, S)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.train.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.train.lr, betas=(0.9, 0.95))
    if cfg.train.packing:
        check_packing(model)  # before `prepare`: in fp32, outside autocast, the test is exact
    model, opt = acc.prepare(model, opt)
    if progress.step > 0:
        state_dir = state_dir_of(Path(cfg.train.out))
        restore_optimizer(opt, state_dir)
        restore_rng_state(state_dir)
    progress.world_size, progress.grad_accum = acc.num_processes, cfg.train.grad_accum
    stream = BatchStream(S.train, cfg.train.batch_tokens, cfg.train.seed, progress, S.mixture, S.pools,
                         cfg.train.packing, cfg.train.pack_tokens)
    return Run(cfg, acc, S, model, opt, progress, stream, _summary(cfg, S, acc.unwrap_model(model), stream), hf_tok)


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
        ctx = acc.no_sync(r.model) if i < len(micro) - 1 else contextlib.nullcontext()
        with ctx:
            with acc.autocast():
                out = compute_loss(r.model, b, loss, counts, lambdas)
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
    return counts


def _advance(r: Run, tokens: int, seconds: float) -> None:
    """Count the step in the progress; ranks agree on the elapsed time (the time budget ends together)."""
    p = r.progress
    p.step += 1
    p.tokens += tokens
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
    loss = _accumulate(r, micro)
    gnorm = r.acc.clip_grad_norm_(r.model.parameters(), cfg.clip)
    r.opt.step()
    r.opt.zero_grad(set_to_none=True)
    counts = _step_counts(r, mine, micro)
    _advance(r, counts["tokens"], time.time() - t0)
    examples = {k: counts.pop(k) for k in list(counts) if k.startswith("examples_")}
    return {"step": r.progress.step, "loss": loss, "lr": lr, "grad_norm": float(gnorm), **counts,
            "elapsed": r.progress.elapsed, **examples}


def save(r: Run) -> None:
    """Save model and training state at the current step (main process only)."""
    if not r.main:
        return
    cfg, out = r.cfg, r.out
    meta = {"tasks": cfg.data.tasks, "config": asdict(cfg), "step": r.progress.step, "model_summary": r.info}
    codebooks = {m: Path(p) for m, p in (("speech", cfg.data.codebook), ("image", cfg.data.image_codebook)) if p}
    state = TrainingState(r.opt, r.progress, cfg)
    save_checkpoint(out, r.acc.unwrap_model(r.model), r.hf_tokenizer, r.S.vocab, meta, codebooks,
                    write_state=state.save)
    if legacy_state_dir(out).is_dir():  # an older run's state, superseded by the one inside the checkpoint
        shutil.rmtree(legacy_state_dir(out), ignore_errors=True)
