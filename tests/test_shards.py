"""Token stores: chunked build, resume after an interruption, sharding and merging."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dmlm.data.manifest import Record
from dmlm.data.shards import TokenStore, build_store

META = {"fingerprint": "aaaa", "modality": "speech"}


def _records(n: int = 7) -> list[Record]:
    return [Record(id=f"r{i}") for i in range(n)]


def _encode(chunk: list[Record]) -> list[list[int]]:
    # deterministic, variable length, including an empty sequence (r3)
    return [[int(r.id[1:]) * 10 + j for j in range(int(r.id[1:]) % 4)] for r in chunk]


def _as_tuple(store: TokenStore):
    return store.ids, np.asarray(store.tokens).tolist(), store.offsets.tolist(), store.meta


def test_store_contents(tmp_path):
    recs = _records()
    store = build_store(recs, _encode, tmp_path / "s", META, chunk_size=3)
    assert len(store) == 7 and store.ids == [r.id for r in recs]
    for i, r in enumerate(recs):
        assert store[i].tolist() == _encode([r])[0] == store.get(r.id).tolist()
    assert store.lengths().tolist() == [0, 1, 2, 3, 0, 1, 2]
    assert store.fingerprint == "aaaa" and store.meta["modality"] == "speech"
    assert not list(tmp_path.glob("*.part*"))  # parts are merged away
    with pytest.raises(ValueError, match="no tokens for record 'r99'"):
        store.get("r99")
    # a finished store is reopened, not rebuilt
    assert _as_tuple(build_store(recs, lambda c: pytest.fail("re-encoded"), tmp_path / "s", META, chunk_size=3)) == \
        _as_tuple(store)


def test_resume_after_an_interruption_equals_an_uninterrupted_build(tmp_path):
    recs = _records()
    calls: list[list[str]] = []

    def flaky(chunk):
        if calls:
            raise KeyboardInterrupt  # killed while encoding the second chunk
        calls.append([r.id for r in chunk])
        return _encode(chunk)

    with pytest.raises(KeyboardInterrupt):
        build_store(recs, flaky, tmp_path / "s", META, chunk_size=3)
    assert not (tmp_path / "s.json").exists()  # no store that looks complete
    assert len(list(tmp_path.glob("s.part*.npz"))) == 1

    redone: list[list[str]] = []

    def counting(chunk):
        redone.append([r.id for r in chunk])
        return _encode(chunk)

    resumed = build_store(recs, counting, tmp_path / "s", META, chunk_size=3)
    assert redone == [["r3", "r4", "r5"], ["r6"]]  # the finished chunk is not encoded again
    straight = build_store(recs, _encode, tmp_path / "t", META, chunk_size=3)
    a, b = _as_tuple(resumed), _as_tuple(straight)
    assert a == b
    assert (tmp_path / "s.bin").read_bytes() == (tmp_path / "t.bin").read_bytes()


def test_two_shards_then_merge(tmp_path):
    recs = _records()
    seen: dict[int, list[str]] = {0: [], 1: []}

    def enc(shard):
        def f(chunk):
            seen[shard] += [r.id for r in chunk]
            return _encode(chunk)
        return f

    assert build_store(recs, enc(0), tmp_path / "s", META, chunk_size=2, shard=0, num_shards=2) is None
    assert not (tmp_path / "s.json").exists()
    merged = build_store(recs, enc(1), tmp_path / "s", META, chunk_size=2, shard=1, num_shards=2)
    assert merged is not None
    assert seen == {0: ["r0", "r1", "r4", "r5"], 1: ["r2", "r3", "r6"]}  # chunks i, i+n, …
    assert _as_tuple(merged) == _as_tuple(build_store(recs, _encode, tmp_path / "t", META, chunk_size=2))


@pytest.mark.parametrize("shard,num", [(2, 2), (-1, 2), (0, 0)])
def test_out_of_range_shard_is_an_error(tmp_path, shard, num):
    with pytest.raises(ValueError, match="out of range"):
        build_store(_records(), _encode, tmp_path / "s", META, shard=shard, num_shards=num)


def test_store_of_another_codebook_is_refused(tmp_path):
    build_store(_records(), _encode, tmp_path / "s", META)
    with pytest.raises(ValueError, match="made with codebook aaaa, not bbbb"):
        build_store(_records(), _encode, tmp_path / "s", {**META, "fingerprint": "bbbb"})


def test_parts_of_another_codebook_are_refused_at_merge(tmp_path):
    recs = _records()
    build_store(recs, _encode, tmp_path / "s", META, chunk_size=2, shard=0, num_shards=2)
    with pytest.raises(ValueError, match="another codebook"):
        build_store(recs, _encode, tmp_path / "s", {**META, "fingerprint": "bbbb"}, chunk_size=2, shard=1,
                    num_shards=2)


def test_missing_store_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="dmlm tokenize"):
        TokenStore(tmp_path / "nothing")


def test_tokenized_corpus_store(corpus, codebook):
    store = TokenStore(corpus.units / "train")
    assert store.fingerprint == codebook.fingerprint
    assert store.meta["codebook"] == codebook.settings.reproducing()
    assert len(store) == 20 and store.tokens.dtype == np.int32
    assert json.loads((corpus.units / "train.json").read_text())["ids"] == store.ids
    wav = corpus.wavs(corpus.train)[5]
    assert store[5].tolist() == codebook.encode(wav)
