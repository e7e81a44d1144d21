"""`dmlm <verb>` smoke tests through `dmlm.cli.main`, and the one-line errors (exit 2) a user can fix."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr

from dmlm.cli import main
from dmlm.data.manifest import read_manifest
from dmlm.data.shards import TokenStore
from dmlm.tokenizers.speech import Codebook, fit_codebook


def _ok(argv: list[str], capsys) -> str:
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert rc == 0, err[-2000:]
    return out


def _fails(argv: list[str], capsys) -> str:
    """Run a verb that must fail the user-error way: status 2, one line naming the verb, no traceback."""
    rc = main([str(a) for a in argv])
    _, err = capsys.readouterr()
    assert rc == 2, err[-2000:]
    assert "Traceback" not in err
    verb = argv[0]
    found = re.findall(rf"dmlm {verb}: error: (.*)", err)  # progress bars may precede it on the line
    assert len(found) == 1, err
    return found[0]


def _manifest(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def _row(corpus, i: int = 0, **kw) -> dict:
    r = read_manifest(corpus.train)[i]
    return {"id": r.id, "audio": str(r.audio_path(corpus.train)), "text": r.text, "lang": "en", **kw}


# -- verbs that work ---------------------------------------------------------------------------

def test_codebook_fit(corpus, codebook, tmp_path, capsys):
    out = _ok(["codebook", "fit", corpus.train, "-o", tmp_path / "cb.safetensors",
               "backend=mel", "model=null", "layer=null", "k=16", "dedup=true", "pooling=1"], capsys)
    cb = Codebook.load(tmp_path / "cb.safetensors")
    assert f"fingerprint={cb.fingerprint}" in out
    assert cb.fingerprint == codebook.fingerprint  # same audio, settings and seed as the session fixture


def test_overrides_may_follow_options(corpus, tmp_path, capsys):
    """`dmlm train CONFIG --resume key=value`: the override is not lost to argparse."""
    msg = _fails(["train", "--resume", "train.bogus=1"], capsys)
    assert "unknown config key 'train.bogus'" in msg
    with pytest.raises(SystemExit):  # anything else is still an argparse error
        main(["tokenize", str(corpus.codebook), str(corpus.train), "--out", str(tmp_path), "--bogus"])


def test_tokenize(corpus, tmp_path, capsys):
    out = _ok(["tokenize", corpus.codebook, corpus.train, corpus.dev, "--out", tmp_path / "units"], capsys)
    assert "20 utterances" in out and "4 utterances" in out
    for name in ("train", "dev"):
        a, b = TokenStore(tmp_path / "units" / name), TokenStore(corpus.units / name)
        assert a.ids == b.ids and np.array_equal(a.tokens, b.tokens) and a.fingerprint == b.fingerprint


def test_tokenize_in_two_shards(corpus, tmp_path, capsys):
    argv = ["tokenize", corpus.codebook, corpus.train, "--out", tmp_path / "u", "--num-shards", "2"]
    # 20 records are one chunk (of 256), which shard 0 holds: shard 1 has nothing to do
    assert "merged once every shard is done" in _ok(argv + ["--shard", "1"], capsys)
    assert "20 utterances" in _ok(argv + ["--shard", "0"], capsys)
    assert TokenStore(tmp_path / "u" / "train").ids == TokenStore(corpus.units / "train").ids
    assert "out of range" in _fails(argv + ["--shard", "2"], capsys)


def test_train_with_overrides(corpus, tmp_path, capsys):
    out_dir = tmp_path / "model"
    cfg = tmp_path / "run.yaml"
    cfg.write_text("model:\n  hidden_size: 64\n  layers: 2\n  heads: 2\n  intermediate_size: 128\n")
    out = _ok(["train", cfg, f"data.train={corpus.tiny}", f"data.dev={corpus.tiny}", f"data.units={corpus.units}",
               f"data.codebook={corpus.codebook}", f"train.out={out_dir}", "train.steps=2", "train.warmup_steps=1",
               "data.bpe_vocab_size=300", "train.batch_tokens=4000"], capsys)
    assert str(out_dir) in out
    info = json.loads((out_dir / "dmlm.json").read_text())
    assert info["step"] == 2 and info["config"]["model"]["hidden_size"] == 64
    assert info["config"]["train"]["steps"] == 2
    assert (out_dir / "training_state" / "config.yaml").is_file()
    # without a YAML file: the first key=value is an override, not a config path
    _ok(["train", f"data.train={corpus.tiny}", "data.dev=", f"data.units={corpus.units}",
         f"data.codebook={corpus.codebook}", f"train.out={tmp_path / 'm2'}", "train.steps=1", "model.layers=1",
         "model.hidden_size=64", "model.heads=2", "model.intermediate_size=64", "data.bpe_vocab_size=300"], capsys)
    assert (tmp_path / "m2" / "model.safetensors").is_file()


def test_decode(trained, corpus, tmp_path, capsys):
    out = tmp_path / "hyps.jsonl"
    _ok(["decode", trained, "--manifest", corpus.tiny, "--out", out], capsys)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert all(set(r) == {"id", "hyp"} for r in rows)
    assert [r["id"] for r in rows] == [r.id for r in read_manifest(corpus.tiny)]
    assert [r["hyp"] for r in rows] == corpus.texts(corpus.tiny)
    # from precomputed units (same codebook): the same hypotheses
    _ok(["decode", trained, "--manifest", corpus.tiny, "--units", corpus.units / "tiny", "--out", tmp_path / "u.jsonl",
         "--batch-size", "2"], capsys)
    assert (tmp_path / "u.jsonl").read_text() == out.read_text()


def test_evaluate(trained, corpus, codebook, tmp_path, capsys):
    report_path = tmp_path / "report.json"
    out = _ok(["evaluate", trained, "--manifest", corpus.tiny, "--out", report_path], capsys)
    printed = json.loads(out.splitlines()[0])
    rep = json.loads(report_path.read_text())
    assert rep["wer"] == 0.0 and rep["cer"] == 0.0 and printed["wer"] == 0.0
    assert rep["utterances"] == 4
    assert rep["codebook_fingerprints"]["speech"] == codebook.fingerprint
    assert rep["task"] == "asr" and rep["model"] == str(trained.resolve())
    hyps = [json.loads(line) for line in report_path.with_suffix(".hyps.jsonl").read_text().splitlines()]
    assert [h["hyp"] for h in hyps] == [h["ref"] for h in hyps]
    # on unseen sentences the report is still well formed
    rep = json.loads(_ok(["evaluate", trained, "--manifest", corpus.dev, "--out", tmp_path / "dev.json",
                          "--max-new-tokens", "10"], capsys).splitlines()[0])
    assert rep["wer"] >= 0 and rep["utterances"] == 4


def test_transcribe(trained, corpus, capsys):
    paths = [str(r.audio_path(corpus.tiny)) for r in read_manifest(corpus.tiny)]
    out = _ok(["transcribe", trained, *paths], capsys)
    assert out.splitlines() == [f"{p}\t{t}" for p, t in zip(paths, corpus.texts(corpus.tiny))]


def test_stereo_44k_audio_is_accepted_with_a_warning(corpus, tmp_path, capsys, caplog):
    wav = corpus.wavs(corpus.train)[0]
    w44 = soxr.resample(wav, 16000, 44100)
    sf.write(tmp_path / "stereo.wav", np.stack([w44, 0.5 * w44], axis=1), 44100)
    m = _manifest(tmp_path / "m.jsonl", [{"id": "s", "audio": "stereo.wav", "text": "x"}])
    with caplog.at_level(logging.WARNING):
        _ok(["tokenize", corpus.codebook, m, "--out", tmp_path / "u"], capsys)
    assert "downmixing to mono" in caplog.text and "44100 Hz, resampling to 16000 Hz" in caplog.text
    assert "stereo.wav" in caplog.text
    assert len(TokenStore(tmp_path / "u" / "m")[0]) > 5


# -- user errors: exit 2, one line -------------------------------------------------------------

def test_missing_manifest(corpus, tmp_path, capsys):
    msg = _fails(["tokenize", corpus.codebook, tmp_path / "nope.jsonl", "--out", tmp_path / "u"], capsys)
    assert "nope.jsonl" in msg and "not found" in msg


@pytest.mark.parametrize("line,expect", [
    ('{"id": "a", "text": "x"', r"m\.jsonl:2: not valid JSON"),
    ('{"id": "a", "duration": "long"}', r"m\.jsonl:2: field 'duration' must be int or float, got str"),
    ('{"id": 7}', r"m\.jsonl:2: field 'id' must be str, got int"),
    ('{"id": null, "text": "x"}', r"m\.jsonl:2: field 'id' is empty"),
    ('{"text": "no id", "audio": "a.wav"}', r"m\.jsonl:2: missing required field 'id'"),
    ('["a", "b"]', r"m\.jsonl:2: expected a JSON object"),
])
def test_bad_manifest_lines(corpus, tmp_path, capsys, line, expect):
    m = _manifest(tmp_path / "m.jsonl", [_row(corpus), line])
    msg = _fails(["tokenize", corpus.codebook, m, "--out", tmp_path / "u"], capsys)
    assert re.search(expect, msg), msg


def test_duplicate_ids(corpus, tmp_path, capsys):
    m = _manifest(tmp_path / "m.jsonl", [_row(corpus), _row(corpus)])
    assert "duplicate record id 'utt00'" in _fails(["tokenize", corpus.codebook, m, "--out", tmp_path / "u"], capsys)


def test_corrupt_audio(corpus, tmp_path, capsys):
    (tmp_path / "bad.wav").write_bytes(b"RIFF\x00\x00garbage, not audio")
    m = _manifest(tmp_path / "m.jsonl", [_row(corpus), {"id": "bad", "audio": "bad.wav", "text": "x"}])
    msg = _fails(["tokenize", corpus.codebook, m, "--out", tmp_path / "u"], capsys)
    assert "record 'bad'" in msg and "bad.wav" in msg and "cannot read audio" in msg
    assert not (tmp_path / "u" / "m.json").exists()


def test_missing_audio_file(corpus, tmp_path, capsys):
    m = _manifest(tmp_path / "m.jsonl", [{"id": "gone", "audio": "gone.wav", "text": "x"}])
    msg = _fails(["tokenize", corpus.codebook, m, "--out", tmp_path / "u"], capsys)
    assert "record 'gone'" in msg and "not found" in msg


def test_empty_audio(corpus, tmp_path, capsys):
    sf.write(tmp_path / "empty.wav", np.zeros(0, np.float32), 16000)
    m = _manifest(tmp_path / "m.jsonl", [{"id": "e", "audio": "empty.wav", "text": "x"}])
    msg = _fails(["tokenize", corpus.codebook, m, "--out", tmp_path / "u"], capsys)
    assert "record 'e'" in msg and "empty (0 samples)" in msg


def test_empty_text_in_a_training_manifest(corpus, codebook, run_config, tmp_path, capsys):
    m = _manifest(tmp_path / "blank.jsonl", [_row(corpus, 0), _row(corpus, 1, text=" "), _row(corpus, 2)])
    _ok(["tokenize", corpus.codebook, m, "--out", tmp_path / "units"], capsys)
    msg = _fails(["train", f"data.train={m}", "data.dev=", f"data.units={tmp_path / 'units'}",
                  f"data.codebook={corpus.codebook}", f"train.out={tmp_path / 'model'}", "train.steps=1",
                  "data.bpe_vocab_size=300", "model.layers=1", "model.hidden_size=64", "model.heads=2"], capsys)
    assert "blank.jsonl: record 'utt01' has no 'text' (transcript)" in msg
    assert not (tmp_path / "model").exists()


@pytest.mark.parametrize("override,expect", [
    ("train.bogus=1", "unknown config key 'train.bogus'"),
    ("bogus.steps=1", "unknown config key 'bogus'"),
    ("train.steps=many", "train.steps: expected int, got 'many'"),
])
def test_bad_config(tmp_path, capsys, override, expect):
    msg = _fails(["train", override, f"train.out={tmp_path / 'model'}"], capsys)
    assert expect in msg
    assert not (tmp_path / "model").exists()


def test_missing_config_file(tmp_path, capsys):
    assert "config file not found" in _fails(["train", tmp_path / "nope.yaml"], capsys)


def test_units_from_another_codebook_are_refused(trained, corpus, tmp_path, capsys, mel_settings):
    other = fit_codebook(corpus.wavs(corpus.dev), mel_settings(seed=9))
    other_path = other.save(tmp_path / "other.safetensors")
    _ok(["tokenize", other_path, corpus.tiny, "--out", tmp_path / "units"], capsys)
    out = tmp_path / "hyps.jsonl"
    out.write_text("previous results\n")
    msg = _fails(["decode", trained, "--manifest", corpus.tiny, "--units", tmp_path / "units" / "tiny",
                  "--out", out], capsys)
    assert f"made with speech codebook {other.fingerprint}" in msg and "tiny" in msg
    assert out.read_text() == "previous results\n"  # a failing run does not clobber earlier output
    rep = tmp_path / "rep.json"
    rep.write_text("{}")
    msg = _fails(["evaluate", trained, "--manifest", corpus.tiny, "--units", tmp_path / "units" / "tiny",
                  "--out", rep], capsys)
    assert other.fingerprint in msg and rep.read_text() == "{}"


def test_failing_decode_keeps_existing_output(trained, corpus, tmp_path, capsys):
    (tmp_path / "bad.wav").write_bytes(b"not audio at all")
    m = _manifest(tmp_path / "m.jsonl", [_row(corpus, 0), {"id": "bad", "audio": "bad.wav", "text": "x"}])
    out = tmp_path / "hyps.jsonl"
    out.write_text('{"id": "old", "hyp": "kept"}\n')
    msg = _fails(["decode", trained, "--manifest", m, "--out", out], capsys)
    assert "record 'bad'" in msg
    assert out.read_text() == '{"id": "old", "hyp": "kept"}\n'
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".hyps")] == []  # no temp files left


def test_units_missing_a_record(trained, corpus, tmp_path, capsys):
    """A store made before the manifest changed: one line, not a KeyError traceback."""
    msg = _fails(["decode", trained, "--manifest", corpus.dev, "--units", corpus.units / "tiny",
                  "--out", tmp_path / "h.jsonl"], capsys)
    assert "no tokens for record 'utt03'" in msg and "Tokenize it again" in msg


def test_transcribe_missing_audio(trained, tmp_path, capsys):
    assert "audio file not found" in _fails(["transcribe", trained, tmp_path / "nope.wav"], capsys)


def test_decode_unknown_task_and_missing_model(trained, corpus, tmp_path, capsys):
    assert "unknown task 'karaoke'" in _fails(["decode", trained, "--task", "karaoke", "--manifest", corpus.tiny,
                                               "--out", tmp_path / "h"], capsys)
    assert "not a dmlm checkpoint" in _fails(["decode", tmp_path, "--manifest", corpus.tiny,
                                              "--out", tmp_path / "h"], capsys)


def _verb_parsers(parser, path=()):
    """(verb path, parser) of every verb and sub-verb of the CLI."""
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*path, name), sub
                yield from _verb_parsers(sub, (*path, name))


def test_every_advertised_override_is_a_real_field():
    """Override help is generated from the config dataclasses: each `key=value` it shows names a field."""
    import re

    from dmlm.cli import build_parser
    from dmlm.data.prepare import PrepareConfig
    from dmlm.tokenizers.image import ImageCodebookSettings
    from dmlm.tokenizers.speech import CodebookSettings
    from dmlm.training.config import RunConfig
    from dmlm.util.config import field_default
    from dmlm.vocoder import VocoderConfig

    settings = {("prepare",): [PrepareConfig], ("codebook", "fit"): [CodebookSettings, ImageCodebookSettings],
                ("train",): [RunConfig], ("vocoder", "train"): [VocoderConfig]}
    seen = 0
    for path, sub in _verb_parsers(build_parser()):
        help_text = sub.format_help()
        keys = set(re.findall(r"(?<![\w.-])([a-z_][a-z0-9_.]*)=", help_text))
        if path not in settings:
            continue
        for key in keys:
            assert any(_is_field(cls, key) for cls in settings[path]), f"dmlm {' '.join(path)} --help advertises {key}="
            seen += 1
    assert seen > 20
    fit = dict(_verb_parsers(build_parser()))[("codebook", "fit")].format_help()
    assert "patch=8" in fit and "patch_size" not in fit
    assert field_default(ImageCodebookSettings, "patch") == 8


def _is_field(cls, key):
    from dmlm.util.config import ConfigError, field_default

    try:
        field_default(cls, key)
        return True
    except ConfigError:
        return False


def test_import_dmlm_leaves_the_environment_alone():
    """A library does not change its importer's environment; the CLI sets the OpenMP spin default."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    code = ("import os; before = dict(os.environ); import dmlm, dmlm.api, dmlm.recipes.demo; "
            "assert dict(os.environ) == before, set(os.environ.items()) ^ set(before.items()); "
            "from dmlm.cli import build_parser; import dmlm.cli as c; "
            "c.main(['report', '/nonexistent']); print(os.environ.get('GOMP_SPINCOUNT'))")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "3000"  # the CLI's main sets it
