"""Crash consistency of training: kill -9 at every stage of a save, a full disk, damaged checkpoints, one writer.

The kill tests SIGKILL real `dmlm train` runs (`DMLM_FAULT=STAGE@STEP` makes the process kill
itself at that point of a save), resume them, and compare the final weights, optimizer state and
logged losses bit for bit with a run that never stopped. Forked children share this process's
imports (a fresh interpreter costs ~10 s of imports per run); one case runs a separate interpreter.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dmlm.cli import main
from dmlm.modeling import CheckpointFiles, load_checkpoint
from dmlm.training.state import lock_path
from dmlm.training.train import train
from dmlm.util.config import dump_config
from dmlm.util.errors import OutputError, UserError

# saves at steps 2, 4 and 6; the kills hit the save of step 4
COMMON = ("train.steps=6", "train.batch_tokens=400", "train.save_every=2", "train.eval_every=3",
          "train.warmup_steps=2", "train.log_every=1")


@pytest.fixture(scope="module")
def straight(run_config, tmp_path_factory) -> Path:
    return train(run_config(tmp_path_factory.mktemp("straight") / "model", *COMMON))


def _config_file(cfg, tmp_path: Path) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(dump_config(cfg))
    return path


def _killed_in_fork(config: Path, fault: str, *flags: str) -> None:
    """`dmlm train CONFIG` in a forked child that SIGKILLs itself at `fault`."""
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 99
        try:
            os.environ["DMLM_FAULT"] = fault
            code = main(["train", str(config), *flags])
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, f"not killed at {fault}: {status}"


def _assert_same_run(a: Path, b: Path) -> None:
    def steps(out: Path) -> list[tuple]:
        rows = [json.loads(line) for line in Path(f"{out}.log.jsonl").read_text().splitlines()]
        return [(r["step"], r["loss"], r["lr"], r["grad_norm"], r["tokens"], r.get("dev_loss")) for r in rows
                if "loss" in r]

    assert [s[0] for s in steps(b)] == [1, 2, 3, 4, 5, 6]  # no step logged twice
    assert steps(a) == steps(b)
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    oa = torch.load(a / "training_state" / "optimizer.pt", weights_only=True)
    ob = torch.load(b / "training_state" / "optimizer.pt", weights_only=True)
    for i in oa["state"]:
        for k in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(oa["state"][i][k], ob["state"][i][k]), (i, k)


# stage of the save at step 4 -> the step a resume starts from
STAGES = {"model": 2, "between": 2, "state": 2, "commit": 2, "swap": 4}


@pytest.mark.parametrize("stage", STAGES)
def test_killed_at_each_save_stage_resumes_bitwise(stage, straight, run_config, tmp_path):
    out = tmp_path / "model"
    cfg = run_config(out, *COMMON)
    _killed_in_fork(_config_file(cfg, tmp_path), f"{stage}@4")
    if stage == "swap":  # killed between the renames: the complete new folder waits beside the old one
        assert not out.exists() and (tmp_path / ".model.old").is_dir() and (tmp_path / ".model.tmp").is_dir()
        with pytest.raises(UserError, match="save was interrupted"):
            load_checkpoint(out)  # a reader never moves folders; it says what happened
    else:  # the previous checkpoint, untouched and complete
        files = CheckpointFiles(out)
        files.verify(state=True)
        assert files.meta["step"] == 2
    resumed = train(cfg, resume=True)
    assert json.loads((resumed / "dmlm.json").read_text())["step"] == 6
    assert not (tmp_path / ".model.tmp").exists() and not (tmp_path / ".model.old").exists()
    _assert_same_run(straight, resumed)


def test_killed_dmlm_train_process_resumes_bitwise(straight, run_config, tmp_path):
    """The same through a separate `dmlm train` interpreter, killed inside the state write, resumed by another."""
    out = tmp_path / "model"
    config = _config_file(run_config(out, *COMMON), tmp_path)
    env = {**os.environ, "DMLM_FAULT": "state@4", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-c", "import sys, torch; torch.set_num_threads(1); from dmlm.cli import main; "
           "sys.exit(main(sys.argv[1:]))", "train", str(config)]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == -signal.SIGKILL, run.stderr[-2000:]
    assert CheckpointFiles(out).meta["step"] == 2
    env.pop("DMLM_FAULT")
    run = subprocess.run(cmd + ["--resume"], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "resuming from step 2" in run.stderr
    _assert_same_run(straight, out)


def test_a_full_disk_is_an_output_error_and_keeps_the_previous_checkpoint(straight, run_config, tmp_path, monkeypatch):
    import dmlm.training.state as train_mod

    out = tmp_path / "model"
    cfg = run_config(out, *COMMON)
    train(cfg, stop_at=2)
    weights = (out / "model.safetensors").read_bytes()

    def full(opt, path):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(train_mod, "save_optimizer_state", full)
    with pytest.raises(OutputError, match="no space left on the device"):
        train(cfg, resume=True)
    monkeypatch.undo()
    files = CheckpointFiles(out)
    files.verify(state=True)
    assert files.meta["step"] == 2 and (out / "model.safetensors").read_bytes() == weights
    assert not (tmp_path / ".model.tmp").exists()

    # safetensors reports a full disk as its own error type, not an OSError: still "no space"
    from safetensors import SafetensorError

    def full_st(*a, **k):
        raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, '
                              'message: "No space left on device" })')

    monkeypatch.setattr("transformers.modeling_utils.safe_save_file", full_st)
    with pytest.raises(OutputError, match="no space left on the device"):
        train(cfg, resume=True)
    monkeypatch.undo()
    assert CheckpointFiles(out).meta["step"] == 2
    assert main(["train", str(_config_file(cfg, tmp_path)), "--resume"]) == 0  # space again: it finishes exactly
    _assert_same_run(straight, out)


def test_damaged_or_mixed_checkpoints_are_refused_naming_the_file(trained, run_config, tmp_path):
    import shutil

    out = tmp_path / "model"
    cfg = run_config(out, *COMMON)
    train(cfg, stop_at=2)
    # a flipped byte in the weights: load and resume refuse, naming the file
    ck = tmp_path / "flipped"
    shutil.copytree(out, ck)
    data = bytearray((ck / "model.safetensors").read_bytes())
    data[len(data) // 2] ^= 0x01
    (ck / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(UserError, match=r"flipped/model.safetensors: checksum mismatch"):
        load_checkpoint(ck)
    # the same flip in the optimizer state: plain loading reads no state, resume refuses
    state = out / "training_state" / "optimizer.pt"
    good = state.read_bytes()
    state.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))
    load_checkpoint(out)
    with pytest.raises(UserError, match=r"training_state/optimizer.pt: checksum mismatch"):
        train(cfg, resume=True)
    state.write_bytes(good)
    # parts of two saves (an older dmlm's layout, without checksums): the steps disagree
    legacy = tmp_path / "legacy" / "model"
    legacy.parent.mkdir()
    shutil.copytree(out, legacy)
    (legacy / "checksums.json").unlink()
    legacy_state = legacy.with_name("model.state")
    shutil.move(legacy / "training_state", legacy_state)
    progress = json.loads((legacy_state / "progress.json").read_text())
    (legacy_state / "progress.json").write_text(json.dumps({**progress, "step": 1}))
    with pytest.raises(UserError, match=r"disagree on the step .*model.state/progress.json: 1"):
        train(run_config(legacy, *COMMON), resume=True)
    # a truncated weights file without checksums: one line naming the file, not a traceback
    (legacy / "model.safetensors").write_bytes((legacy / "model.safetensors").read_bytes()[:1000])
    with pytest.raises(UserError, match=r"legacy/model: cannot read the model weights"):
        load_checkpoint(legacy)
    assert main(["transcribe", str(legacy), str(tmp_path / "none.wav")]) == 2


def test_an_older_runs_state_folder_still_resumes(straight, run_config, tmp_path):
    """`OUT.state/` beside a checkpoint without checksums (as dmlm wrote before): resumed, then superseded."""
    import shutil

    out = tmp_path / "model"
    cfg = run_config(out, *COMMON)
    train(cfg, stop_at=2)
    (out / "checksums.json").unlink()
    shutil.move(out / "training_state", tmp_path / "model.state")
    with pytest.raises(UserError, match="--resume to continue it"):
        train(cfg)
    train(cfg, resume=True)
    assert not (tmp_path / "model.state").exists() and (out / "training_state" / "progress.json").is_file()
    _assert_same_run(straight, out)


def test_a_second_writer_is_refused_naming_the_holder_and_a_stale_lock_is_taken_over(run_config, tmp_path, capsys):
    from dmlm.data.shards import exclusive_lock

    out = tmp_path / "model"
    cfg = run_config(out, "train.steps=2", "train.batch_tokens=400", "train.save_every=100", "train.eval_every=100")
    with exclusive_lock(lock_path(out), "another training"):  # as a live `dmlm train` holds it
        with pytest.raises(UserError, match=rf"another process is at it \(pid {os.getpid()} "):
            train(cfg)
        assert main(["train", str(_config_file(cfg, tmp_path))]) == 2
        assert f"pid {os.getpid()}" in capsys.readouterr().err
    assert not out.exists()
    # a lock file left by a killed run (its pid is dead, so is its flock): taken over
    lock_path(out).write_text("pid 999999999 on elsewhere since 2020-01-01 00:00:00")
    assert train(cfg) == out and not lock_path(out).exists()


def test_a_full_disk_in_codebook_fit_and_wav_writes_is_one_line_saying_no_space(corpus, tmp_path, monkeypatch, capsys):
    import numpy as np
    from safetensors import SafetensorError

    from dmlm.util.audio import write_wav

    def full_st(*a, **k):
        raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, '
                              'message: "No space left on device" })')

    monkeypatch.setattr("safetensors.numpy.save_file", full_st)
    monkeypatch.setattr("dmlm.tokenizers.kmeans.save_file", full_st)
    out = tmp_path / "cb.safetensors"
    assert main(["codebook", "fit", str(corpus.tiny), "-o", str(out), "backend=mel", "k=4", "pooling=1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("dmlm codebook: error: cannot write") and "no space left on the device" in err
    assert not out.exists() and not list(tmp_path.glob(".cb.*"))

    def full_sf(*a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("soundfile.write", full_sf)
    with pytest.raises(OutputError, match="x.wav: no space left on the device"):
        write_wav(tmp_path / "x.wav", np.zeros(1600, np.float32))
