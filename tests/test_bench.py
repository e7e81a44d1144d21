"""Every benchmark runs in --quick mode and writes its JSON result (no timing assertions:
timings belong to the benchmarks, not the tests)."""

from __future__ import annotations

import importlib
import json

import pytest

KEYS = {"metric", "unit", "dmlm", "baseline", "ratio", "higher_is_better", "machine"}

# (module, result files it must write)
BENCHES = [
    ("bench.tokenize_speed", ["tokenize_speed.json"]),
    ("bench.decode_speed", ["decode_speed.json"]),
    ("bench.asr_rtf", ["asr_rtf.json"]),
    ("bench.train_speed", ["train_speed_demo.json"]),
    ("bench.memory", ["memory_train.json", "memory_tokenize.json", "scaling.json"]),
    ("bench.vocoder_speed", ["vocoder_speed.json"]),
    ("bench.under_load", [f"under_load_{s}.json" for s in ("synthesis", "tokenize", "train", "evaluate")]),
    ("bench.stage_scaling", ["stage_scaling.json"]),
    ("bench.pretrained_cut", ["pretrained_cut.json"]),
]


@pytest.mark.parametrize("module,files", BENCHES, ids=[m for m, _ in BENCHES])
def test_bench_quick_writes_its_result(module, files, tmp_path, monkeypatch):
    import bench.common

    monkeypatch.setattr(bench.common, "RESULTS", tmp_path)
    monkeypatch.setenv("DMLM_BENCH_RESULTS", str(tmp_path))  # for benchmarks that measure in subprocesses
    argv = ["--quick"]
    if module == "bench.asr_rtf":
        argv += ["--model", str(tmp_path / "no-such-model")]  # the untrained demo-shaped path, not a local demo
    if module == "bench.vocoder_speed":  # an untrained vocoder on random units, not a local run's files
        argv += ["--vocoder", str(tmp_path / "no-such-vocoder"), "--units", str(tmp_path / "no-such-units")]
    importlib.import_module(module).main(argv)
    for name in files:
        res = json.loads((tmp_path / name).read_text())
        if name == "scaling.json":
            assert res  # rows of (size, seconds)
            continue
        if name == "stage_scaling.json":  # a line fitted to every stage's points
            assert set(res["stages"]) == {"prepare", "tokenize", "train"}
            assert all(len(st["rows"]) == 3 and st["fit"]["predicted_largest_s"] for st in res["stages"].values())
            assert (tmp_path / "stage_scaling.png").stat().st_size > 1000
        assert KEYS <= res.keys(), name
        assert res["dmlm"] > 0 and res["baseline"] > 0
        assert res["ratio"] == pytest.approx(res["dmlm"] / res["baseline"])


def test_stage_scaling_fit_recovers_a_line_and_flags_faster_growth():
    from bench.stage_scaling import fit_line

    f = fit_line([1000, 2000, 4000, 8000], [30 + 0.1 * n for n in (1000, 2000, 4000, 8000)])
    assert f["fixed_s"] == pytest.approx(30) and f["per_unit_s"] == pytest.approx(0.1)
    assert f["linearity"] == pytest.approx(1.0)
    quadratic = fit_line([1, 2, 4, 8], [n * n for n in (1, 2, 4, 8)])
    assert quadratic["linearity"] > 1.5  # 64 s measured where the line through the others predicts ~36
