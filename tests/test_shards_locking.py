"""Token stores under concurrent jobs: a shard is worked on by one process at a time, a killed
job's lock never blocks a rerun, a run with another sharding plan is refused, one job merges.

The other process is a real one (a subprocess running `build_store` whose encoder waits on
its stdin), so the locks are exercised across processes as launchers use them.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from dmlm.data.manifest import Record
from dmlm.data.shards import (StoreBusy, TokenStore, build_store, exclusive_lock, merge_lock_path,
                              shard_lock_path)

META = {"fingerprint": "aaaa", "modality": "speech"}

# shard SHARD of NUM over 7 records in chunks of 2; encoding waits for a line on stdin after
# announcing itself, so the parent can act while the lock is held
CHILD = textwrap.dedent("""
    import sys
    from dmlm.data.manifest import Record
    from dmlm.data.shards import build_store

    prefix, shard, num = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])

    def encode(chunk):
        print("encoding", flush=True)
        sys.stdin.readline()
        return [[int(r.id[1:])] * (int(r.id[1:]) % 4) for r in chunk]

    store = build_store([Record(id=f"r{i}") for i in range(7)], encode, prefix, {"fingerprint": "aaaa",
                        "modality": "speech"}, chunk_size=2, shard=shard, num_shards=num)
    print("merged" if store is not None else "pending", flush=True)
""")


def _records(n: int = 7, tag: str = "r") -> list[Record]:
    return [Record(id=f"{tag}{i}") for i in range(n)]


def _encode(chunk: list[Record]) -> list[list[int]]:
    return [[int(r.id[1:])] * (int(r.id[1:]) % 4) for r in chunk]  # the child's encoder


def _child(prefix: Path, shard: int, num: int) -> subprocess.Popen:
    """A job on `shard` that is inside its first chunk (so it holds the shard's lock)."""
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(prefix), str(shard), str(num)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "encoding"
    return proc


def _finish(proc: subprocess.Popen, chunks: int) -> str:
    out, _ = proc.communicate("\n" * chunks, timeout=60)
    assert proc.returncode == 0
    return out.strip()


def _leftovers(tmp_path: Path) -> list[str]:
    return sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".lock" or ".plan" in p.name or ".part" in p.name)


def test_a_second_job_on_the_same_shard_is_refused(tmp_path):
    prefix = tmp_path / "s"
    child = _child(prefix, 0, 2)
    try:
        lock = shard_lock_path(prefix, 0, 2)
        assert lock.name == "s.shard0-of-2.lock"
        with pytest.raises(StoreBusy) as err:
            build_store(_records(), lambda c: pytest.fail("encoded a busy shard"), prefix, META, chunk_size=2,
                        shard=0, num_shards=2)
        msg = str(err.value)
        assert "shard 0 of 2" in msg and str(lock) in msg and f"pid {child.pid}" in msg
        # the other shard is free: it does its chunks, then waits for shard 0's
        assert build_store(_records(), _encode, prefix, META, chunk_size=2, shard=1, num_shards=2) is None
    finally:
        out = _finish(child, 2)
    assert out.endswith("merged")  # the last job to finish merges
    store = TokenStore(prefix)
    assert store.ids == [r.id for r in _records()]
    assert [store.get(r.id).tolist() for r in _records()] == _encode(_records())
    assert _leftovers(tmp_path) == []  # no parts, plan or lock files once merged


def test_a_killed_jobs_lock_does_not_block_a_rerun(tmp_path):
    prefix = tmp_path / "s"
    child = _child(prefix, 0, 1)
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)
    lock = shard_lock_path(prefix, 0, 1)
    assert lock.is_file()  # the file stays behind; its flock died with the process
    assert "pid" in lock.read_text()
    store = build_store(_records(), _encode, prefix, META, chunk_size=2)
    assert store is not None and store.ids == [r.id for r in _records()]
    assert _leftovers(tmp_path) == []


def test_another_num_shards_or_chunk_size_is_refused(tmp_path):
    prefix = tmp_path / "s"
    assert build_store(_records(), _encode, prefix, META, chunk_size=2, shard=0, num_shards=2) is None
    plan = json.loads((tmp_path / "s.plan.json").read_text())
    assert (plan["num_shards"], plan["chunk_size"], plan["records"]) == (2, 2, 7)
    with pytest.raises(ValueError, match=r"num_shards=2 \(this run: 3\).*s\.plan\.json"):
        build_store(_records(), _encode, prefix, META, chunk_size=2, shard=1, num_shards=3)
    with pytest.raises(ValueError, match=r"chunk_size=2 \(this run: 3\)"):
        build_store(_records(), _encode, prefix, META, chunk_size=3, shard=1, num_shards=2)
    # the right plan still finishes the store
    assert build_store(_records(), _encode, prefix, META, chunk_size=2, shard=1, num_shards=2) is not None
    # a finished store is simply reopened, whatever the sharding of the new call
    assert build_store(_records(), _encode, prefix, META, chunk_size=5, shard=2, num_shards=3) is not None


def test_a_plan_of_another_manifest(tmp_path):
    prefix = tmp_path / "s"
    build_store(_records(), _encode, prefix, META, chunk_size=2, shard=0, num_shards=2)
    with pytest.raises(ValueError, match="another manifest"):  # its parts are still there
        build_store(_records(5, "q"), _encode, prefix, META, chunk_size=2, shard=0, num_shards=3)
    for p in tmp_path.glob("s.part*.npz"):
        p.unlink()  # an abandoned build: a plan without parts is stale, not binding
    store = build_store(_records(5, "q"), _encode, prefix, META, chunk_size=2)
    assert store is not None and store.ids == [f"q{i}" for i in range(5)]


def test_parts_of_other_records_are_refused_at_merge(tmp_path):
    prefix = tmp_path / "s"
    build_store(_records(), _encode, prefix, META, chunk_size=2, shard=0, num_shards=2)  # parts 0 and 2
    (tmp_path / "s.plan.json").unlink()  # lost: nothing but the parts' own ids can tell
    with pytest.raises(ValueError, match="other records"):
        build_store(_records(7, "q"), _encode, prefix, META, chunk_size=2)
    assert not (tmp_path / "s.json").exists()


def test_one_job_merges(tmp_path):
    prefix = tmp_path / "s"
    assert build_store(_records(), _encode, prefix, META, chunk_size=2, shard=0, num_shards=2) is None
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys
            from pathlib import Path
            from dmlm.data.shards import exclusive_lock
            with exclusive_lock(Path({str(merge_lock_path(prefix))!r}), "merge"):
                print("locked", flush=True)
                sys.stdin.readline()
        """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        # every part is there, but someone else is merging: this job leaves it to them
        assert build_store(_records(), _encode, prefix, META, chunk_size=2, shard=1, num_shards=2) is None
        assert not (tmp_path / "s.json").exists() and len(list(tmp_path.glob("s.part*.npz"))) == 4
    finally:
        holder.communicate("\n", timeout=30)
    assert not merge_lock_path(prefix).exists()
    store = build_store(_records(), lambda c: pytest.fail("re-encoded"), prefix, META, chunk_size=2, shard=1,
                        num_shards=2)
    assert store is not None and np.asarray(store.tokens).tolist() == sum(_encode(_records()), [])


def test_lock_is_exclusive_within_a_process_too(tmp_path):
    lock = tmp_path / "x.lock"
    with exclusive_lock(lock, "x"):
        with pytest.raises(StoreBusy, match="x: another process"):
            with exclusive_lock(lock, "x"):
                pass
    assert not lock.exists()
    with exclusive_lock(lock, "x"):  # released: free again
        pass
