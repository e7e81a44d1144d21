"""The training state saved with a checkpoint, and the run folder's writer lock.

Design decisions:
- The state (`OUT/training_state/`) is the optimizer, the RNGs, the data position and the
  config; it is written into the same temp folder as the model (`dmlm.modeling.save_checkpoint`)
  so both appear together. An older run's `OUT.state/` beside the model is still read.
- This module owns every file of that folder by name (`OPTIMIZER_FILE`, `RNG_FILE`,
  `PROGRESS_FILE`, `CONFIG_FILE`, `ADAPTERS_FILE`): `TrainingState.save` writes them, `load_progress`,
  `restore_optimizer`, `restore_rng_state` and `restore_adapters` read them (the last: a LoRA run's
  unmerged adapted layers, which its merged checkpoint cannot give back), `read_progress(model_dir)` serves
  other readers (reports), `finished` answers "is this run already done?" without a model.
- Nothing in it is a pickle: the RNG state is JSON (`rng.json`; a pickled `rng.pt` of an older
  dmlm is refused, never loaded), the optimizer's is tensors and numbers, loaded with
  `weights_only=True`.
- The optimizer state is serialized in memory and written by Python, so a full disk is an
  OSError (ENOSPC) that `save_checkpoint` reports as "no space", not torch's "unexpected pos".
"""

from __future__ import annotations

import io
import json
import os
import pickle
import random
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from dmlm.modeling import STATE_DIR, CheckpointFiles, fault_point
from dmlm.training.config import RunConfig
from dmlm.training.data_order import Progress
from dmlm.training.runlog import LOG_SUFFIX
from dmlm.util.config import dump_config
from dmlm.util.errors import MissingFileError, UserError

OPTIMIZER_FILE = "optimizer.pt"
RNG_FILE = "rng.json"
LEGACY_RNG_FILE = "rng.pt"  # an older dmlm's pickle: refused, never loaded
PROGRESS_FILE = "progress.json"
CONFIG_FILE = "config.yaml"
ADAPTERS_FILE = "adapters.safetensors"  # model.adapter=lora: the unmerged adapted layers (dmlm.modeling.adapters)
SHARDS_DIR = "sharded"  # train.parallel=fsdp: every rank's shard of model and optimizer (dmlm.training.sharded)


@dataclass
class TrainingState:
    """What `training_state/` holds beside the model: optimizer, RNGs, data position, config."""

    optimizer: torch.optim.Optimizer | None  # None: its state is in the shards
    progress: Progress
    cfg: RunConfig
    adapters: dict[str, torch.Tensor] | None = None  # `adapter_state` of a model with adapters
    shards: Path | None = None  # the staged shards of model and optimizer (`dmlm.training.sharded`), moved in

    def save(self, folder: Path) -> None:
        """Write the state into `folder` (new; inside a checkpoint's temp folder). The RNG state is
        the process's own at this moment."""
        folder.mkdir()
        if self.optimizer is not None:
            save_optimizer_state(self.optimizer, folder / OPTIMIZER_FILE)
        if self.shards is not None:
            shutil.move(self.shards, folder / SHARDS_DIR)  # into the unpublished temp folder: not a swap
        fault_point("state", self.progress.step)  # inside the state write: the optimizer written, the rest not
        (folder / RNG_FILE).write_text(json.dumps(rng_state()))
        (folder / PROGRESS_FILE).write_text(json.dumps(asdict(self.progress)))
        (folder / CONFIG_FILE).write_text(dump_config(self.cfg))
        if self.adapters is not None:  # written by Python, like the optimizer: a full disk is an OSError
            from safetensors.torch import save

            (folder / ADAPTERS_FILE).write_bytes(save(self.adapters))


def has_state(state_dir: Path) -> bool:
    """Whether `state_dir` holds a training state to resume (its progress file)."""
    return (state_dir / PROGRESS_FILE).is_file()


def _read_progress_file(path: Path) -> Progress:
    try:
        return Progress(**json.loads(path.read_text()))
    except ValueError as e:
        raise UserError(f"{path}: not valid JSON ({e})") from None


def read_progress(model_dir: str | Path) -> Progress | None:
    """The data position, steps and tokens a run in `model_dir` saved, or None without a state."""
    path = state_dir_of(Path(model_dir)) / PROGRESS_FILE
    return _read_progress_file(path) if path.is_file() else None


def load_progress(files: CheckpointFiles) -> Progress:
    """The saved progress of a checkpoint to resume, after verifying the checksums of model and
    state and that every part (the progress file too) names one step."""
    files.verify(state=True)
    path = files.state_dir / PROGRESS_FILE
    progress = _read_progress_file(path)
    files.check_steps({str(path): progress.step})
    return progress


def finished(cfg: RunConfig, state_dir: Path) -> bool:
    """A saved run of exactly this config whose budget is spent (anything else goes the full resume path)."""
    try:
        saved = (state_dir / CONFIG_FILE).read_text()
        progress = Progress(**json.loads((state_dir / PROGRESS_FILE).read_text()))
    except (OSError, ValueError, TypeError):
        return False
    return saved == dump_config(cfg) and progress.step > 0 and progress.fraction(cfg.train) >= 1.0


def check_world(progress: Progress, processes: int, grad_accum: int, state_dir: Path) -> None:
    """Resuming with another processes x grad_accum product would change the global batch: refused, naming the
    launches that keep it (`dmlm.training.distributed.check_world`)."""
    from dmlm.training.distributed import check_world as check

    check((progress.world_size, progress.grad_accum), processes, grad_accum, str(state_dir))


def restore_optimizer(opt: torch.optim.Optimizer, state_dir: Path) -> None:
    """Load the saved optimizer state (tensors and numbers only: `weights_only=True`)."""
    path = state_dir / OPTIMIZER_FILE
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, AttributeError) as e:
        # weights_only refuses a pickle that would run code (or build any object but tensors and numbers)
        why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{path}: not an optimizer state of tensors and numbers ({type(e).__name__}: {why[:120]}); "
                        "refused, never unpickled. Train again without --resume, or restore the file") from None
    try:
        opt.load_state_dict(state)
    except (ValueError, KeyError, TypeError, RuntimeError) as e:
        raise UserError(f"{path}: the optimizer state does not fit this model ({type(e).__name__}: {e})") from None


def restore_adapters(model: torch.nn.Module, cfg: RunConfig, state_dir: Path) -> torch.nn.Module:
    """With model.adapter=lora: the merged checkpoint's `model` with the adapters injected again and the unmerged
    tensors the state saved put back (exact resume); a state and a config that disagree on adapters are refused."""
    path = state_dir / ADAPTERS_FILE
    lora = cfg.model.adapter == "lora"
    if lora != path.is_file():
        raise UserError(f"{state_dir}: this run was trained {'with' if path.is_file() else 'without'} adapters but "
                        f"the config has model.adapter={cfg.model.adapter}; resume with the config it started with")
    if lora:
        from safetensors.torch import load_file

        from dmlm.modeling.adapters import add_lora, load_adapter_state

        load_adapter_state(add_lora(model, cfg.model), load_file(path), str(path))
    return model


def state_dir_of(out: Path) -> Path:
    """Where the training state of the run in `out` is (`out/training_state/`, or an older run's `OUT.state/`)."""
    if CheckpointFiles.is_checkpoint(out):
        return CheckpointFiles(out).state_dir
    legacy = legacy_state_dir(out)
    return legacy if legacy.is_dir() else out / STATE_DIR


def legacy_state_dir(out: Path) -> Path:
    """Where an older dmlm kept the training state of the run in `out` (`OUT.state/`, beside it)."""
    return out.with_name(out.name + ".state")


def check_out(out: Path) -> None:
    """`train.out` must name a folder dmlm can swap on each save: not a file system root, not a file,
    not a symbolic link (the swap would replace the link with a real folder and leave its target
    behind), and a name short enough for the files beside it (`OUT.lock`, `OUT.log.jsonl`, ...)."""
    if out.name in ("", ".", "..") or out.resolve() == Path(out.resolve().anchor):
        raise UserError(f"train.out={out}: names no folder of its own (a root or '.'); name the folder the model "
                        "goes into, e.g. train.out=runs/model")
    extra = len(LOG_SUFFIX)  # the longest suffix of the files dmlm writes beside it
    limit = _name_max(out.parent)
    if len(out.name.encode()) + extra > limit:
        raise UserError(f"train.out: the folder name {out.name[:40]}... is {len(out.name.encode())} bytes; this "
                        f"file system allows {limit} per name and dmlm adds up to {extra} for the files beside it "
                        f"(a name of at most {limit - extra} bytes)")
    if out.is_symlink():
        raise UserError(f"train.out={out}: is a symbolic link (to {os.readlink(out)}); each save replaces the "
                        f"folder, which would replace the link. Name the folder itself: train.out={out.resolve()}")
    if out.exists() and not out.is_dir():
        raise UserError(f"train.out={out}: is a file, not a folder; name a new or empty folder for the model")


def _name_max(folder: Path) -> int:
    """The longest file name the file system at `folder` (or its nearest existing parent) allows."""
    for parent in (folder, *folder.parents):
        if parent.is_dir():
            try:
                return os.pathconf(parent, "PC_NAME_MAX")
            except (OSError, ValueError):
                break
    return 255


def lock_path(out: Path) -> Path:
    """The writer lock of the run in `out` (`OUT.lock`, beside it)."""
    return out.with_name(out.name + ".lock")


def save_optimizer_state(opt: torch.optim.Optimizer, path: Path) -> None:
    """The optimizer state in torch's format (tensors and numbers: it loads with weights_only=True),
    written by Python, so a full disk is an OSError (ENOSPC), not torch's "unexpected pos"."""
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    path.write_bytes(buf.getbuffer())


def rng_state() -> dict:
    """The torch, numpy and Python RNG states as plain JSON values (no pickle: loading it cannot run code)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {"torch": torch.get_rng_state().tolist(),
            "numpy": {"kind": kind, "keys": keys.tolist(), "pos": int(pos), "has_gauss": int(has_gauss),
                      "cached_gaussian": float(gauss)},
            "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next}}


def set_rng_state(state: dict) -> None:
    """Set the torch, numpy and Python RNGs to a state of `rng_state`."""
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    n = state["numpy"]
    np.random.set_state((n["kind"], np.asarray(n["keys"], dtype=np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    py = state["python"]
    random.setstate((py["version"], tuple(py["internal"]), py["gauss_next"]))


def restore_rng_state(state_dir: Path) -> None:
    """Set the RNGs to the saved state; a state folder with only a pickled `rng.pt` is refused, never unpickled."""
    path = state_dir / RNG_FILE
    if not path.is_file():
        if (state_dir / LEGACY_RNG_FILE).is_file():
            raise UserError(f"{state_dir}/{LEGACY_RNG_FILE}: training state in a pickle file, which could run code when "
                            f"loaded; dmlm reads only {RNG_FILE}. Resume this run with the dmlm that wrote it, or "
                            "train it again without --resume")
        raise MissingFileError(f"{path}: the training state has no RNG state; cannot resume exactly")
    try:
        set_rng_state(json.loads(path.read_text()))  # torch, numpy and random check every field's shape and type
    except (ValueError, KeyError, TypeError, RuntimeError) as e:
        raise UserError(f"{path}: not a valid RNG state ({type(e).__name__}: {e})") from None
