"""Progress bars that read well in a terminal and in a log file.

`tqdm` redraws its bar in place with carriage returns; written to a file (a `make demo` log, a
CI job, `nohup`), that becomes one line of thousands of updates. This `tqdm` is tqdm's own bar
on a terminal and, when its output is not one, prints a plain line (description, count, rate,
time left) at most every `DMLM_PROGRESS_SECONDS` seconds (default 30) and once at the end.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator

from tqdm import tqdm as _tqdm

__all__ = ["tqdm", "quiet_transformers"]


def _is_terminal(fp) -> bool:
    try:
        return bool(fp.isatty())
    except (AttributeError, ValueError):
        return False


class tqdm(_tqdm):  # noqa: N801  (a drop-in for tqdm.tqdm)
    def __init__(self, *args, **kwargs):
        fp = kwargs.get("file") or sys.stderr
        self._log_lines = not _is_terminal(fp) and not kwargs.get("disable")
        if self._log_lines:
            interval = float(os.environ.get("DMLM_PROGRESS_SECONDS", "30"))
            kwargs.update(mininterval=interval, maxinterval=max(interval, 10 * interval), dynamic_ncols=False, ncols=100)
            self._every, self._last = interval, 0.0
        super().__init__(*args, **kwargs)

    def display(self, msg=None, pos=None):  # noqa: D102
        if not getattr(self, "_log_lines", False):
            return super().display(msg, pos)
        if msg == "":  # tqdm clearing the line: nothing to clear in a log
            return True
        now = time.time()
        if self.n == 0 or (self._last and now - self._last < self._every):
            return True  # the first line comes with the first progress, then one per interval
        self._line(now)
        return True

    def _line(self, now: float) -> None:
        self._last, self._printed = now, self.n
        self.fp.write(self.format_meter(**{**self.format_dict, "ncols": 0}).strip() + "\n")
        self.fp.flush()

    def close(self):  # noqa: D102
        if getattr(self, "_log_lines", False) and not self.disable:
            if self.n and self.n != getattr(self, "_printed", None):
                self._line(time.time())  # the final count (or where it stopped)
            self.sp = None  # tqdm's closing redraw is for terminals
        return super().close()


@contextlib.contextmanager
def quiet_transformers(report: bool = True) -> Iterator[None]:
    """transformers' own bars ("Loading weights", "Writing model shards": one per load or save, in-place
    redraws that become `\r` spam in a log file) off for the block; with `report=False` its
    warnings too (e.g. the 40-line table of layers a cut model skips by design)."""
    from transformers.utils import logging as hf_logging

    bars, verbosity = hf_logging.is_progress_bar_enabled(), hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    if not report:
        hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
