"""The training state saved with a checkpoint, and the run folder's writer lock.

Design decisions:
- The state (`OUT/training_state/`) is the optimizer, the RNGs, the data position and the
  config; it is written into the same temp folder as the model (`dmlm.modeling.save_checkpoint`)
  so both appear together. An older run's `OUT.state/` beside the model is still read.
- Nothing in it is a pickle: the RNG state is JSON (`rng.json`; a pickled `rng.pt` of an older
  dmlm is refused, never loaded), the optimizer's is tensors and numbers, loaded with
  `weights_only=True`.
- The optimizer state is serialized in memory and written by Python, so a full disk is an
  OSError (ENOSPC) that `save_checkpoint` reports as "no space", not torch's "unexpected pos".
"""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

import numpy as np
import torch

from dmlm.modeling import STATE_DIR, CheckpointFiles
from dmlm.util.errors import MissingFileError, UserError
from dmlm.util.io import write_jsonl


def state_dir_of(out: Path) -> Path:
    """Where the training state of the run in `out` is (`out/training_state/`, or an older run's `OUT.state/`)."""
    if CheckpointFiles.is_checkpoint(out):
        return CheckpointFiles(out).state_dir
    legacy = out.with_name(out.name + ".state")
    return legacy if legacy.is_dir() else out / STATE_DIR


def lock_path(out: Path) -> Path:
    return out.with_name(out.name + ".lock")


def save_optimizer_state(opt: torch.optim.Optimizer, path: Path) -> None:
    """The optimizer state in torch's format (tensors and numbers: it loads with weights_only=True),
    written by Python, so a full disk is an OSError (ENOSPC), not torch's "unexpected pos"."""
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    path.write_bytes(buf.getbuffer())


def cut_log(log_path: Path, step: int) -> None:
    """Drop log rows after `step`: a run killed between saves logged steps it will train again."""
    if not log_path.is_file():
        return
    rows = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    kept = [r for r in rows if r.get("step", 0) <= step]
    if len(kept) < len(rows):
        write_jsonl(log_path, kept)


RNG_FILE = "rng.json"


def rng_state() -> dict:
    """The torch, numpy and Python RNG states as plain JSON values (no pickle: loading it cannot run code)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {"torch": torch.get_rng_state().tolist(),
            "numpy": {"kind": kind, "keys": keys.tolist(), "pos": int(pos), "has_gauss": int(has_gauss),
                      "cached_gaussian": float(gauss)},
            "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next}}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    n = state["numpy"]
    np.random.set_state((n["kind"], np.asarray(n["keys"], dtype=np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    py = state["python"]
    random.setstate((py["version"], tuple(py["internal"]), py["gauss_next"]))


def restore_rng_state(state_dir: Path) -> None:
    """Set the RNGs to the saved state; a state folder with only a pickled `rng.pt` is refused, never unpickled."""
    path = state_dir / RNG_FILE
    if not path.is_file():
        if (state_dir / "rng.pt").is_file():
            raise UserError(f"{state_dir}/rng.pt: training state in a pickle file, which could run code when "
                            f"loaded; dmlm reads only {RNG_FILE}. Resume this run with the dmlm that wrote it, or "
                            "train it again without --resume")
        raise MissingFileError(f"{path}: the training state has no RNG state; cannot resume exactly")
    try:
        set_rng_state(json.loads(path.read_text()))  # torch, numpy and random check every field's shape and type
    except (ValueError, KeyError, TypeError, RuntimeError) as e:
        raise UserError(f"{path}: not a valid RNG state ({type(e).__name__}: {e})") from None
