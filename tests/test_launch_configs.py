"""The GPU recipes can be trusted before anyone pays for a GPU: every accelerate launcher config (and every
`*gpu*` run config) loads and validates, and `dmlm train CONFIG --dry-run --launcher FILE` builds the whole run
on this CPU and prints its world size, batch, tokens per step, memory per rank and FLOPs per step."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from dmlm.training.launch import Launcher
from dmlm.util.config import dump_config
from dmlm.util.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
LAUNCHERS = sorted((ROOT / "configs" / "accelerate").glob("*.yaml"))
EXPECTED = {"ddp_cpu.yaml": ("MULTI_GPU", 2, "ddp", False), "ddp_gpu.yaml": ("MULTI_GPU", 2, "ddp", True),
            "fsdp.yaml": ("FSDP", 2, "fsdp", True)}


def test_every_launcher_config_is_known_and_valid():
    assert {p.name for p in LAUNCHERS} == set(EXPECTED)  # a new file needs its line here (and a dry run below)
    for path in LAUNCHERS:
        lc = Launcher.load(path)
        assert (lc.distributed_type, lc.processes, lc.parallel, lc.gpu) == EXPECTED[path.name], path.name


def test_every_gpu_study_config_loads_and_validates_every_arm_and_seed():
    from dmlm.recipes.study import load_study_config

    paths = sorted((ROOT / "configs").rglob("*-gpu.yaml"))
    assert paths, "no -gpu config found"
    for path in paths:
        study = load_study_config(str(path), [])
        for arm in study.arms:
            for seed in study.seeds:
                cfg = study.arm_config(arm, seed)  # validates the whole run (data, model, train)
                assert cfg.run.train.parallel in ("auto", "ddp", "fsdp"), (path.name, arm.name)


@pytest.mark.parametrize("change, message", [
    ({"distributed_type": "DEEPSPEED"}, "DEEPSPEED is not a launch"),
    ({"bogus_key": 1}, "unknown keys"),
    ({"num_processes": 3, "num_machines": 2}, "multiple of num_machines"),
    ({"mixed_precision": "fp16"}, "not fp16"),
    ({"fsdp_config": {"fsdp_version": 1}}, "fsdp_version must be 2"),
])
def test_a_bad_launcher_config_is_refused_by_field(tmp_path, change, message):
    data = {**yaml.safe_load((ROOT / "configs" / "accelerate" / "fsdp.yaml").read_text()), **change}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(UserError, match=message):
        Launcher.load(path)


@pytest.mark.parametrize("launcher", [p.name for p in LAUNCHERS])
def test_dry_run_builds_the_run_and_prints_its_step(run_config, tmp_path, capsys, launcher):
    from dmlm.cli import main

    cfg = run_config(tmp_path / "model", "train.batch_tokens=400", "train.grad_accum=3")
    (tmp_path / "run.yaml").write_text(dump_config(cfg))
    assert main(["train", str(tmp_path / "run.yaml"), "--dry-run", "--launcher",
                 str(ROOT / "configs" / "accelerate" / launcher)]) == 0
    out = capsys.readouterr().out
    kind = EXPECTED[launcher][2]
    assert f"world size: 2 process(es), {kind}" in out
    assert "tokens per step: 2400 " in out  # 400 tokens x grad_accum 3 x 2 ranks
    assert "memory per rank:" in out and "FLOPs per step:" in out
    assert not (tmp_path / "model").exists() and not (tmp_path / "model.lock").exists()  # nothing written


def test_fsdp_divides_the_state_per_rank_and_flops_follow_the_hand_count(run_config, tmp_path):
    from dmlm.modeling import build_model
    from dmlm.training.dry_run import plan
    from dmlm.training.setup import setup

    cfg = run_config(tmp_path / "model", "train.batch_tokens=400", "train.precision=fp32")
    S = setup(cfg)
    model = build_model(cfg.model, S.vocab, seed=0, text_rows=S.text.source_ids)
    names = {n for n, _ in model.named_parameters()}
    ddp, fsdp = plan(cfg, model, names, 2, "ddp", 10.0), plan(cfg, model, names, 2, "fsdp", 10.0)
    assert fsdp.memory_per_rank < ddp.memory_per_rank
    h, L, V = 64, 2, model.get_input_embeddings().num_embeddings
    per_layer = 4 * h * h + 3 * h * model.config.intermediate_size  # q, k, v, o (no grouping) and the MLP
    matmul = L * per_layer + V * h  # the tied output layer is a matmul too
    assert ddp.flops_per_step == pytest.approx(800 * (6 * matmul + 6 * L * h * 10.0))
