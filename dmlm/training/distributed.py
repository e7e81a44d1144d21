"""Several processes training one model: DDP or FSDP2, and the rule for changing the world size.

Design decisions:
- `train.parallel` picks how the ranks share the work: `ddp` (each holds the whole model and
  optimizer; `accelerate` wraps it) or `fsdp` (FSDP2: weights, gradients and optimizer state
  sharded over the ranks, sharded checkpoints); `auto` is fsdp when the launcher asks for it
  (`accelerate launch --config_file configs/accelerate/fsdp.yaml` sets ACCELERATE_USE_FSDP),
  else ddp.
- FSDP2 is applied here with `torch.distributed.fsdp.fully_shard`, not through accelerate's FSDP
  plugin: accelerate 1.16 ignores that plugin on a machine without CUDA (`Accelerator(cpu=True)`
  reports MULTI_CPU and wraps in DDP), so the FSDP path could never be tested off a GPU; with
  `fully_shard` the same code runs on gloo (CPU) and NCCL, and the sharded state dicts
  (`torch.distributed.checkpoint.state_dict`) are FSDP2's own API either way. accelerate still
  owns the process group, the device and autocast.
- Units: one per decoder layer (the classes a Hugging Face model lists in `_no_split_modules`),
  then the root (embeddings, final norm, output layer; a tied head stays one parameter). Each
  unit's full weights exist only during its forward and backward (`reshard_after_forward`).
- Exactness: FSDP2 reduce-scatters the *mean* of the ranks' gradients, as DDP all-reduces it,
  so the loss scaled by the world size (`dmlm.training.loop`) gives the same step. Micro-batches
  before the last of a step skip the reduction (`set_requires_gradient_sync(False)`: gradients
  accumulate unsharded, reduced once), as DDP's `no_sync` does.
- The data order is global (`dmlm.training.data_order`): each step draws world × grad_accum
  micro-batches and rank r takes r, r+world, ...; so N ranks × grad_accum g train like M ranks ×
  g' whenever N·g = M·g', and a run may resume with another world size on that condition
  (`check_world`). The float sums differ in order, so the losses agree to rounding, not bitwise.
"""

from __future__ import annotations

import contextlib
import os

import torch

from dmlm.util.errors import UserError

PARALLEL = ("auto", "ddp", "fsdp")


def parallel_mode(cfg) -> str:
    """"ddp" or "fsdp": `train.parallel` with auto resolved from the launcher's environment."""
    mode = cfg.train.parallel
    if mode == "auto":
        return "fsdp" if os.environ.get("ACCELERATE_USE_FSDP", "").lower() in ("1", "true") else "ddp"
    return mode


def is_sharded(model: torch.nn.Module) -> bool:
    """Whether `model` is wrapped by FSDP2 (`fully_shard`)."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def _block_classes(model: torch.nn.Module) -> tuple[type, ...]:
    """The model's decoder-layer classes (`_no_split_modules`), each an FSDP unit."""
    names = set(getattr(model, "_no_split_modules", None) or [])
    classes = {type(m) for m in model.modules() if type(m).__name__ in names}
    if not classes:
        raise UserError(f"train.parallel=fsdp: the {model.config.model_type!r} model names no decoder-layer class "
                        "(_no_split_modules) to shard by; use train.parallel=ddp")
    return tuple(classes)


def check_fsdp_options(cfg) -> None:
    """Options whose row-wise edits of a gradient do not reach a weight sharded by rows: refused under FSDP."""
    t = cfg.train
    if t.lr_new_rows != 1 or t.lr_text_rows != 1 or any(s.train == "new_rows" for s in t.stages):
        raise UserError("train.parallel=fsdp: per-row learning rates (train.lr_new_rows, train.lr_text_rows) and "
                        "new_rows stages edit rows of the embedding, which FSDP shards by row; not supported yet: "
                        "use train.parallel=ddp for them")


def shard(cfg, acc, model: torch.nn.Module) -> torch.nn.Module:
    """FSDP2 over the ranks (train.parallel=fsdp and several processes); otherwise `model` unchanged.
    Call it before the optimizer is built: `fully_shard` replaces the parameters by sharded ones."""
    if parallel_mode(cfg) != "fsdp":
        return model
    check_fsdp_options(cfg)
    if acc.num_processes == 1:  # nothing to shard over; the training state is still saved sharded
        return model
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(acc.device.type, (acc.num_processes,))
    model = model.to(acc.device)  # (accelerate's `prepare` would have; a sharded model does not go through it)
    blocks = _block_classes(model)
    for module in list(model.modules()):
        if isinstance(module, blocks):
            fully_shard(module, mesh=mesh, reshard_after_forward=True)
    return fully_shard(model, mesh=mesh, reshard_after_forward=True)


def prepare_model(acc, model: torch.nn.Module, opt: torch.optim.Optimizer):
    """accelerate's wrapping (DDP under a launcher) for an unsharded model; a sharded one is ready as it is."""
    if is_sharded(model):
        return model, opt
    return acc.prepare(model, opt)


def no_sync(acc, model: torch.nn.Module):
    """The context of a micro-batch that is not the step's last: its gradients are not reduced yet."""
    if is_sharded(model):
        return _fsdp_no_sync(model)
    return acc.no_sync(model)


@contextlib.contextmanager
def _fsdp_no_sync(model):
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


def clip_grad_norm(acc, model: torch.nn.Module, clip: float) -> float:
    """Clip the gradients to norm `clip`; returns their norm before clipping (over all shards)."""
    if not is_sharded(model):
        return float(acc.clip_grad_norm_(model.parameters(), clip))
    norm = torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.grad is not None], clip)
    return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)


def launch_hint(processes: int, grad_accum: int) -> str:
    """The launch that trains with `processes` ranks × `grad_accum` (for messages)."""
    if processes == 1:
        return f"`dmlm train CONFIG train.grad_accum={grad_accum}` (one process)"
    return f"`torchrun --nproc_per_node {processes} -m dmlm.cli train CONFIG train.grad_accum={grad_accum}`"


def check_world(saved: tuple[int | None, int | None], processes: int, grad_accum: int, where: str) -> None:
    """A resume must keep the global batch: processes × grad_accum equal to the saved run's (the data order is
    global, so any split of it resumes the same run); otherwise refused, naming launches that keep it."""
    world, accum = saved
    if world is None or world * accum == processes * grad_accum:
        return
    product = world * accum
    ways = [launch_hint(world, accum)]
    if product % processes == 0 and processes != world:
        ways.insert(0, launch_hint(processes, product // processes))
    raise UserError(
        f"{where}: this run was trained with {world} process(es) x grad_accum {accum} = {product} micro-batches per "
        f"step; resuming with {processes} x {grad_accum} = {processes * grad_accum} would change the global batch "
        f"and break exact resume. Resume with {' or '.join(ways)} --resume (processes x grad_accum must stay "
        f"{product})")
