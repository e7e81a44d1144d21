"""`dmlm train CONFIG --dry-run`: build everything a run needs, print what one step costs, train nothing.

Design decisions:
- It runs the same setup as training (tokenizers, vocabulary, every task's examples, the model,
  what trains), so a config that would fail at its first step fails here, on a CPU, before a GPU
  is paid for. It writes nothing (no `train.out`, no lock).
- The world size is the launcher config's (`--launcher configs/accelerate/X.yaml`: its
  num_processes, and its FSDP resolving train.parallel=auto), else the current launch's
  (`WORLD_SIZE`), else 1.
- The numbers are estimates, stated as such. Memory per rank: fp32 weights (4 bytes), gradients
  (4) and AdamW moments (8) per parameter that trains, divided by the world size under FSDP (plus
  two decoder layers gathered whole); DDP adds its gradient buckets (4 per trained parameter);
  activations ~34·h bytes per token and layer in 16-bit (Korthikanti et al. 2022, attention
  without the s² scores, as SDPA keeps them), twice in fp32, plus the logits and their gradient.
  FLOPs: 2 per multiply-add over every matrix (the output layer included) forward, the same for
  the activations' gradients, and 2 more per trained weight for the weights' gradients; attention
  adds 6·L·h·(mean example length) per token. Tokens per step count the padded micro-batch budget
  (batch_tokens × grad_accum × world), an upper bound.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from dmlm.training.config import RunConfig


@dataclass
class StepPlan:
    """What one optimizer step of a run is, per rank and in all."""

    world: int
    parallel: str
    micro_batch_tokens: int
    grad_accum: int
    tokens_per_step: int
    params: int
    trained: int
    memory_per_rank: int  # bytes, estimate
    flops_per_step: float

    def lines(self) -> list[str]:
        gib = self.memory_per_rank / 2**30
        return [f"world size: {self.world} process(es), {self.parallel}",
                f"batch: {self.micro_batch_tokens} tokens per micro-batch x grad_accum {self.grad_accum} x "
                f"{self.world} ranks", f"tokens per step: {self.tokens_per_step} (padded budget, an upper bound)",
                f"parameters: {self.params / 1e6:.2f}M ({self.trained / 1e6:.2f}M trained)",
                f"memory per rank: {gib:.2f} GiB (estimate: weights, gradients, AdamW, activations)",
                f"FLOPs per step: {self.flops_per_step:.3g} (estimate)"]


def dry_run(cfg: RunConfig, launcher: str | Path | None = None) -> StepPlan:
    """Set up the run and build its model as `dmlm train` would, then the plan of one step (nothing written)."""
    from dmlm.modeling import build_model
    from dmlm.training.distributed import check_fsdp_options
    from dmlm.training.launch import Launcher
    from dmlm.training.setup import check_fits, setup
    from dmlm.training.trainable import Trainable

    cfg.validate()
    world, parallel = int(os.environ.get("WORLD_SIZE", "1")), cfg.train.parallel
    if launcher is not None:
        lc = Launcher.load(launcher)
        world = lc.processes
        parallel = lc.parallel if parallel == "auto" else parallel
    parallel = "ddp" if parallel == "auto" else parallel
    if parallel == "fsdp":
        check_fsdp_options(cfg)
    S = setup(cfg)
    model = build_model(cfg.model, S.vocab, seed=cfg.train.seed, text_rows=S.text.source_ids)
    check_fits(model, S)
    trained = {n for n, _ in Trainable.of(cfg, model, S.vocab.text_size, world).optimized()}
    mean_len = sum(len(r.ids) for r in S.train) / max(1, len(S.train))
    return plan(cfg, model, trained, world, parallel, mean_len)


def plan(cfg: RunConfig, model, trained: set[str], world: int, parallel: str, mean_len: float) -> StepPlan:
    """The step's tokens, memory per rank and FLOPs of `model` (see the module's notes for the formulas)."""
    c = model.config
    layers, hidden = c.num_hidden_layers, c.hidden_size
    params = {n: p.numel() for n, p in model.named_parameters()}
    n_all, n_trained = sum(params.values()), sum(v for n, v in params.items() if n in trained)
    emb = model.get_input_embeddings().weight
    head = model.get_output_embeddings()
    matrices = {n: v for n, v in params.items() if n.endswith("weight") and model.get_parameter(n).ndim == 2
                and model.get_parameter(n) is not emb}
    tied = head.weight.numel() if head is not None and head.weight is emb else 0  # the output layer, tied
    emb_name = next(n for n, p in model.named_parameters() if p is emb)
    mm = sum(matrices.values()) + tied
    mm_trained = sum(v for n, v in matrices.items() if n in trained) + (tied if emb_name in trained else 0)
    tokens = cfg.train.batch_tokens * cfg.train.grad_accum * world
    flops = tokens * (4 * mm + 2 * mm_trained + 6 * layers * hidden * mean_len)
    state = 4 * n_all + 12 * n_trained  # weights; gradients and AdamW moments of what trains
    if parallel == "fsdp" and world > 1:
        state = state / world + 2 * 4 * (n_all - emb.numel()) / max(1, layers)  # + two layers gathered whole
    else:
        state += 4 * n_trained if world > 1 else 0  # DDP's gradient buckets
    act_bytes = 2 if cfg.train.precision == "bf16" else 4
    n = cfg.train.batch_tokens
    activations = n * layers * hidden * 34 * act_bytes / 2 + n * emb.shape[0] * 4 * 2
    return StepPlan(world, parallel, cfg.train.batch_tokens, cfg.train.grad_accum, tokens, n_all, n_trained,
                    int(state + activations), float(flops))
