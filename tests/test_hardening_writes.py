"""Crash windows of every multi-file write besides the checkpoint (issue 32): a codebook, a vocoder, a
study's rows, a prepared corpus. Each is killed (SIGKILL, `DMLM_FAULT`, as tests/test_hardening.py does
for checkpoints) inside its write, and a reader then finds the previous complete output, or a clear
refusal, never a mix; the next writer finishes or redoes the work.

`write:NAME` is the fault point of every `atomic_file` write (the new file complete, not yet renamed).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from dmlm.util.errors import UserError


def _killed_in_fork(fault: str, fn: Callable[[], object]) -> None:
    """Run `fn` in a forked child that SIGKILLs itself at `fault`; assert it was killed there."""
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            os.environ["DMLM_FAULT"] = fault
            fn()
        finally:
            os._exit(99)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, f"not killed at {fault}: {status}"


# -- a codebook ----------------------------------------------------------------------------------

def test_a_codebook_killed_mid_save_leaves_the_previous_one(corpus, tmp_path, capsys):
    from dmlm.cli import main
    from dmlm.tokenizers.speech import Codebook

    out = tmp_path / "cb.safetensors"
    fit = ["codebook", "fit", str(corpus.tiny), "-o", str(out), "backend=mel", "pooling=1"]
    assert main([*fit, "k=4"]) == 0
    before = Codebook.load(out).fingerprint
    _killed_in_fork("write:cb.safetensors", lambda: main([*fit, "k=6"]))
    assert Codebook.load(out).fingerprint == before and Codebook.load(out).k == 4  # the previous, whole
    assert main([*fit, "k=6"]) == 0 and Codebook.load(out).k == 6  # the next run writes it
    capsys.readouterr()


# -- a vocoder -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small_vocoder(corpus, tmp_path_factory) -> Path:
    from dmlm.vocoder import VocoderConfig, train_vocoder

    cfg = VocoderConfig(dim=32, unit_layers=2, frame_dim=32, frame_layers=1, duration_dim=16, n_fft=256,
                        win_length=256, gl_iters=4, dropout=0.0, target="linear", speaker_conditioning=False,
                        matching_clips=2)
    return train_vocoder(corpus.tiny, None, corpus.codebook, cfg, tmp_path_factory.mktemp("voc") / "vocoder",
                         steps=2, progress=False)


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def _save_changed(folder: Path) -> Callable[[], object]:
    """A save of the vocoder in `folder` with every weight changed (what a later training save writes)."""
    def save():
        from dmlm.vocoder import Vocoder

        voc = Vocoder.load(folder)
        with torch.no_grad():
            for p in voc.net.parameters():
                p.add_(1.0)
        voc.save(folder)
    return save


@pytest.mark.parametrize("stage", ["vocoder-weights", "vocoder-commit", "vocoder-swap"])
def test_a_vocoder_killed_at_each_save_stage_is_never_read_half_saved(small_vocoder, codebook, tmp_path, stage):
    from dmlm.vocoder import NoVocoder, Vocoder, VocoderFiles

    folder = tmp_path / "vocoder"
    shutil.copytree(small_vocoder, folder)
    old = _weights(folder)
    _killed_in_fork(stage, _save_changed(folder))
    if stage == "vocoder-swap":  # between the renames: a reader says so; the next writer finishes it
        with pytest.raises(NoVocoder, match="save was interrupted.*vocoder match"):
            Vocoder.load(folder, codebook=codebook)
        assert VocoderFiles(folder).finish_interrupted_save() == "new"
        new = _weights(folder)
        assert all(torch.equal(new[k], old[k] + 1.0) for k in old)
    else:  # the previous vocoder, whole
        voc = Vocoder.load(folder, codebook=codebook)
        assert all(torch.equal(voc.net.state_dict()[k], old[k]) for k in old) and voc.matching is not None
    assert not (tmp_path / ".vocoder.old").exists()
    Vocoder.load(folder, codebook=codebook)


def test_a_checkpoint_resaved_while_its_vocoder_was_mid_swap_keeps_the_vocoder(trained, small_vocoder, codebook,
                                                                                tmp_path):
    from dmlm.modeling import load_checkpoint, save_checkpoint
    from dmlm.vocoder import Vocoder

    model = tmp_path / "model"
    shutil.copytree(trained, model)
    shutil.copytree(small_vocoder, model / "vocoder")
    _killed_in_fork("vocoder-swap", _save_changed(model / "vocoder"))
    assert not (model / "vocoder").exists() and (model / ".vocoder.old").is_dir()
    ck = load_checkpoint(model)
    codebooks = {m: ck.files.codebook_path(m) for m in ("speech",)}
    staged = tmp_path / "codebooks"  # the save replaces the folder the codebook files are in
    staged.mkdir()
    codebooks = {m: Path(shutil.copy2(p, staged / p.name)) for m, p in codebooks.items()}
    save_checkpoint(model, ck.model, ck.tokenizer, ck.vocab, ck.meta, codebooks)
    voc = Vocoder.load(model / "vocoder", codebook=codebook)  # before: lost with the old folder
    assert all(torch.equal(voc.net.state_dict()[k], w + 1.0) for k, w in _weights(small_vocoder).items())


def test_a_new_matching_size_killed_mid_update_never_pairs_an_old_set_with_the_new_size(small_vocoder, tmp_path):
    from dmlm.vocoder import VocoderFiles

    folder = tmp_path / "vocoder"
    shutil.copytree(small_vocoder, folder)
    files = VocoderFiles(folder)
    assert files.matching_path.is_file() and files.config().matching_clips == 2
    _killed_in_fork("vocoder-update", lambda: files.update(matching_clips=3))
    # either the old size with its set, or no set at all: never a set of 2 clips under a config that says 3
    assert files.config().matching_clips == 2 or not files.matching_path.is_file()
    assert not files.matching_path.is_file()  # the set goes first


# -- a study's rows ------------------------------------------------------------------------------

def test_a_study_killed_while_writing_its_rows_keeps_the_finished_ones(tmp_path, monkeypatch, capsys):
    import dmlm.recipes.study as study
    from dmlm.recipes.study import load_study_config, run_study

    calls: list[tuple[str, int]] = []

    def fake_run(cfg, arm, seed, shared, stage):  # the stages are the demo's and tested there
        calls.append((arm.name, seed))
        return {"arm": arm.name, "seed": seed, "metrics": {"asr.wer": 0.5}}

    monkeypatch.setattr(study, "run_arm_seed", fake_run)
    args = ["name=x", "arms=[{name: a}, {name: b, overrides: [run.train.lr=0.002]}]", f"out={tmp_path / 'x'}"]
    run_study(load_study_config(None, [*args, "seeds=[0]"]), summarize=False)
    rows = tmp_path / "x" / "runs.jsonl"
    first = rows.read_text()
    assert [(r["arm"], r["seed"]) for r in map(json.loads, first.splitlines())] == [("a", 0), ("b", 0)]
    _killed_in_fork("write:runs.jsonl", lambda: run_study(load_study_config(None, [*args, "seeds=[0,1]"]),
                                                          summarize=False))
    assert rows.read_text() == first  # the rows before, whole (the killed write's temp file is no row)
    calls.clear()
    run_study(load_study_config(None, [*args, "seeds=[0,1]"]), summarize=False)
    assert calls == [("a", 1), ("b", 1)]  # only the runs not recorded
    # a damaged line (a disk that lost a write, a hand edit): its file and line, not a traceback
    rows.write_text(rows.read_text() + '{"arm": "a", "se\n')
    with pytest.raises(UserError, match=r"runs.jsonl:5: not a JSON object per line"):
        run_study(load_study_config(None, [*args, "seeds=[0,1]"]), summarize=False)
    capsys.readouterr()


def test_a_study_arm_with_a_bad_override_is_refused_before_any_stage_naming_the_arm(tmp_path, monkeypatch):
    import dmlm.recipes.study as study
    from dmlm.recipes.study import load_study_config, run_study
    from dmlm.util.config import ConfigError

    monkeypatch.setattr(study, "run_arm_seed", lambda *a: pytest.fail("a stage ran"))
    for override, match in [("run.train.lrr=1", r"arm bad: unknown config key 'run.train.lrr'"),
                            ("run.train.lr=fast", r"arm bad: run.train.lr: expected float, got 'fast'"),
                            ("run.train.steps=-3", r"arm bad: run.train.steps: must be > 0, got -3"),
                            ("prepare.n_train=-3", r"arm bad: prepare.n_train: must be >= 1"),
                            ("run.train.precision=fp8", r"arm bad: run.train.precision")]:
        args = ["name=x", f"arms=[{{name: ok}}, {{name: bad, overrides: [{override}]}}]", f"out={tmp_path / 'x'}"]
        with pytest.raises(UserError, match=match) as e:
            run_study(load_study_config(None, args))
        assert isinstance(e.value, ConfigError) or "prepare" in override
    assert not (tmp_path / "x").exists()  # refused before anything was written


# -- a prepared corpus ---------------------------------------------------------------------------

def test_a_corpus_killed_mid_prepare_is_redone_not_read_as_complete(tmp_path):
    from dmlm.data.manifest import read_manifest
    from dmlm.data.prepare import PrepareConfig, prepare

    cfg = PrepareConfig(corpus="digits", n_train=6, n_dev=2, n_test=2)
    straight = prepare(cfg, tmp_path / "straight")
    for fault in ("write:train.jsonl", "write:dev.jsonl", "write:test.jsonl"):
        out = tmp_path / fault.split(":")[1]
        _killed_in_fork(fault, lambda out=out: prepare(cfg, out))
        assert not (out / "test.jsonl").exists()  # the split set is incomplete: a re-run redoes it
        again = prepare(cfg, out)
        assert {k: [r.to_json() for r in read_manifest(p)] for k, p in again.items()} == \
               {k: [r.to_json() for r in read_manifest(p)] for k, p in straight.items()}


def test_config_file_errors_name_the_file(tmp_path):
    from dmlm.training.config import RunConfig
    from dmlm.util.config import ConfigError, load_config

    (tmp_path / "base.yaml").write_text("train: {stepz: 3}\n")
    (tmp_path / "top.yaml").write_text("extends: base.yaml\ntrain: {steps: many}\n")
    with pytest.raises(ConfigError, match=r"base.yaml: unknown config key 'train.stepz'"):
        load_config(tmp_path / "top.yaml", [], RunConfig)
    (tmp_path / "base.yaml").write_text("train: {steps: 3}\n")
    with pytest.raises(ConfigError, match=r"top.yaml: train.steps: expected int, got 'many'"):
        load_config(tmp_path / "top.yaml", [], RunConfig)
