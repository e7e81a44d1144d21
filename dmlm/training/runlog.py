"""A run's logs: `OUT.log.jsonl` (one JSON row per logged step) and TensorBoard events in `OUT.tb/`.

Design decisions:
- `RunLog` is the one owner of both paths (`log_path(out)`, `tb_path(out)`): readers (plots,
  reports, tests) ask it rather than spelling the suffixes.
- A resumed run trains again the steps a killed run logged after its last save, so on resume both
  logs are cut back to the resumed step: the JSONL rewritten without the later rows (`cut_log`),
  the TensorBoard events by TensorBoard's own mechanism (`SummaryWriter(purge_step=...)` writes a
  session start that makes readers drop the later events). A fresh run starts both empty.
- Only the main process writes; the other ranks get a `RunLog` that writes nothing.
"""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

from dmlm.util.errors import OutputError
from dmlm.util.io import append_jsonl, read_jsonl, write_jsonl

LOG_SUFFIX = ".log.jsonl"
TB_SUFFIX = ".tb"


def cut_log(log_path: Path, step: int) -> None:
    """Drop log rows after `step`: a run killed between saves logged steps it will train again."""
    if not log_path.is_file():
        return
    rows = read_jsonl(log_path)
    kept = [r for r in rows if r.get("step", 0) <= step]
    if len(kept) < len(rows):
        write_jsonl(log_path, kept)


class RunLog:
    """Writes a run's JSONL log and TensorBoard scalars, starting at `step` (0: a fresh run)."""

    def __init__(self, out: str | Path, step: int = 0, enabled: bool = True):
        self.path, self.enabled, self._writer = self.log_path(out), enabled, None
        if not enabled:
            return
        from torch.utils.tensorboard import SummaryWriter

        if step == 0:
            self.path.unlink(missing_ok=True)
            shutil.rmtree(self.tb_path(out), ignore_errors=True)
        else:
            cut_log(self.path, step)
        # purge_step: readers drop the events of steps > `step` written before this session
        try:
            self._writer = SummaryWriter(str(self.tb_path(out)), purge_step=step + 1 if step else None)
        except OSError as e:
            raise _log_error(self.path, e) from None

    @staticmethod
    def log_path(out: str | Path) -> Path:
        """The JSONL log of the run whose model folder is `out` (beside it: `OUT.log.jsonl`)."""
        out = Path(out)
        return out.with_name(out.name + LOG_SUFFIX)

    @staticmethod
    def tb_path(out: str | Path) -> Path:
        """The TensorBoard folder of the run whose model folder is `out` (`OUT.tb/`)."""
        out = Path(out)
        return out.with_name(out.name + TB_SUFFIX)

    @classmethod
    def rows(cls, out: str | Path) -> list[dict]:
        """The logged rows of the run in `out` ([] before its first logged step)."""
        return read_jsonl(cls.log_path(out), missing_ok=True)

    def write(self, row: dict, scalars: bool = True) -> None:
        """Append `row` (it has a "step") to the JSONL log and, with `scalars`, its values to TensorBoard
        (`dev_*` keys under dev/, the rest under train/)."""
        if not self.enabled:
            return
        try:
            append_jsonl(self.path, row)
            if scalars:
                for k, v in row.items():
                    if k != "step":
                        self._writer.add_scalar(f"dev/{k[4:]}" if k.startswith("dev_") else f"train/{k}", v, row["step"])
        except OSError as e:  # a full disk between saves: one line, the last save untouched (resumable)
            raise _log_error(self.path, e) from None

    def close(self) -> None:
        """Flush and close the TensorBoard writer."""
        if self._writer is not None:
            writer, self._writer = self._writer, None
            try:
                writer.close()
            except OSError as e:
                raise _log_error(self.path, e) from None


def _log_error(path: Path, e: OSError) -> OutputError:
    why = "no space left on the device" if e.errno == errno.ENOSPC else (e.strerror or str(e))
    return OutputError(f"cannot write the run log {path} (or its TensorBoard events): {why}; the last save is "
                       "intact: free space and rerun with --resume")


def plot_losses(log_path: str | Path, out_png: str | Path) -> Path:
    """Training loss and dev loss against steps, from a run's JSONL log."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_jsonl(log_path)
    tr = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    dv = [(r["step"], r["dev_loss"]) for r in rows if "dev_loss" in r]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    if tr:
        ax.plot(*zip(*tr), label="train loss (objective)", lw=1)
    if dv:
        ax.plot(*zip(*dv), "o-", label="dev loss (transcript tokens)", lw=1.5)
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats)")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_png, dpi=120)
    plt.close(fig)
    return Path(out_png)
