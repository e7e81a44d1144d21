"""The training state of an FSDP2 run, saved sharded through `torch.distributed.checkpoint` (DCP).

Design decisions:
- Every rank writes its own shard of the model and optimizer state (DCP's file system writer:
  one `__R_0.distcp` per rank, `.metadata` from rank 0) into a staging folder beside the run
  (`staging_dir`, `OUT.shards/`). Rank 0 then saves the checkpoint as always
  (`dmlm.modeling.save_checkpoint`: one temp folder, checksums last, one rename), moving the
  staged shards into its `training_state/` (`dmlm.training.state.SHARDS_DIR`). Shards, model and
  the rest of the state therefore appear together or not at all: a kill -9 before the rename
  leaves the previous checkpoint and a stale staging folder, which the next save replaces. The
  checksums cover the shards like every other file, and resume verifies them.
- The Hugging Face folder stays a plain model of its family: the ranks gather the full state dict
  onto rank 0 (`get_model_state_dict(full_state_dict=True, cpu_offload=True)`), which loads it
  into an unsharded copy of the model and saves that (adapters merged, as ever). That copy costs
  rank 0 the model's size in CPU memory for the time of a save. Building it draws no random
  numbers from the run's generators (`fork_rng`), so saving does not change what trains next.
- State dicts are keyed by parameter name (`get_state_dict`), not by position, and DCP reshards
  on load: a state saved by N ranks loads into M ranks, or into one process and an unwrapped
  model (no process group), and one saved by one process loads into N ranks.
- `export_model` writes a plain model folder (no training state) whose weights come from the
  shards: the consolidated model, rebuilt from what every rank wrote.
"""

from __future__ import annotations

import contextlib
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from dmlm.training.distributed import is_sharded
from dmlm.training.state import SHARDS_DIR
from dmlm.util.errors import UserError

STAGING_SUFFIX = ".shards"


def staging_dir(out: Path) -> Path:
    """Where the ranks write the shards of the next save of the run in `out` (`OUT.shards/`, beside it)."""
    return out.with_name(out.name + STAGING_SUFFIX)


def has_shards(state_dir: Path) -> bool:
    """Whether a saved training state holds sharded model and optimizer state."""
    return (state_dir / SHARDS_DIR / ".metadata").is_file()


@contextlib.contextmanager
def _quiet_no_dist():
    """DCP warns that it "assumes" one process when there is no process group: that is this case, on purpose."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _state_dicts(model: torch.nn.Module, opt: torch.optim.Optimizer) -> dict:
    from torch.distributed.checkpoint.state_dict import get_state_dict

    m, o = get_state_dict(model, opt)
    return {"model": m, "optim": o}


@dataclass
class Staged:
    """A save's shards, written by every rank, and (rank 0) the unsharded model to save as the plain folder."""

    folder: Path
    model: torch.nn.Module | None


def stage_shards(model: torch.nn.Module, opt: torch.optim.Optimizer, out: Path, cfg) -> Staged:
    """Every rank (collective): write this rank's shard of model and optimizer state into `staging_dir(out)`, and
    gather the full weights into an unsharded copy of the model on rank 0 (`Staged.model`; None elsewhere)."""
    import torch.distributed.checkpoint as dcp

    folder = staging_dir(out)
    rank = dist.get_rank() if dist.is_initialized() else 0
    if rank == 0 and folder.exists():  # a save killed before its rename left it
        shutil.rmtree(folder)
    _barrier()
    with _quiet_no_dist():
        dcp.save(_state_dicts(model, opt), checkpoint_id=str(folder), no_dist=not dist.is_initialized())
    return Staged(folder, _consolidated(model, cfg) if is_sharded(model) else (model if rank == 0 else None))


def _consolidated(model: torch.nn.Module, cfg) -> torch.nn.Module | None:
    """The full weights of a sharded model in a plain copy of it on rank 0 (None on the other ranks)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if dist.get_rank() != 0:
        return None
    return plain_model(model.config, cfg, full)


def plain_model(config, cfg, weights: dict[str, torch.Tensor] | None) -> torch.nn.Module:
    """A model of `config`'s family (with the run's adapters if it has them) holding `weights`, on the CPU."""
    from transformers import AutoModelForCausalLM

    from dmlm.util.progress import quiet_transformers

    with torch.random.fork_rng(devices=[]), quiet_transformers():  # its random init is overwritten: no draws
        plain = AutoModelForCausalLM.from_config(config)
    if cfg.model.adapter == "lora":
        from dmlm.modeling.adapters import add_lora

        add_lora(plain, cfg.model)
    if weights is not None:
        plain.load_state_dict(weights, strict=True)
    return plain.train()


def restore_shards(model: torch.nn.Module, opt: torch.optim.Optimizer, state_dir: Path) -> None:
    """Load the sharded model and optimizer state of `state_dir` into this run's (sharded or not) model and
    optimizer, resharded to this world size."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_state_dict

    state = _state_dicts(model, opt)
    folder = state_dir / SHARDS_DIR
    try:
        with _quiet_no_dist():
            dcp.load(state, checkpoint_id=str(folder), no_dist=not dist.is_initialized())
    except (RuntimeError, ValueError, KeyError, dcp.CheckpointException) as e:
        why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{folder}: the sharded training state does not fit this model and optimizer "
                        f"({type(e).__name__}: {why[:200]}); resume with the config the run started with") from None
    set_state_dict(model, opt, model_state_dict=state["model"], optim_state_dict=state["optim"])


def restore_training_state(model: torch.nn.Module, opt: torch.optim.Optimizer, state_dir: Path) -> None:
    """The optimizer (and, sharded, the model) state of a resumed run, in whichever form it was saved."""
    from dmlm.training.state import restore_optimizer

    if has_shards(state_dir):
        restore_shards(model, opt, state_dir)
    elif is_sharded(model):
        raise UserError(f"{state_dir}: this run was saved unsharded (train.parallel=ddp, its optimizer.pt holds "
                        "one process's whole optimizer state); resume it with train.parallel=ddp")
    else:
        restore_optimizer(opt, state_dir)


def export_model(run: str | Path, out: str | Path) -> Path:
    """A plain model folder of the run in `run` (no training state), its weights consolidated from the sharded
    training state when the run has one (else the checkpoint's own)."""
    from dmlm.modeling import CheckpointFiles, load_checkpoint, save_checkpoint
    from dmlm.training.state import state_dir_of

    files = CheckpointFiles(run)
    out = Path(out)
    if out.resolve() == files.path.resolve() or files.path.resolve() in out.resolve().parents:
        raise UserError(f"dmlm export: the output folder {out} is inside the run's own folder {files.path}; name "
                        "another")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"dmlm export: {out} already exists; name a new folder")
    ck = load_checkpoint(files)
    state_dir = state_dir_of(files.path)
    model = ck.model
    if has_shards(state_dir):
        files.verify(state=True)
        model = _from_shards(model.config, state_dir)
    codebooks = {m: files.codebook_path(m) for m in ("speech", "image") if files.codebook_path(m).is_file()}
    return save_checkpoint(out, model, ck.tokenizer, files.vocab, dict(files.meta), codebooks)


def _from_shards(config, state_dir: Path) -> torch.nn.Module:
    """The model of `config`'s family (with the run's adapters) holding the weights the ranks wrote into the shards."""
    import torch.distributed.checkpoint as dcp

    from dmlm.training.config import RunConfig
    from dmlm.training.state import CONFIG_FILE
    from dmlm.util.config import load_config

    cfg = load_config(state_dir / CONFIG_FILE, [], RunConfig)
    template = plain_model(config, cfg, None)
    state = {"model": template.state_dict()}
    with _quiet_no_dist():
        dcp.load(state, checkpoint_id=str(state_dir / SHARDS_DIR), no_dist=True)
    template.load_state_dict(state["model"], strict=True)
    return template
