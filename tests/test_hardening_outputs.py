"""Hardening, second pass (issue 32): no user file is deleted, no run "succeeds" with garbage, a full
disk anywhere is one line, and a multi-file write never shows a reader a mix of two builds.

Each case failed before the fix: a folder of notes named as train.out was wiped by the first save,
`lr: 1e6` trained to NaN and saved it, a full disk left a traceback (and a temp file), a store
rebuilt over an older one could be read half-replaced.
"""

from __future__ import annotations

import errno
import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from dmlm.cli import main
from dmlm.training.train import train
from dmlm.util.config import ConfigError, dump_config
from dmlm.util.errors import OutputError, UserError

FAST = ("train.steps=2", "train.batch_tokens=400", "train.save_every=100", "train.eval_every=100",
        "train.warmup_steps=1")


def _enospc(*a, **k):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _config_file(cfg, tmp_path: Path) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(dump_config(cfg))
    return path


# -- 1. train.out: a save replaces only a checkpoint, an empty folder or nothing -----------------

def test_a_folder_that_is_not_a_checkpoint_is_refused_before_training_and_kept(run_config, tmp_path, capsys):
    notes = tmp_path / "d"
    (notes / "sub").mkdir(parents=True)
    (notes / "notes.txt").write_text("x")
    cfg = run_config(notes, *FAST)
    with pytest.raises(UserError, match=r"train.out=.*/d: this folder holds files that are not a dmlm checkpoint "
                                        r"\(notes.txt, sub"):
        train(cfg)
    with pytest.raises(UserError, match="not a dmlm checkpoint"):
        train(cfg, overwrite=True)  # --overwrite replaces a checkpoint, never someone's files
    assert main(["train", str(_config_file(cfg, tmp_path))]) == 2
    assert "not a dmlm checkpoint" in capsys.readouterr().err
    assert sorted(p.name for p in notes.iterdir()) == ["notes.txt", "sub"] and (notes / "notes.txt").read_text() == "x"
    assert not (tmp_path / "d.log.jsonl").exists()  # refused before anything started

    empty = tmp_path / "empty"
    empty.mkdir()
    assert train(run_config(empty, *FAST)) == empty and (empty / "dmlm.json").is_file()  # empty: fine


def test_a_file_a_symlink_a_root_and_a_long_name_as_train_out_are_refused_naming_them(run_config, tmp_path, capsys):
    a_file = tmp_path / "model"
    a_file.write_text("mine")
    with pytest.raises(UserError, match=r"train.out=.*/model: is a file, not a folder"):
        train(run_config(a_file, *FAST))
    assert a_file.read_text() == "mine" and not (tmp_path / ".model.old").exists()

    target = tmp_path / "elsewhere"
    target.mkdir()
    link = tmp_path / "link"
    link.symlink_to(target)
    with pytest.raises(UserError, match=rf"train.out=.*/link: is a symbolic link \(to {target}\).*train.out={target}"):
        train(run_config(link, *FAST))
    assert link.is_symlink()

    for root in ("/", "."):
        cfg = run_config(Path(root), *FAST)
        cfg.train.out = root
        with pytest.raises(UserError, match=r"names no folder of its own"):
            train(cfg)
    long = tmp_path / ("m" * 300)
    with pytest.raises(UserError, match=r"train.out: the folder name m+\.\.\. is 300 bytes; this file system allows 255"):
        train(run_config(long, *FAST))
    assert main(["train", str(_config_file(run_config(long, *FAST), tmp_path))]) == 2
    assert capsys.readouterr().err.count("\n") == 1  # one line, no traceback


def test_resume_and_overwrite_together_are_refused(run_config, tmp_path):
    with pytest.raises(UserError, match="pass one of them"):
        train(run_config(tmp_path / "model", *FAST), resume=True, overwrite=True)
    assert not (tmp_path / "model").exists()


# -- 5. non-finite loss: stop at once, never save NaN weights ------------------------------------

@pytest.mark.parametrize("lr", [".inf", "-.inf", ".nan", "0"])
def test_a_learning_rate_that_cannot_train_is_refused_by_key(run_config, tmp_path, lr):
    with pytest.raises(ConfigError, match=r"train.lr: must be"):
        train(run_config(tmp_path / "model", f"train.lr={lr}"))


def test_a_run_that_diverges_stops_naming_step_and_task_and_saves_no_nan(run_config, tmp_path, capsys):
    from dmlm.training.loop import NonFiniteLoss

    out = tmp_path / "model"
    cfg = run_config(out, "train.steps=20", "train.batch_tokens=400", "train.save_every=1", "train.eval_every=100",
                     "train.warmup_steps=0", "train.lr=1e6", "train.clip=1e9")
    with pytest.raises(NonFiniteLoss, match=r"step \d+: the loss is \S+ and the gradient norm \S+ \(tasks asr; "
                                            r"learning rate .*stopped before the update") as e:
        train(cfg)
    assert "nan" in str(e.value).split("(tasks")[0] or "inf" in str(e.value).split("(tasks")[0]
    step = int(str(e.value).split()[1].rstrip(":"))
    assert step <= 20
    if out.exists():  # the saves before the divergence hold finite weights, and none after it
        assert json.loads((out / "dmlm.json").read_text())["step"] < step
        assert all(torch.isfinite(t).all() for t in load_file(out / "model.safetensors").values())
    assert main(["train", str(_config_file(cfg, tmp_path)), "--overwrite"]) == 2
    assert "the loss is" in capsys.readouterr().err


def test_non_finite_weights_are_never_saved(run_config, tmp_path, monkeypatch):
    """Even when the loss check is passed (a NaN that appears in the update itself), the save refuses."""
    import dmlm.training.loop as loop

    out = tmp_path / "model"
    real_step = loop.train_step

    def poisoned(r):
        row = real_step(r)
        with torch.no_grad():
            next(r.model.parameters()).fill_(float("nan"))
        return row

    monkeypatch.setattr("dmlm.training.train.train_step", poisoned)
    with pytest.raises(loop.NonFiniteLoss, match=r"step 1: 1 weight tensor\(s\) hold inf or NaN"):
        train(run_config(out, "train.steps=2", "train.batch_tokens=400", "train.save_every=1", "train.eval_every=100"))
    assert not out.exists()


@pytest.mark.parametrize("override,key", [("train.seed=-1", "train.seed"), ("train.seed=4294967296", "train.seed"),
                                          ("data.weights=[1, .inf]", "data.weights"),
                                          ("data.weights=[1, .nan]", "data.weights"),
                                          ("train.clip=.inf", "train.clip"),
                                          ("train.lambdas=[1, .inf, 1]", "train.lambdas")])
def test_seeds_and_weights_that_cannot_train_are_refused_by_key(run_config, tmp_path, override, key):
    with pytest.raises(ConfigError, match=rf"^{key}: "):
        train(run_config(tmp_path / "model", override))


# -- 6. a full disk anywhere in training is one line --------------------------------------------

def test_a_full_disk_between_saves_is_one_line_and_the_save_survives(run_config, tmp_path, capsys):
    from torch.utils.tensorboard import SummaryWriter

    out = tmp_path / "model"
    cfg = run_config(out, "train.steps=4", "train.batch_tokens=400", "train.save_every=2", "train.eval_every=100")
    real = SummaryWriter.add_scalar

    def fills_at_step_3(self, tag, value, step=None, *a, **k):
        if step == 3:
            _enospc()
        return real(self, tag, value, step, *a, **k)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(SummaryWriter, "add_scalar", fills_at_step_3)
        with pytest.raises(OutputError, match=r"cannot write the run log .*model.log.jsonl .*no space left on the "
                                              r"device; the last save is intact"):
            train(cfg)
        assert main(["train", str(_config_file(cfg, tmp_path)), "--resume"]) == 2
    assert "no space left" in capsys.readouterr().err
    assert json.loads((out / "dmlm.json").read_text())["step"] == 2
    assert train(cfg, resume=True) == out and json.loads((out / "dmlm.json").read_text())["step"] == 4


def test_a_full_disk_at_start_is_one_line_naming_the_lock_file(run_config, tmp_path, monkeypatch):
    from dmlm.training.state import lock_path

    out = tmp_path / "model"
    monkeypatch.setattr(os, "pwrite", _enospc)
    with pytest.raises(OutputError, match=r"cannot write the lock file .*model.lock: no space left on the device"):
        train(run_config(out, *FAST))
    monkeypatch.undo()
    assert not lock_path(out).exists() and not out.exists()


# -- 6. tokenize: full disk, a manifest in the way, a manifest as the codebook, an empty one ------

def _small_manifest(corpus, path: Path, n: int) -> Path:
    from dmlm.data.manifest import Record, read_manifest, write_manifest

    recs = [Record(**{**r.__dict__, "audio": str(r.audio_path(corpus.train))}) for r in read_manifest(corpus.train)[:n]]
    write_manifest(path, recs)
    return path


def test_tokenize_on_a_full_disk_is_one_line_and_leaves_no_temp_file(corpus, tmp_path, monkeypatch, capsys):
    manifest = _small_manifest(corpus, tmp_path / "m.jsonl", 2)
    real = Path.write_text

    def full_for_plans(self, *a, **k):
        if ".plan.json." in self.name:
            real(self, "{")  # the file is created, then the disk fills
            _enospc()
        return real(self, *a, **k)

    monkeypatch.setattr(Path, "write_text", full_for_plans)
    assert main(["tokenize", str(corpus.codebook), str(manifest), "--out", str(tmp_path / "units")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "m.plan.json: no space left on the device" in err[0]
    assert not list((tmp_path / "units").glob(".*tmp*"))

    monkeypatch.setattr(Path, "write_text", real)
    monkeypatch.setattr(np, "savez", _enospc)  # the part files
    assert main(["tokenize", str(corpus.codebook), str(manifest), "--out", str(tmp_path / "units")]) == 2
    assert "m.part00000.npz: no space left on the device" in capsys.readouterr().err


def test_tokenize_refuses_to_write_over_its_manifest_an_empty_one_and_a_manifest_as_codebook(corpus, tmp_path, capsys):
    folder = tmp_path / "data"
    folder.mkdir()
    manifest = _small_manifest(corpus, folder / "m.json", 2)
    before = manifest.read_bytes()
    assert main(["tokenize", str(corpus.codebook), str(manifest), "--out", str(folder)]) == 2
    assert "the token store would be written over the manifest itself" in capsys.readouterr().err
    assert manifest.read_bytes() == before

    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    assert main(["tokenize", str(corpus.codebook), str(empty), "--out", str(tmp_path / "units")]) == 2
    assert "empty.jsonl: the manifest has no records" in capsys.readouterr().err

    assert main(["tokenize", str(corpus.train), str(corpus.train), "--out", str(tmp_path / "units")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "train.jsonl: not a codebook file" in err[0]

    # a safetensors file that is not a codebook (the model's weights)
    from safetensors.numpy import save_file

    save_file({"w": np.zeros(2, np.float32)}, str(tmp_path / "model.safetensors"))
    assert main(["tokenize", str(tmp_path / "model.safetensors"), str(corpus.tiny), "--out", str(tmp_path / "u")]) == 2
    assert "not a dmlm codebook" in capsys.readouterr().err


def test_a_latin1_manifest_is_one_line_naming_file_and_line(corpus, tmp_path, capsys):
    from dmlm.data.manifest import ManifestError, read_manifest

    good = corpus.tiny.read_text().splitlines()
    bad = tmp_path / "latin1.jsonl"
    bad.write_bytes((good[0] + "\n" + good[1].replace('"text": "', '"text": "caf\u00e9 ') + "\n").encode("latin-1"))
    with pytest.raises(ManifestError, match=r"latin1.jsonl:2: not UTF-8 \(byte 0xe9 at column \d+\)"):
        read_manifest(bad)
    assert main(["tokenize", str(corpus.codebook), str(bad), "--out", str(tmp_path / "units")]) == 2
    assert "latin1.jsonl:2: not UTF-8" in capsys.readouterr().err


# -- crash windows of a token store's merge: a reader never sees two builds mixed ------------------

def _tokenize_killed_at(codebook, manifest: Path, units: Path, fault: str) -> None:
    from dmlm.tokenizers.tokenize import tokenize

    pid = os.fork()
    if pid == 0:
        try:
            os.environ["DMLM_FAULT"] = fault
            tokenize(codebook, manifest, units)
        finally:
            os._exit(99)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, f"not killed at {fault}: {status}"


@pytest.mark.parametrize("fault", ["store-json-removed", "store-bin", "store-idx"])
def test_a_store_rebuilt_over_another_and_killed_is_never_read_mixed(corpus, tmp_path, fault):
    from dmlm.data.shards import TokenStore
    from dmlm.tokenizers.tokenize import tokenize

    manifest = _small_manifest(corpus, tmp_path / "m.jsonl", 2)
    units = tmp_path / "units"
    old, _ = tokenize(corpus.codebook, manifest, units)
    old_tokens = [old[i].tolist() for i in range(len(old))]
    _small_manifest(corpus, manifest, 5)  # another build of the same store: more records
    _tokenize_killed_at(corpus.codebook, manifest, units, fault)
    with pytest.raises(UserError, match="token store not found"):  # never the old ids over the new tokens
        TokenStore(units / "m")
    new, _ = tokenize(corpus.codebook, manifest, units)  # the rerun finishes from the parts
    assert len(new) == 5 and [new[i].tolist() for i in range(2)] == old_tokens


def test_a_store_whose_files_disagree_is_refused_naming_it(corpus, tmp_path):
    from dmlm.data.shards import TokenStore, store_file
    from dmlm.tokenizers.tokenize import tokenize

    manifest = _small_manifest(corpus, tmp_path / "m.jsonl", 3)
    store, _ = tokenize(corpus.codebook, manifest, tmp_path / "units")
    idx = store_file(store.prefix, ".idx.npy")
    np.save(idx, np.load(idx)[:-1])  # an index of another build (fewer records)
    with pytest.raises(UserError, match=r"units/m: the token store's files do not agree \(3 records in m.json, 2 in"):
        TokenStore(store.prefix)


# -- 5. the vocoder: the same ---------------------------------------------------------------------

def test_vocoder_training_that_diverges_stops_and_saves_nothing(corpus, tmp_path, monkeypatch):
    from dmlm.vocoder import VocoderConfig, train_vocoder

    cfg = VocoderConfig(dim=32, frame_dim=32, batch_size=2)
    for lr in (float("inf"), float("nan"), 0.0):
        with pytest.raises(UserError, match="vocoder lr: must be a finite number > 0"):
            train_vocoder(corpus.tiny, None, corpus.codebook, VocoderConfig(dim=32, frame_dim=32, lr=lr), tmp_path / "v",
                          steps=3, progress=False)
    import dmlm.vocoder.train as vt

    real = vt.losses

    def nan_at_step_2(net, b, bf16=False):
        out = real(net, b, bf16)
        nan_at_step_2.calls += 1
        return {**out, "loss": out["loss"] * float("nan")} if nan_at_step_2.calls == 2 else out

    nan_at_step_2.calls = 0
    monkeypatch.setattr(vt, "losses", nan_at_step_2)
    with pytest.raises(UserError, match=r"vocoder training, step 2: the loss is nan .*stopped before the update"):
        train_vocoder(corpus.tiny, None, corpus.codebook, cfg, tmp_path / "v", steps=5, progress=False)
    assert not (tmp_path / "v").exists()

    def poisoned(net, b, bf16=False):  # NaN weights that a finite loss did not reveal: never saved
        with torch.no_grad():
            next(net.parameters()).fill_(float("nan"))
        return real(net, b, bf16)

    monkeypatch.setattr(vt, "losses", poisoned)
    monkeypatch.setattr(vt, "_check_finite", lambda *a: None)
    with pytest.raises(UserError, match=r"vocoder training, step 2: \d+ weight tensor\(s\) hold inf or NaN"):
        train_vocoder(corpus.tiny, None, corpus.codebook, cfg, tmp_path / "v", steps=2, progress=False)
    assert not (tmp_path / "v").exists()


# -- speak / resynthesize: the format the extension names, a full disk in one line ------------------

def test_audio_is_written_in_the_format_its_extension_names_or_refused(tmp_path):
    import soundfile as sf

    from dmlm.api import Audio

    audio = Audio(np.sin(np.arange(16000) / 10).astype(np.float32) * 0.3)
    for ext, fmt in ((".wav", "WAV"), (".flac", "FLAC"), (".ogg", "OGG"), (".mp3", "MP3")):
        out = audio.save(tmp_path / f"x{ext}")
        assert sf.info(str(out)).format == fmt, ext
        back = Audio.load(out)
        assert abs(len(back) - 16000) < 2000 and float(np.abs(back.samples).max()) > 0.1
    with pytest.raises(UserError, match=r"x.m4a: cannot write audio as .m4a; dmlm writes .wav, .flac, .ogg, .mp3"):
        audio.save(tmp_path / "x.m4a")
    assert not (tmp_path / "x.m4a").exists()


def test_a_full_disk_while_writing_speech_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    """libsndfile reports a full disk as a short write (an AssertionError in soundfile) or a failed close."""
    import soundfile as sf

    from dmlm.api import Audio

    monkeypatch.setattr(sf.SoundFile, "write", lambda self, data: (_ for _ in ()).throw(AssertionError()))
    monkeypatch.setattr(os, "statvfs", lambda p: os.statvfs_result((4096, 4096, 100, 0, 0, 10, 0, 0, 0, 255)))
    with pytest.raises(OutputError, match=r"cannot write .*out.wav: no space left on the device"):
        Audio(np.zeros(1600, np.float32)).save(tmp_path / "out.wav")
    assert list(tmp_path.iterdir()) == []


# -- 6. damaged checkpoints without checksums, prepare sizes -----------------------------------------

def test_a_pickle_in_the_optimizer_state_and_a_missing_tokenizer_are_one_line_errors(run_config, tmp_path, capsys):
    import shutil

    from dmlm.modeling import load_checkpoint

    out = tmp_path / "model"
    cfg = run_config(out, *FAST)
    train(cfg, stop_at=1)
    (out / "checksums.json").unlink()  # as an older dmlm (or another tool) wrote it: nothing catches the edit
    marker = tmp_path / "marker"

    class Exploit:
        def __reduce__(self):
            return (Path.write_text, (marker, "pwned"))

    torch.save({"state": {}, "param_groups": Exploit()}, out / "training_state" / "optimizer.pt")
    with pytest.raises(UserError, match=r"training_state/optimizer.pt: not an optimizer state of tensors and numbers "
                                        r"\(UnpicklingError: .*refused, never unpickled"):
        train(cfg, resume=True)
    assert not marker.exists()

    broken = tmp_path / "broken"
    shutil.copytree(out, broken)
    (broken / "tokenizer.json").unlink()
    with pytest.raises(UserError, match=r"broken: cannot read the checkpoint's tokenizer \(tokenizer.json missing\)"):
        load_checkpoint(broken)
    capsys.readouterr()
    assert main(["transcribe", str(broken), str(tmp_path / "x.wav")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "tokenizer.json missing" in err[0]


@pytest.mark.parametrize("override,match", [("n_train=-3", r"prepare.n_train: must be >= 1 sentences, got -3"),
                                            ("n_dev=-1", r"prepare.n_dev: must be >= 0 sentences, got -1"),
                                            ("n_dev=2", r"could only sample \d of the 2 dev sentences whose words all "
                                                        r"occur in the 3 training sentences")])
def test_prepare_sizes_that_cannot_be_met_are_one_line_errors(tmp_path, capsys, override, match):
    import re

    args = ["prepare", "mini-world", "n_train=3", "n_test=0", "images=false", override, "--out", str(tmp_path / "c")]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and re.search(match, err[0]), err
    assert not (tmp_path / "c" / "train.jsonl").exists()


# -- decoding bounds on the CLI and the API (the server's, `dmlm.decoding.options.BOUNDS`); languages ----

@pytest.mark.parametrize("flags,match", [(["--strategy", "beam", "--beam-size", "0"], r"beam_size \(--beam-size\) must be >= 1"),
                                         (["--strategy", "beam", "--beam-size", "100000"], r"beam_size \(--beam-size\) must be .*<= 16"),
                                         (["--strategy", "sample", "--temperature", "0"], r"temperature \(--temperature\) must be > 0"),
                                         (["--max-new-tokens", "0"], r"max_new_tokens \(--max-new-tokens\) must be >= 1")])
def test_decoding_values_out_of_bounds_are_one_line_errors_on_the_cli(trained, corpus, capsys, flags, match):
    import re

    wav = corpus.tiny.parent / "wav" / "utt00.wav"
    assert main(["transcribe", str(trained), str(wav), *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and re.search(match, err[0]), err


def test_decoding_bounds_and_unknown_languages_on_the_api(trained, corpus, capsys):
    import dmlm
    from dmlm.decoding import DecodingOptions

    m = dmlm.load(trained)
    wav = corpus.tiny.parent / "wav" / "utt00.wav"
    with pytest.raises(UserError, match=r"beam_size \(--beam-size\) must be >= 1 and <= 16, got 100000"):
        m.transcribe(str(wav), strategy="beam", beam_size=100000)
    with pytest.raises(UserError, match=r"temperature \(--temperature\) must be > 0"):
        m.transcribe(str(wav), options=DecodingOptions(strategy="sample", temperature=0.0))
    with pytest.raises(UserError, match=r"lang='xx' \(--lang\): not a language of the model's vocabulary; it has en, es"):
        m.transcribe(str(wav), lang="xx")
    assert main(["transcribe", str(trained), str(wav), "--lang", "xx"]) == 2
    assert "--lang): not a language of the model's vocabulary; it has en, es, de" in capsys.readouterr().err


def test_a_record_with_an_unknown_language_is_named_with_the_languages_known(run_config, corpus, tmp_path):
    from dmlm.data.manifest import Record, read_manifest, write_manifest

    recs = read_manifest(corpus.tiny)
    bad = tmp_path / "bad.jsonl"
    write_manifest(bad, [Record(**{**r.__dict__, "audio": str(r.audio_path(corpus.tiny)),
                                   "lang": "xx" if i == 2 else r.lang}) for i, r in enumerate(recs)])
    from dmlm.tokenizers.tokenize import tokenize

    tokenize(corpus.codebook, bad, corpus.units.parent / "units_bad")
    cfg = run_config(tmp_path / "model", *FAST, f"data.units={corpus.units.parent / 'units_bad'}", train=bad, dev=bad)
    with pytest.raises(UserError, match=rf"record '{recs[2].id}' \(asr\): unknown language 'xx': not in the model's "
                                        r"vocabulary, which has en, es, de"):
        train(cfg)
