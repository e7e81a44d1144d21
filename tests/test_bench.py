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
    ("bench.train_speed", ["train_speed_demo.json", "train_precision.json"]),
    ("bench.memory", ["memory_train.json", "memory_tokenize.json", "scaling.json"]),
    ("bench.vocoder_speed", ["vocoder_speed.json"]),
    ("bench.under_load", [f"under_load_{s}.json" for s in ("synthesis", "tokenize", "train", "evaluate")]),
    ("bench.stage_scaling", ["stage_scaling.json"]),
    ("bench.pretrained_cut", ["pretrained_cut.json"]),
    ("bench.unit_bpe", ["unit_bpe.json"]),
    ("bench.start_check", ["start_check.json"]),
    ("bench.pretrained_speed", ["pretrained_speed.json"]),
    ("bench.distributed_speed", ["distributed_speed.json"]),
    ("bench.codebook_languages", ["codebook_languages.json"]),
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


def test_keep_first_and_last_keeps_the_last_layer_and_still_runs():
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from bench.pretrained_cut import keep_first_and_last

    cfg = LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=5,
                      num_attention_heads=2, num_key_value_heads=2)
    model = LlamaForCausalLM(cfg).eval()
    first, last = model.model.layers[0], model.model.layers[4]
    cut = keep_first_and_last(model, 3)
    assert len(cut.model.layers) == 3 and cut.config.num_hidden_layers == 3
    assert cut.model.layers[0] is first and cut.model.layers[2] is last
    assert [b.self_attn.layer_idx for b in cut.model.layers] == [0, 1, 2]
    ids = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        out = cut.generate(ids, max_new_tokens=3, do_sample=False)  # the KV cache works on the new stack
    assert out.shape == (1, 6)
