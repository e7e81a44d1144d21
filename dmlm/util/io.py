"""Atomic writes: every output dmlm writes appears complete or not at all.

One owner for the temp-file-then-rename rule (same folder, so the rename is atomic on POSIX):
`atomic_file` yields a temp path for any writer (soundfile, matplotlib, safetensors, torch),
`atomic_write_text` and `atomic_write_json` are its two common cases, and `atomic_dir` does the
same for a whole folder (checkpoints with their training state, vocoders): the one folder swap in
dmlm, with a stage hook where the crash tests kill it and `finish_swap` for a swap killed halfway.
`first_dir` is the lock-free form for caches several processes may build at once (the first
finished build wins). A failed write removes its temp file and leaves the previous output in place;
a full disk or missing permission becomes an `OutputError` that says so.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import signal
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from dmlm.util.errors import OutputError, UserError


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()  # read once at import: os.umask has no read-only form, and setting it races other threads

FAULT_ENV = "DMLM_FAULT"


def fault_point(stage: str, step: int | None = None) -> None:
    """SIGKILL this process here if `DMLM_FAULT` is `stage` or `stage@step` (crash tests only).

    A real kill -9 at a chosen point of a multi-file write (a checkpoint save, a token store's
    merge, a codebook, a vocoder), so tests check what a crash there leaves for a reader. Every
    `atomic_file` write has one, `write:NAME` (the new file complete, not yet renamed to NAME)."""
    want = os.environ.get(FAULT_ENV)
    if want and want in (stage, f"{stage}@{step}"):
        os.kill(os.getpid(), signal.SIGKILL)


def _output_error(path: Path, e: OSError) -> OutputError:
    why = "no space left on the device" if e.errno == errno.ENOSPC else (e.strerror or str(e))
    return OutputError(f"cannot write {path}: {why}")


def says_no_space(e: BaseException) -> bool:
    """A full disk reported by a writer that does not raise OSError (safetensors' `SafetensorError`
    carries the OS error in its text; torch's writer says only "unexpected pos")."""
    text = str(e)
    return isinstance(e, Exception) and ("No space left" in text or "os error 28" in text or "code: 28" in text)


@contextlib.contextmanager
def atomic_file(path: str | Path, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temp path beside `path`; on a clean exit it replaces `path`, else it is removed.

    `suffix` (default: `path`'s own) is kept so writers that pick a format by extension work."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=path.suffix if suffix is None else suffix)
        os.close(fd)
    except OSError as e:
        raise _output_error(path, e) from None
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; an output gets the usual permissions
        fault_point(f"write:{path.name}")  # the new file complete, not in place (crash tests)
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise _output_error(path, e) from None
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if says_no_space(e):
            raise _output_error(path, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))) from None
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write `text` (UTF-8) to `path` atomically, flushed to disk before the rename."""
    with atomic_file(path, suffix=".tmp") as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())


def atomic_write_json(path: str | Path, obj: Any, indent: int | None = 1) -> None:
    """`obj` as JSON (non-JSON values through `str`), written atomically."""
    atomic_write_text(path, json.dumps(obj, indent=indent, default=str, ensure_ascii=False))


def write_jsonl(path: str | Path, rows: list[dict]) -> None:
    """One JSON object per line, written atomically."""
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in rows))


def append_jsonl(path: str | Path, row: dict) -> None:
    """Add one JSON object as a line at the end of a JSON-lines file (a log written as it goes)."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")


def read_jsonl(path: str | Path, missing_ok: bool = False) -> list[dict]:
    """The JSON objects of a JSON-lines file (blank lines skipped); `missing_ok`: [] when there is no file."""
    path = Path(path)
    if missing_ok and not path.is_file():
        return []
    rows = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except ValueError as e:  # a damaged or hand-edited file: the line, not a traceback
                raise UserError(f"{path}:{lineno}: not a JSON object per line ({e})") from None
    return rows


def swap_paths(path: str | Path) -> tuple[Path, Path]:
    """The temp folder `atomic_dir` writes beside `path`, and where it moves the previous folder
    during the swap (`.NAME.tmp`, `.NAME.old`)."""
    out = Path(path)
    return out.with_name(f".{out.name}.tmp"), out.with_name(f".{out.name}.old")


def _no_stage(stage: str) -> None:
    """The default stage hook of `atomic_dir`: nothing happens between its steps."""


@contextlib.contextmanager
def atomic_dir(path: str | Path, stage: Callable[[str], None] = _no_stage, what: str = "folder") -> Iterator[Path]:
    """Yield an empty temp folder beside `path`; on a clean exit it replaces `path`, else it is removed.

    The swap: the previous folder is moved aside (`swap_paths`), the new one renamed into place, and
    only then the previous one removed. `stage(name)` runs at "commit" (the new folder complete, not
    in place) and "swap" (between the two renames): the crash tests kill the process there. A process
    killed between the renames leaves both folders complete; `finish_swap` puts one back. A failed
    write puts the previous folder back and is an `OutputError` naming `what` if it was a write error
    (a full disk says "no space"), whichever library raised it. One writer per `path` at a time: the
    caller holds its lock (the temp folder's name is fixed, so a killed writer's leftovers are found).
    """
    out = Path(path)
    tmp, old = swap_paths(out)
    try:
        shutil.rmtree(tmp, ignore_errors=True)  # a killed writer's leftovers
        tmp.mkdir(parents=True)
    except OSError as e:
        raise _output_error(out, e) from None
    try:
        yield tmp
        stage("commit")
        shutil.rmtree(old, ignore_errors=True)
        if out.exists():
            out.rename(old)
        stage("swap")
        tmp.rename(out)
    except Exception as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.is_dir() and not out.exists():
            old.rename(out)
        if isinstance(e, OSError) or says_no_space(e):
            err = _output_error(out, e if isinstance(e, OSError) else OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
            raise OutputError(f"{err}; the previous {what} (if any) is unchanged") from None
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)


def finish_swap(path: str | Path, complete: Callable[[Path], bool]) -> str | None:
    """Finish an `atomic_dir` swap killed between its two renames (the previous folder moved aside,
    the new one not in place): "new" if the temp folder, `complete(tmp)`, went into place, "old" if
    the previous folder went back, None if there was nothing to finish. Only the writer calls it."""
    out = Path(path)
    tmp, old = swap_paths(out)
    if out.exists() or not old.is_dir():
        return None
    if complete(tmp):
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
        return "new"
    old.rename(out)
    return "old"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def first_dir(target: str | Path) -> Iterator[Path]:
    """Yield a private temp folder beside `target`; on a clean exit it is renamed to `target`, unless
    another process got there first (its folder is kept, ours removed); on an error it is removed.

    For caches that several processes may build at once (no lock, no replacing: `target` existing
    means complete). Temp folders of killed builders (`.NAME.tmp-PID-…`, the pid gone) are removed.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{target.name}.tmp-"
    for stale in target.parent.glob(prefix + "*"):
        m = re.match(r"(\d+)-", stale.name[len(prefix) :])
        if m and not _pid_alive(int(m.group(1))):
            shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-", dir=target.parent))
    os.chmod(tmp, 0o777 & ~_UMASK)  # mkdtemp makes it private; a cache is an ordinary folder
    try:
        yield tmp
        try:
            os.rename(tmp, target)
        except OSError:
            if not target.is_dir():
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # another process finished first
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
