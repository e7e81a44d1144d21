"""Training details: padding accounting and refusing a resume that would change the batches."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dmlm.training.data_order import bucket_batches, padding_share
from dmlm.training.train import train


def test_bucketing_wastes_less_padding_than_random_batches():
    lengths = np.random.default_rng(0).integers(20, 200, size=2000)
    share = padding_share(lengths, batch_tokens=2000, seed=0)
    assert 0 <= share["bucketed"] < share["random"] < 1
    assert share["bucketed"] < 0.05  # sorted within chunks: near-equal lengths per batch


def test_bucket_batches_cover_every_example_once_within_budget():
    lengths = np.random.default_rng(1).integers(5, 300, size=500)
    batches = bucket_batches(lengths, 1000, seed=3, epoch=2)
    flat = sorted(i for b in batches for i in b)
    assert flat == list(range(500))
    assert all(len(b) * max(lengths[i] for i in b) <= 1000 for b in batches)
    assert batches == bucket_batches(lengths, 1000, seed=3, epoch=2)  # a pure function of (seed, epoch)
    assert batches != bucket_batches(lengths, 1000, seed=3, epoch=3)


def test_resume_with_another_world_size_is_refused(run_config, tmp_path):
    cfg = run_config(tmp_path / "model", "train.steps=4", "train.batch_tokens=400", "train.save_every=2",
                     "train.eval_every=100")
    train(cfg, stop_at=2)
    state = tmp_path / "model" / "training_state" / "progress.json"
    progress = json.loads(state.read_text())
    assert progress["world_size"] == 1 and progress["grad_accum"] == 1
    state.write_text(json.dumps({**progress, "world_size": 2}))  # as if 2 ranks had trained it
    (tmp_path / "model" / "checksums.json").unlink()  # (else the edit is refused as a damaged file)
    with pytest.raises(ValueError, match="2 process"):
        train(cfg, resume=True)


def test_padding_share_is_recorded_in_the_checkpoint(trained):
    info = json.loads((trained / "dmlm.json").read_text())
    share = info["model_summary"]["padding_share"]
    assert set(share) == {"bucketed", "random"} and share["bucketed"] <= share["random"]


def test_a_finished_run_is_recognized_before_setup(run_config, tmp_path, monkeypatch):
    import dmlm.training.train as T

    cfg = run_config(tmp_path / "model", "train.steps=2", "train.batch_tokens=400", "train.eval_every=100")
    out = train(cfg)
    weights = (out / "model.safetensors").read_bytes()

    def no_setup(cfg):
        raise AssertionError("setup ran for a finished run")

    monkeypatch.setattr(T, "setup", no_setup)
    assert train(cfg, resume=True) == out
    assert (out / "model.safetensors").read_bytes() == weights
    more = run_config(tmp_path / "model", "train.steps=3", "train.batch_tokens=400", "train.eval_every=100")
    with pytest.raises(AssertionError, match="setup ran"):  # another budget: the full resume path
        train(more, resume=True)


def _tb_steps(out) -> list[int]:
    """The steps of the run's TensorBoard loss curve as TensorBoard reads them (restarts purged)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from dmlm.training.runlog import RunLog

    events = EventAccumulator(str(RunLog.tb_path(out)))
    events.Reload()
    return [e.step for e in events.Scalars("train/loss")]


def test_a_resumed_run_cuts_its_tensorboard_events_back_to_the_resumed_step(run_config, tmp_path):
    """A run killed after logging steps past its last save trains them again: each step once in TensorBoard."""
    import shutil

    from dmlm.training.runlog import RunLog

    out = tmp_path / "model"
    cfg = run_config(out, "train.steps=6", "train.batch_tokens=400", "train.log_every=1", "train.eval_every=100")
    train(cfg, stop_at=2)
    shutil.copytree(out, tmp_path / "at_step_2")
    train(cfg, resume=True, stop_at=4)  # logs steps 3 and 4 ...
    shutil.rmtree(out)
    shutil.copytree(tmp_path / "at_step_2", out)  # ... but is "killed" before its save at step 4
    train(cfg, resume=True)
    assert [r["step"] for r in RunLog.rows(out) if "loss" in r] == [1, 2, 3, 4, 5, 6]
    assert _tb_steps(out) == [1, 2, 3, 4, 5, 6]
    train(run_config(out, "train.steps=2", "train.batch_tokens=400", "train.log_every=1", "train.eval_every=100"),
          overwrite=True)  # a fresh run starts both logs empty
    assert _tb_steps(out) == [1, 2]


def test_snapshots_keep_a_loadable_model_at_their_steps_and_count_examples(run_config, tmp_path):
    """train.snapshots=[2] keeps OUT.snapshots/step-2, a plain model folder whose weights are the model at step 2
    (a run stopped at step 2 has the same), and records the examples seen by then; a resumed run keeps it."""
    import torch

    from dmlm.modeling import load_checkpoint
    from dmlm.training.loop import snapshot_dir
    from dmlm.training.state import read_progress
    from dmlm.util.config import ConfigError

    out = tmp_path / "model"
    cfg = run_config(out, "train.steps=4", "train.snapshots=[2]", "train.eval_every=1000", "train.save_every=1000")
    train(cfg, stop_at=3)
    snap = snapshot_dir(out, 2)
    first = snap.stat().st_mtime_ns
    train(cfg, resume=True)
    assert snap.stat().st_mtime_ns == first  # written once
    ref = tmp_path / "ref"
    train(run_config(ref, "train.steps=4", "train.eval_every=1000", "train.save_every=1000"), stop_at=2)
    a, b = load_checkpoint(snap), load_checkpoint(ref)
    for (n, p), (_, q) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        assert torch.equal(p, q), n
    meta = a.meta
    assert meta["step"] == 2 and 0 < meta["examples"] < read_progress(out).examples
    assert not (snap / "training_state").exists()
    with pytest.raises(ConfigError, match="train.snapshots"):
        run_config(tmp_path / "x", "train.steps=4", "train.snapshots=[4]").validate()


def test_compiled_layers_train_save_and_resume_like_eager(run_config, tmp_path):
    """train.compile=true: every decoder layer compiled in place, parameter names unchanged (the checkpoint loads
    as a plain model), the loss close to eager's, and an exact resume."""
    from dmlm.modeling import load_checkpoint
    from dmlm.training.loop import compile_layers
    from dmlm.training.runlog import RunLog

    args = ("train.steps=4", "train.eval_every=1000", "train.save_every=2", "train.log_every=1")
    eager = train(run_config(tmp_path / "eager", *args))
    out = tmp_path / "compiled"
    cfg = run_config(out, *args, "train.compile=true")
    train(cfg, stop_at=2)
    train(cfg, resume=True)
    a, b = RunLog.rows(eager), RunLog.rows(out)
    assert [r["step"] for r in b if "loss" in r] == [1, 2, 3, 4]
    for x, y in zip([r["loss"] for r in a if "loss" in r], [r["loss"] for r in b if "loss" in r]):
        assert abs(x - y) < 1e-3 * max(1.0, abs(x))
    names = set(load_checkpoint(out).model.state_dict())
    assert names == set(load_checkpoint(eager).model.state_dict())
    model = load_checkpoint(eager).model
    assert compile_layers(model) == model.config.num_hidden_layers
