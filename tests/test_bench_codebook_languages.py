"""bench/codebook_languages.py on frames whose languages differ by construction (no Whisper, no synthesis)."""

from __future__ import annotations

import json

import numpy as np
import pytest


def _frames(centers: np.ndarray, clips: int, rng: np.random.Generator) -> list[np.ndarray]:
    """`clips` clips of 40 frames, each frame a center of `centers` plus a little noise."""
    return [centers[rng.integers(len(centers), size=40)] + 0.05 * rng.standard_normal((40, centers.shape[1]))
            for _ in range(clips)]


def test_an_english_only_codebook_loses_the_frames_of_a_language_it_never_saw():
    from bench.codebook_languages import compare, fit_sets
    from dmlm.tokenizers.speech import CodebookSettings

    rng = np.random.default_rng(0)
    english, other = rng.standard_normal((8, 6)), rng.standard_normal((8, 6)) + 6.0  # disjoint sound inventories
    fit = {"en": _frames(english, 10, rng), "de": _frames(other, 10, rng)}
    sets = fit_sets(fit)
    assert len(sets["english"]) == len(sets["pooled"]) == 400  # the same frames for both fits
    res = compare(fit, {"en": _frames(english, 3, rng), "de": _frames(other, 3, rng)},
                  CodebookSettings(backend="mel", model=None, k=16), frame_rate=50.0)
    row = {(r["codebook"], r["lang"]): r for r in res["rows"]}
    assert res["fit_frames"] == 400 and len(row) == 4
    # English-only: German frames all fall to the few centroids nearest their cloud
    assert row["english", "de"]["relative_distortion"] > 10 * row["pooled", "de"]["relative_distortion"]
    assert row["english", "de"]["codes_used"] < row["pooled", "de"]["codes_used"]
    assert row["pooled", "de"]["relative_distortion"] < 0.05 and row["english", "en"]["relative_distortion"] < 0.05
    assert all(1.0 <= r["perplexity"] <= 16 and 0 < r["codes_used"] <= 1 for r in res["rows"])


class _FakeFeatures:
    """50 frames a second: each frame the first 4 samples of its 320 (no Whisper)."""

    frame_rate = 50.0

    def __call__(self, wavs):
        return [w[: len(w) // 320 * 320].reshape(-1, 320)[:, :4].astype(np.float32) for w in wavs]


def _manifest(tmp_path, per_lang: int):
    from dmlm.data.manifest import Record, write_manifest
    from dmlm.util.audio import SAMPLE_RATE, write_wav

    rng = np.random.default_rng(1)
    records = []
    for lang, offset in (("en", 0.0), ("es", 0.5)):
        for i in range(per_lang):
            rel = f"wav/{lang}{i}.wav"
            write_wav(tmp_path / rel, (offset + 0.1 * rng.standard_normal(SAMPLE_RATE)).astype(np.float32))
            records.append(Record(id=f"{lang}{i}", lang=lang, audio=rel, text="x"))
    # a held-out-voice clip: never a fit or eval clip
    write_wav(tmp_path / "wav/hv.wav", np.zeros(SAMPLE_RATE, np.float32))
    records.insert(0, Record(id="hv", lang="en", audio="wav/hv.wav", text="x", custom={"heldout_voice": True}))
    path = tmp_path / "train.jsonl"
    write_manifest(path, records)
    return path


def test_the_bench_reads_a_manifest_and_writes_its_result(tmp_path, monkeypatch):
    import bench.codebook_languages as cl
    import bench.common
    import dmlm.tokenizers.features as features
    from dmlm.util.errors import UserError

    monkeypatch.setattr(bench.common, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(features, "build_features", lambda *a, **kw: _FakeFeatures())
    path = _manifest(tmp_path, 4)
    assert [r.id for r in cl.clips_by_lang(path, ("en", "es"), 4)["en"]] == ["en0", "en1", "en2", "en3"]
    out = cl.main(["--manifest", str(path), "--langs", "en,es", "--fit-clips", "3", "--eval-clips", "1", "--k", "4"])
    res = json.loads((tmp_path / "results" / "codebook_languages.json").read_text())
    assert res["dmlm"] == out["dmlm"] == next(r["relative_distortion"] for r in res["rows"]
                                              if (r["codebook"], r["lang"]) == ("english", "es"))
    assert res["baseline"] > 0 and res["ratio"] == pytest.approx(res["dmlm"] / res["baseline"])
    assert {(r["codebook"], r["lang"], r["frames"]) for r in res["rows"]} == {
        (c, lg, 25) for c in ("english", "pooled") for lg in ("en", "es")}  # one 1-second eval clip each, 25 Hz
    assert res["fit_frames"] == 74  # three 1-second English clips at 25 Hz, rounded down to a share per language
    with pytest.raises(UserError, match=r"5 clips per language needed .*'es': 4"):
        cl.main(["--manifest", str(path), "--langs", "en,es", "--fit-clips", "4", "--eval-clips", "1", "--k", "4"])
