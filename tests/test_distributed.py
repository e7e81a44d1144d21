"""Distributed training is exact: 2 CPU processes (gloo, launched by torchrun) give the same
per-step losses and the same weights as one process that accumulates both ranks' micro-batches."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dmlm.util.config import dump_config


def _steps(out: Path) -> list[tuple]:
    rows = [json.loads(x) for x in Path(f"{out}.log.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"], r["tokens"]) for r in rows if "loss" in r]


@pytest.mark.parametrize("schedule", [(), ("train.stages=[{steps: 2, train: new_rows}, {train: all}]",
                                           "train.lr_new_rows=5")], ids=["plain", "staged"])
def test_two_processes_match_one_process(run_config, tmp_path, schedule):
    """`staged`: DDP fixes its gradient hooks when it wraps the model, so a stage boundary after wrapping must
    drop frozen gradients instead of turning them off (dmlm.training.trainable): still the same steps."""
    common = ("train.steps=4", "train.batch_tokens=400", "train.eval_every=100", "train.save_every=100",
              "train.warmup_steps=1", "train.loss=length_normalized", *schedule)
    # one process, 2 micro-batches per step == two ranks with 1 micro-batch each
    from dmlm.training.train import train

    single = train(run_config(tmp_path / "one" / "model", *common, "train.grad_accum=2"))

    cfg = run_config(tmp_path / "two" / "model", *common, "train.grad_accum=1")
    (tmp_path / "two.yaml").write_text(dump_config(cfg))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo", "MASTER_ADDR": "127.0.0.1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29611",
         "-m", "dmlm.cli", "train", str(tmp_path / "two.yaml")],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = Path(cfg.train.out)

    a, b = _steps(single), _steps(two)
    assert [s for s, _, _ in a] == [1, 2, 3, 4]
    assert [t for *_, t in a] == [t for *_, t in b]  # same global batches
    for (_, la, _), (_, lb, _) in zip(a, b):
        assert la == pytest.approx(lb, rel=1e-5, abs=1e-6)
    wa, wb = load_file(single / "model.safetensors"), load_file(two / "model.safetensors")
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=1e-5, msg=k)
