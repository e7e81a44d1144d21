"""`dmlm train`: set up, start or resume, loop over step / log / save, finish.

Design decisions:
- `run` reads as the whole of a training run; its pieces live in their own modules: the data
  order (`data_order`), the setup of tokenizers, vocabulary and examples (`setup`), the step,
  dev loss and save (`loop`), the training state's files (`state`) and the logs (`runlog`).
- Checkpoint = Hugging Face model dir (`dmlm.modeling.save_checkpoint`) with the training state
  (optimizer, RNG, data position, config) in its `training_state/`: one temp folder, checksummed
  and renamed into place, so a kill -9 anywhere in a save resumes from the previous or the new
  step, never from a mix. Resume verifies the checksums and that the parts name one step, and cuts
  the logs back to that step, so a resumed run is bitwise the uninterrupted one.
- One writer per run folder: `OUT.lock` (flock; the OS drops it when the holder dies however it
  dies, so a killed run's lock never blocks a rerun) refuses a second `dmlm train` naming its pid.
"""

from __future__ import annotations

import itertools
import logging
import os
from pathlib import Path

from dmlm.data.shards import exclusive_lock
from dmlm.modeling import CheckpointFiles, recover_interrupted_save
from dmlm.training.config import RunConfig
from dmlm.training.distributed import is_sharded
from dmlm.training.loop import Run, accelerator, prepare, save, save_snapshot, start_or_resume, train_step
from dmlm.training.runlog import RunLog
from dmlm.training.setup import setup
from dmlm.training.state import check_out, finished, legacy_state_dir, lock_path, state_dir_of
from dmlm.util.errors import UserError
from dmlm.util.progress import tqdm

log = logging.getLogger(__name__)


def train(cfg: RunConfig, resume: bool = False, stop_at: int | None = None, overwrite: bool = False) -> Path:
    """Train; returns the checkpoint folder. A folder that already holds a checkpoint or training state
    needs `resume` (continue it) or `overwrite` (start again, replacing it). `stop_at` simulates an
    interruption (tests). Only one process at a time trains into a folder (`OUT.lock`)."""
    cfg.validate()
    if resume and overwrite:
        raise UserError("--resume continues the run in train.out and --overwrite starts it again from scratch: "
                        "pass one of them")
    out = Path(cfg.train.out)
    check_out(out)
    if int(os.environ.get("RANK", "0")) != 0:  # only the main process writes (torchrun / accelerate launch)
        return run(cfg, resume, stop_at, overwrite)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"train.out={out}: cannot create its folder ({e.strerror or e})") from None
    with exclusive_lock(lock_path(out), f"{out}: training"):
        recover_interrupted_save(out)
        return run(cfg, resume, stop_at, overwrite)


def _refuse_to_replace(out: Path, resume: bool, overwrite: bool) -> None:
    """A folder holding a trained model is continued (`resume`) or replaced (`overwrite`), never by default;
    any other folder that is not empty is never replaced (a save swaps the whole folder)."""
    if not resume and not overwrite and (CheckpointFiles.is_checkpoint(out) or legacy_state_dir(out).is_dir()):
        raise UserError(f"{out} already holds a trained model (or its training state {state_dir_of(out)}); pass "
                        "--resume to continue it or --overwrite to train it again from scratch")
    if out.is_dir() and not CheckpointFiles.is_checkpoint(out) and any(out.iterdir()):
        shown = ", ".join(sorted(p.name for p in itertools.islice(out.iterdir(), 5)))
        raise UserError(f"train.out={out}: this folder holds files that are not a dmlm checkpoint ({shown}, ...); "
                        "each save replaces the whole folder, so they would be deleted. Name a new or empty "
                        "folder, e.g. train.out=" + str(out / "model"))


def run(cfg: RunConfig, resume: bool, stop_at: int | None, overwrite: bool) -> Path:
    """The training run: set up, start or resume, loop over step / log / save, finish."""
    out = Path(cfg.train.out)
    _refuse_to_replace(out, resume, overwrite)
    acc = accelerator(cfg)
    if resume and finished(cfg, state_dir_of(out)):  # before setup: BPE training and rendering take ~30 s on the demo
        log.info("%s: already trained with this config", out)
        return out
    S = setup(cfg)
    r = prepare(cfg, S, acc, *start_or_resume(cfg, S, acc, resume))
    if r.progress.step > 0 and r.fraction() >= 1.0:  # a finished run, resumed: nothing to do, nothing rewritten
        log.info("%s: already trained (%d steps)", out, r.progress.step)
        return out
    runlog = RunLog(out, r.progress.step, enabled=r.main)
    budget = f" (budget {cfg.train.max_minutes:g} min)" if cfg.train.max_minutes > 0 else ""
    bar = tqdm(total=None if budget else cfg.train.steps, initial=r.progress.step, desc=f"train{budget}",
               unit="step", disable=not r.main)
    r.model.train()
    dev_at = saved_at = None  # the steps of the last dev pass and the last save in this invocation
    try:
        while r.fraction() < 1.0 and (stop_at is None or r.progress.step < stop_at):
            row = train_step(r)
            bar.update(1)
            if r.progress.step % cfg.train.eval_every == 0 and S.dev:
                row.update(r.dev())
                dev_at = r.progress.step
            if r.progress.step % cfg.train.log_every == 0 or "dev_loss" in row:
                _log_step(r, row, runlog, bar)
            if r.progress.step % cfg.train.save_every == 0:
                save(r)
                saved_at = r.progress.step
            if r.progress.step in cfg.train.snapshots:
                save_snapshot(r)
        bar.close()
        # the end of training: a dev pass and a save, unless the last step has just had them
        if S.dev and (r.main or is_sharded(r.model)) and dev_at != r.progress.step:  # FSDP: every rank's forward
            runlog.write({"step": r.progress.step, **r.dev(), "elapsed": r.progress.elapsed}, scalars=False)
        if saved_at != r.progress.step:
            save(r)
    finally:
        runlog.close()
    acc.wait_for_everyone()
    return out


def _log_step(r: Run, row: dict, runlog: RunLog, bar) -> None:
    """Add the throughput to a step's row, show it on the progress bar and write it (main process)."""
    if not r.main:
        return
    tok_s = r.progress.tokens / max(r.progress.elapsed, 1e-9)
    row["tokens_per_s"] = tok_s
    bar.set_postfix(loss=f"{row['loss']:.3f}", tok_s=f"{tok_s:.0f}",
                    **({"dev": f"{row['dev_loss']:.3f}"} if "dev_loss" in row else {}))
    runlog.write(row)
