"""Atomic writes: every output dmlm writes appears complete or not at all.

One owner for the temp-file-then-rename rule (same folder, so the rename is atomic on POSIX):
`atomic_file` yields a temp path for any writer (soundfile, matplotlib, safetensors, torch),
`atomic_write_text` and `atomic_write_json` are its two common cases, and `atomic_dir` does the
same for a whole folder (checkpoints). A failed write removes its temp file and leaves the
previous output in place; a full disk or missing permission becomes an `OutputError` that says so.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dmlm.util.errors import OutputError


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()  # read once at import: os.umask has no read-only form, and setting it races other threads


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


def read_jsonl(path: str | Path, missing_ok: bool = False) -> list[dict]:
    """The JSON objects of a JSON-lines file (blank lines skipped); `missing_ok`: [] when there is no file."""
    path = Path(path)
    if missing_ok and not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield an empty temp folder beside `path`; on a clean exit it replaces `path` (the old one
    is moved aside first and removed only once the new one is in place), else it is removed."""
    out = Path(path)
    tmp = out.with_name(f".{out.name}.tmp")
    old = out.with_name(f".{out.name}.old")
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    except OSError as e:
        raise _output_error(out, e) from None
    try:
        yield tmp
        shutil.rmtree(old, ignore_errors=True)
        if out.exists():
            out.rename(old)
        tmp.rename(out)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise _output_error(out, e) from None
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if says_no_space(e):
            raise _output_error(out, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))) from None
        raise
    shutil.rmtree(old, ignore_errors=True)
