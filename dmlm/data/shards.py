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
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from dmlm.data.manifest import Record, atomic_write_text

log = logging.getLogger(__name__)


class TokenStore:
    """Read-only view of a merged store."""

    def __init__(self, prefix: str | Path):
        self.prefix = Path(prefix)
        meta_path = self.prefix.with_suffix(".json")
        if not meta_path.is_file():
            raise FileNotFoundError(f"{meta_path}: token store not found (run `dmlm tokenize` first)")
        self.meta = json.loads(meta_path.read_text())
        self.ids: list[str] = self.meta["ids"]
        self.offsets = np.load(self.prefix.with_suffix(".idx.npy"))
        n_tokens = int(self.offsets[-1])
        self.tokens = (np.memmap(self.prefix.with_suffix(".bin"), dtype=np.int32, mode="r", shape=(n_tokens,))
                       if n_tokens else np.zeros(0, dtype=np.int32))
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
            raise ValueError(f"{self.prefix}: no tokens for record {record_id!r}; "
                             "was the manifest changed after `dmlm tokenize`? Tokenize it again")
        return self[self._index[record_id]]

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)


def _part_path(prefix: Path, chunk: int) -> Path:
    return prefix.with_name(f"{prefix.name}.part{chunk:05d}.npz")


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

    Returns None when this shard finished but other shards still have chunks to do.
    """
    if not (0 <= shard < num_shards):
        raise ValueError(f"shard index {shard} out of range for --num-shards {num_shards}")
    prefix = Path(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    meta_path = prefix.with_suffix(".json")
    if meta_path.is_file():
        old = json.loads(meta_path.read_text())
        if old.get("fingerprint") != meta.get("fingerprint"):
            raise ValueError(f"{meta_path}: existing store was made with codebook {old.get('fingerprint')}, "
                             f"not {meta.get('fingerprint')}; delete it or write elsewhere")
        if old["ids"] == [r.id for r in records]:
            return TokenStore(prefix)
    n_chunks = max(1, -(-len(records) // chunk_size))
    mine = [c for c in range(n_chunks) if c % num_shards == shard]
    todo = [c for c in mine if not _part_path(prefix, c).is_file()]
    if len(todo) < len(mine):
        log.info("%s: resuming, %d of %d chunks already done", prefix, len(mine) - len(todo), len(mine))
    bar = tqdm(total=sum(len(records[c * chunk_size : (c + 1) * chunk_size]) for c in todo), desc=desc, unit="utt")
    for c in todo:
        chunk = list(records[c * chunk_size : (c + 1) * chunk_size])
        seqs = encode(chunk)
        lengths = np.array([len(s) for s in seqs], dtype=np.int64)
        flat = np.concatenate([np.asarray(s, dtype=np.int32) for s in seqs]) if seqs else np.zeros(0, np.int32)
        part = _part_path(prefix, c)
        tmp = part.with_name(f".{part.name}.tmp.npz")
        np.savez(tmp, tokens=flat, lengths=lengths, ids=np.array([r.id for r in chunk]),
                 fingerprint=np.array(meta.get("fingerprint") or ""))
        os.replace(tmp, part)
        bar.update(len(chunk))
    bar.close()
    if not all(_part_path(prefix, c).is_file() for c in range(n_chunks)):
        return None
    return _merge(prefix, n_chunks, meta)


def _merge(prefix: Path, n_chunks: int, meta: dict) -> TokenStore:
    ids: list[str] = []
    offsets = [0]
    tmp_bin = prefix.with_name(f".{prefix.name}.bin.tmp")
    with open(tmp_bin, "wb") as f:
        for c in range(n_chunks):
            with np.load(_part_path(prefix, c)) as part:
                if str(part["fingerprint"]) != (meta.get("fingerprint") or ""):
                    raise ValueError(f"{_part_path(prefix, c)}: part made with another codebook; delete the parts")
                f.write(part["tokens"].astype(np.int32).tobytes())
                for n in part["lengths"]:
                    offsets.append(offsets[-1] + int(n))
                ids.extend(str(x) for x in part["ids"])
    os.replace(tmp_bin, prefix.with_suffix(".bin"))
    tmp_idx = prefix.with_name(f".{prefix.name}.idx.tmp.npy")
    np.save(tmp_idx, np.array(offsets, dtype=np.int64))
    os.replace(tmp_idx, prefix.with_suffix(".idx.npy"))
    atomic_write_text(prefix.with_suffix(".json"), json.dumps({**meta, "ids": ids}))
    for c in range(n_chunks):
        _part_path(prefix, c).unlink(missing_ok=True)
    return TokenStore(prefix)
