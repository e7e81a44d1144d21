"""Token stores: variable-length integer sequences, one per manifest record, memory-mapped.

Layout of a store with prefix P:
    P.bin       all tokens concatenated (int32)
    P.idx.npy   offsets (N + 1,) int64: record i is bin[idx[i]:idx[i+1]]
    P.json      {"ids": [...], "fingerprint": ..., "manifest": ..., "modality": ...}

Design decisions:
- Expensive work (Whisper features + k-means assignment) happens once; training reads ints.
- Tokenization runs in chunks of records; each finished chunk is written atomically as a part
  file, so an interrupted job resumes at the first missing chunk. `--shard i --num-shards n`
  takes chunks i, i+n, …, so shards can run under any launcher; whoever finds every part
  present merges them. Merging streams part by part: memory stays flat with corpus size.
- A store records its codebook fingerprint; opening it with another codebook is an error.
- Concurrent jobs are detected, never silently interleaved:
    P.plan.json               the build's plan (records, chunk size, num_shards, fingerprint),
                              published atomically by the first job; a job with another chunk
                              size (its parts would not line up) or shard count (its shards
                              would overlap others') for the same records is refused
    P.shard<i>-of-<n>.lock    held (flock, non-blocking) while shard i works: a second job on
                              the same shard fails at once, naming the lock and its holder
    P.merge.lock              held while merging, so exactly one job merges
  The merge also checks that the parts hold exactly the records of the manifest, in order.
  A finished store leaves none of them behind (a killed job may leave its lock file: harmless).
"""

from __future__ import annotations

import errno
import fcntl
import glob
import hashlib
import json
import logging
import os
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from dmlm.util.progress import tqdm

from dmlm.data.manifest import Record
from dmlm.util.errors import MissingFileError, OutputError, UserError
from dmlm.util.io import atomic_write_text, fault_point

log = logging.getLogger(__name__)


def store_file(prefix: str | Path, ext: str) -> Path:
    """`P.bin`, `P.json`, ... of store prefix P; appended, not swapped for a suffix of P, so
    the prefixes `train` and `train.image` (or a manifest stem with dots) name distinct stores."""
    prefix = Path(prefix)
    return prefix.with_name(prefix.name + ext)


class TokenStore:
    """Read-only view of a merged store."""

    def __init__(self, prefix: str | Path):
        self.prefix = Path(prefix)
        meta_path = store_file(self.prefix, ".json")
        if not meta_path.is_file():
            raise MissingFileError(f"{meta_path}: token store not found (run `dmlm tokenize` first)")
        text = meta_path.read_text()
        self.meta = json.loads(text)
        self.ids: list[str] = self.meta["ids"]
        try:
            self.offsets = np.load(store_file(self.prefix, ".idx.npy"))
        except (OSError, ValueError) as e:
            raise UserError(f"{store_file(self.prefix, '.idx.npy')}: cannot read the token store's index ({e}); "
                            "tokenize the manifest again") from None
        n_tokens = int(self.offsets[-1]) if len(self.offsets) else -1
        bin_path = store_file(self.prefix, ".bin")
        bin_size = bin_path.stat().st_size if bin_path.is_file() else 0
        self.tokens = (np.memmap(bin_path, dtype=np.int32, mode="r", shape=(n_tokens,))
                       if n_tokens > 0 and bin_size >= 4 * n_tokens else np.zeros(0, dtype=np.int32))
        # the files agree with the .json (written last, removed first by a rebuild), which is unchanged
        # since we read it: else a rebuild replaced them under us, and we would read two builds mixed
        if (len(self.offsets) != len(self.ids) + 1 or n_tokens != self.meta.get("tokens", n_tokens)
                or bin_size < 4 * n_tokens or not meta_path.is_file() or meta_path.read_text() != text):
            raise UserError(f"{self.prefix}: the token store's files do not agree ({len(self.ids)} records in "
                            f"{meta_path.name}, {len(self.offsets) - 1} in its index, {bin_size} bytes of tokens); "
                            "it is being rebuilt, or was damaged: tokenize the manifest again")
        self._index = {rid: i for i, rid in enumerate(self.ids)}

    @property
    def fingerprint(self) -> str | None:
        return self.meta.get("fingerprint")

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> np.ndarray:
        return np.asarray(self.tokens[self.offsets[i] : self.offsets[i + 1]])

    def get(self, record_id: str) -> np.ndarray:
        if record_id not in self._index:
            # a ValueError, not KeyError: a stale store is a user error (the CLI reports it in one line)
            raise UserError(f"{self.prefix}: no tokens for record {record_id!r}; "
                             "was the manifest changed after `dmlm tokenize`? Tokenize it again")
        return self[self._index[record_id]]

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)



class StoreBusy(UserError):
    """Another process holds the lock of this shard (a ValueError: the CLI reports it in one line)."""


def _part_path(prefix: Path, chunk: int) -> Path:
    return prefix.with_name(f"{prefix.name}.part{chunk:05d}.npz")


def _plan_path(prefix: Path) -> Path:
    return prefix.with_name(f"{prefix.name}.plan.json")


def shard_lock_path(prefix: str | Path, shard: int, num_shards: int) -> Path:
    prefix = Path(prefix)
    return prefix.with_name(f"{prefix.name}.shard{shard}-of-{num_shards}.lock")


def merge_lock_path(prefix: str | Path) -> Path:
    prefix = Path(prefix)
    return prefix.with_name(f"{prefix.name}.merge.lock")


def _any_parts(prefix: Path) -> bool:
    return any(prefix.parent.glob(f"{glob.escape(prefix.name)}.part*.npz"))


# -- locks ----------------------------------------------------------------------------------
# flock locks belong to the open file, not to the file's existence: the kernel drops them when
# the holder's descriptor closes, which includes the process dying however it dies (kill -9,
# the OOM killer, a crash). So a lock file left behind by a killed job never blocks a rerun;
# only a live holder does. (On NFS, Linux maps flock onto POSIX locks held by the server, so it
# works across machines; a file system without locks gets a warning and no protection.) The holder deletes its lock file on release while still holding it;
# a process that opened the old file meanwhile sees that the path now names another file (or
# none) and starts over, so two processes never both believe they hold the lock.

@contextmanager
def exclusive_lock(path: Path, what: str) -> Iterator[None]:
    """Hold an exclusive lock on `path`, or raise `StoreBusy` at once (never waits)."""
    fd = _acquire(path, what)
    try:
        yield
    finally:
        if fd is not None:
            path.unlink(missing_ok=True)  # still ours: only a holder unlinks it
            os.close(fd)  # releases the flock


def _acquire(path: Path, what: str) -> int | None:
    try:
        return _acquire_once(path, what)
    except OSError as e:  # a full disk or a read-only folder: one line naming the lock file
        if isinstance(e, UserError):
            raise
        raise OutputError(f"{what}: cannot write the lock file {path}: {_why(e)}") from None


def _why(e: OSError) -> str:
    return "no space left on the device" if e.errno == errno.ENOSPC else (e.strerror or str(e))


def _acquire_once(path: Path, what: str) -> int | None:
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "holder unknown"
            os.close(fd)
            raise StoreBusy(f"{what}: another process is at it ({holder}; lock file {path}). Wait for it or "
                            "stop it; a killed job's lock is released by the OS, so it never blocks a rerun") from None
        except OSError as e:  # a file system without flock (some network mounts)
            os.close(fd)
            log.warning("%s: cannot lock (%s); concurrent jobs on %s will not be detected", path, e, what)
            return None
        try:
            ours = os.path.samestat(os.stat(path), os.fstat(fd))
        except FileNotFoundError:
            ours = False
        if ours:
            try:
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}"
                          .encode(), 0)
            except OSError:
                path.unlink(missing_ok=True)  # still ours: only a holder unlinks it
                os.close(fd)
                raise
            return fd
        os.close(fd)  # the previous holder unlinked this file after we opened it: lock the new one


# -- the plan -------------------------------------------------------------------------------

def _check_plan(prefix: Path, plan: dict) -> None:
    """Publish this build's plan, or check it against the one already there.

    The first job publishes atomically (complete file, created only if absent), so concurrent
    starters all compare against the same plan. A plan of another build (other records or
    codebook) with no parts left is stale and replaced; with parts, it is an error.
    """
    path = _plan_path(prefix)
    text = json.dumps(plan, indent=1)
    for _ in range(3):  # a merge may delete the plan between our two looks
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            tmp.write_text(text)
        except OSError as e:  # a full disk: no temp file left behind, one line naming the plan
            tmp.unlink(missing_ok=True)
            raise OutputError(f"cannot write {path}: {_why(e)}") from None
        try:
            os.link(tmp, path)  # atomic create-if-absent, unlike os.replace
            return
        except FileExistsError:
            pass
        except OSError:  # no hard links here (some network or FUSE mounts): publish, less strictly
            if not path.exists():
                os.replace(tmp, path)
                return
        finally:
            tmp.unlink(missing_ok=True)
        try:
            old = json.loads(path.read_text())
        except FileNotFoundError:
            continue
        if old == plan:
            return
        if (old.get("records_sha256"), old.get("fingerprint")) != (plan["records_sha256"], plan["fingerprint"]):
            if not _any_parts(prefix):
                atomic_write_text(path, text)  # left by a finished or abandoned build
                return
            if old.get("fingerprint") != plan["fingerprint"]:
                raise UserError(f"{prefix}: part files were made with another codebook ({old.get('fingerprint')}), "
                                 f"not {plan['fingerprint']}; delete {prefix.name}.part*.npz and {path.name}")
            raise UserError(f"{prefix}: part files were made for another manifest ({old.get('records')} records, "
                             f"now {plan['records']}); delete {prefix.name}.part*.npz and {path.name}")
        diff = ", ".join(f"{k}={old.get(k)} (this run: {plan[k]})" for k in ("num_shards", "chunk_size")
                         if old.get(k) != plan[k])
        raise UserError(f"{prefix}: this store is being built with {diff}, as recorded in {path}; "
                         f"run every shard with the same --num-shards, or delete {prefix.name}.part*.npz and "
                         f"{path.name} to start over")
    raise UserError(f"{path}: could not publish the build plan (deleted repeatedly under us)")


# -- build ----------------------------------------------------------------------------------

def _complete_store(prefix: Path, ids: list[str], meta: dict) -> TokenStore | None:
    """The finished store if one for exactly these records is there (another codebook: error)."""
    meta_path = store_file(prefix, ".json")
    if not meta_path.is_file():
        return None
    old = json.loads(meta_path.read_text())
    if old.get("fingerprint") != meta.get("fingerprint"):
        raise UserError(f"{meta_path}: existing store was made with codebook {old.get('fingerprint')}, "
                         f"not {meta.get('fingerprint')}; delete it or write elsewhere")
    return TokenStore(prefix) if old["ids"] == ids else None


def build_store(
    records: Sequence[Record],
    encode: Callable[[list[Record]], list[list[int]]],
    prefix: str | Path,
    meta: dict,
    chunk_size: int = 256,
    shard: int = 0,
    num_shards: int = 1,
    desc: str = "tokenize",
) -> TokenStore | None:
    """Encode records chunk by chunk into a store; returns it once every chunk is done.

    Returns None when this shard finished but other shards still have chunks to do, or
    another process is merging. Raises `StoreBusy` when another process works on this shard.
    """
    if not (0 <= shard < num_shards):
        raise UserError(f"shard index {shard} out of range for --num-shards {num_shards}")
    prefix = Path(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    ids = [r.id for r in records]
    if (done := _complete_store(prefix, ids, meta)) is not None:
        return done
    n_chunks = max(1, -(-len(records) // chunk_size))
    _check_plan(prefix, {"records": len(ids), "records_sha256": hashlib.sha256("\n".join(ids).encode()).hexdigest(),
                         "fingerprint": meta.get("fingerprint") or "", "chunk_size": chunk_size,
                         "num_shards": num_shards})
    mine = [c for c in range(n_chunks) if c % num_shards == shard]
    with exclusive_lock(shard_lock_path(prefix, shard, num_shards), f"{prefix}: shard {shard} of {num_shards}"):
        todo = [c for c in mine if not _part_path(prefix, c).is_file()]
        # checked after listing the parts: a merge writes the store before deleting them, so
        # parts missing because of a merge mean the store is there now
        if (done := _complete_store(prefix, ids, meta)) is not None:
            return done
        if len(todo) < len(mine):
            log.info("%s: resuming, %d of %d chunks already done", prefix, len(mine) - len(todo), len(mine))
        bar = tqdm(total=sum(len(records[c * chunk_size : (c + 1) * chunk_size]) for c in todo), desc=desc, unit="utt")
        for c in todo:
            chunk = list(records[c * chunk_size : (c + 1) * chunk_size])
            seqs = encode(chunk)
            lengths = np.array([len(s) for s in seqs], dtype=np.int64)
            flat = np.concatenate([np.asarray(s, dtype=np.int32) for s in seqs]) if seqs else np.zeros(0, np.int32)
            part = _part_path(prefix, c)
            tmp = part.with_name(f".{part.name}.{os.getpid()}.tmp.npz")
            try:
                np.savez(tmp, tokens=flat, lengths=lengths, ids=np.array([r.id for r in chunk]),
                         fingerprint=np.array(meta.get("fingerprint") or ""))
                os.replace(tmp, part)
            except OSError as e:  # a full disk: the finished chunks stay, a rerun resumes after them
                raise OutputError(f"cannot write {part}: {_why(e)}") from None
            finally:
                tmp.unlink(missing_ok=True)
            bar.update(len(chunk))
        bar.close()
        if not all(_part_path(prefix, c).is_file() for c in range(n_chunks)):
            return None
        try:
            with exclusive_lock(merge_lock_path(prefix), f"{prefix}: merging"):
                if (done := _complete_store(prefix, ids, meta)) is not None:
                    return done  # merged by another process while we waited for the lock
                return _merge(prefix, n_chunks, meta, ids)
        except StoreBusy:
            log.info("%s: another process is merging the parts", prefix)
            return None


def _merge(prefix: Path, n_chunks: int, meta: dict, expected_ids: list[str]) -> TokenStore:
    tmp_bin = prefix.with_name(f".{prefix.name}.bin.tmp")
    tmp_idx = prefix.with_name(f".{prefix.name}.idx.tmp.npy")
    try:
        ids, offsets = _merge_parts(prefix, n_chunks, meta, expected_ids, tmp_bin)
        np.save(tmp_idx, np.array(offsets, dtype=np.int64))
    except BaseException as e:  # a full disk: the parts stay, so a rerun merges again
        tmp_bin.unlink(missing_ok=True)
        tmp_idx.unlink(missing_ok=True)
        if isinstance(e, OSError) and not isinstance(e, UserError):
            raise OutputError(f"cannot write the token store {prefix}: {_why(e)}") from None
        raise
    # the store's .json marks it complete: removed before the other files are replaced and written
    # last, atomically, so a reader (or a crash) in between sees no store, never one of two builds
    store_file(prefix, ".json").unlink(missing_ok=True)
    fault_point("store-json-removed")
    os.replace(tmp_bin, store_file(prefix, ".bin"))
    fault_point("store-bin")
    os.replace(tmp_idx, store_file(prefix, ".idx.npy"))
    fault_point("store-idx")
    atomic_write_text(store_file(prefix, ".json"), json.dumps({**meta, "ids": ids, "tokens": offsets[-1]}))
    for c in range(n_chunks):
        _part_path(prefix, c).unlink(missing_ok=True)
    _plan_path(prefix).unlink(missing_ok=True)
    return TokenStore(prefix)


def _merge_parts(prefix: Path, n_chunks: int, meta: dict, expected_ids: list[str],
                 tmp_bin: Path) -> tuple[list[str], list[int]]:
    """Concatenate the part files' tokens into `tmp_bin`; returns the record ids and offsets."""
    ids: list[str] = []
    offsets = [0]
    with open(tmp_bin, "wb") as f:
        for c in range(n_chunks):
            with np.load(_part_path(prefix, c)) as part:
                if str(part["fingerprint"]) != (meta.get("fingerprint") or ""):
                    raise UserError(f"{_part_path(prefix, c)}: part made with another codebook; delete the parts")
                part_ids = [str(x) for x in part["ids"]]
                if part_ids != expected_ids[len(ids) : len(ids) + len(part_ids)]:
                    raise UserError(f"{_part_path(prefix, c)}: part holds other records than the manifest's "
                                     f"(left from another build?); delete {prefix.name}.part*.npz and tokenize again")
                f.write(part["tokens"].astype(np.int32).tobytes())
                for n in part["lengths"]:
                    offsets.append(offsets[-1] + int(n))
                ids.extend(part_ids)
    if ids != expected_ids:
        raise UserError(f"{prefix}: parts hold {len(ids)} records, the manifest {len(expected_ids)}; "
                         f"delete {prefix.name}.part*.npz and tokenize again")
    return ids, offsets
