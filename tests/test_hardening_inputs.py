"""Bad inputs that type-check: config values, long inputs, damaged records and files: each a clear error
(exit 2) naming the key, record or file, or a warning, never a traceback or a silent wrong result."""

from __future__ import annotations

import pytest

from dmlm.cli import main
from dmlm.util.config import ConfigError


@pytest.mark.parametrize("override, key", [
    ("train.steps=-5", "train.steps"), ("train.steps=0", "train.steps"), ("train.save_every=0", "train.save_every"),
    ("train.eval_every=0", "train.eval_every"), ("train.log_every=0", "train.log_every"),
    ("model.heads=3", "model.heads"), ("train.precision=fp16", "train.precision"), ("train.lr=-0.001", "train.lr"),
    ("train.lr=nan", "train.lr"), ("train.batch_tokens=0", "train.batch_tokens"),
    ("train.grad_accum=0", "train.grad_accum"), ("train.warmup_steps=-1", "train.warmup_steps"),
    ("train.min_lr_ratio=2", "train.min_lr_ratio"), ("train.loss=mse", "train.loss"),
    ("train.lambdas=[1,1]", "train.lambdas"), ("data.weights=[-1]", "data.weights"),
    ("model.hidden_size=0", "model.hidden_size"), ("train.max_minutes=-1", "train.max_minutes"),
])
def test_config_values_that_cannot_train_are_refused_by_key(run_config, tmp_path, override, key):
    cfg = run_config(tmp_path / "model", override)
    with pytest.raises(ConfigError, match=rf"^{key}: "):
        cfg.validate()


def test_a_bad_config_value_exits_2_before_any_work(corpus, tmp_path, capsys):
    out = tmp_path / "model"
    code = main(["train", f"data.train={corpus.tiny}", f"data.units={corpus.units}", f"data.codebook={corpus.codebook}",
                 f"train.out={out}", "train.save_every=0"])
    assert code == 2 and "train.save_every: must be > 0" in capsys.readouterr().err
    assert not out.exists()


# -- long inputs ------------------------------------------------------------------------------

def test_clips_past_the_whisper_window_are_encoded_in_30s_windows():
    """A 35 s clip: the encoder never sees more than 30 s; frames = those of the 30 s window then the 5 s rest."""
    import numpy as np
    import torch

    from dmlm.tokenizers.features import WHISPER_SAMPLES, _WhisperBase, n_frames
    from dmlm.util.audio import SAMPLE_RATE

    class Encoder(_WhisperBase):  # Whisper's shape rules without its weights: frames = pairs of mel frames
        name, n_mels = "fake", 80

        def __init__(self):
            super().__init__("fake", -1, pad_quantum=0.5, batch_size=4)

        def _encode_batch(self, mels: torch.Tensor) -> np.ndarray:
            if mels.shape[-1] > 2 * 1500:
                raise RuntimeError(f"encoder input of {mels.shape[-1]} mel frames exceeds 3000")
            b, d, t = mels.shape
            return mels[..., : t // 2 * 2].reshape(b, d, t // 2, 2).mean(-1).transpose(1, 2).numpy()

    rng = np.random.default_rng(0)
    wav = rng.standard_normal(35 * SAMPLE_RATE).astype(np.float32) * 0.1
    short = wav[: 3 * SAMPLE_RATE]
    enc = Encoder()
    long_f, short_f = enc([wav, short])
    cut = WHISPER_SAMPLES
    head, tail = enc([wav[:cut]])[0], enc([wav[cut:]])[0]
    assert len(long_f) == n_frames(len(wav)) == len(head) + len(tail) == 1750
    assert np.array_equal(long_f, np.concatenate([head, tail]))
    assert np.array_equal(short_f, enc([short])[0])  # a clip that fits: as before, whatever its batch mates


@pytest.fixture(scope="module")
def ck(trained):
    from dmlm.modeling import load_checkpoint

    return load_checkpoint(trained)


def test_inputs_past_the_models_positions_are_refused_naming_the_input(ck, trained, corpus, tmp_path, capsys):
    import numpy as np
    import soundfile as sf

    from dmlm.inference import synthesize_units, transcribe_units
    from dmlm.util.audio import load_audio
    from dmlm.util.errors import UserError

    assert ck.model.config.max_position_embeddings == 1024
    with pytest.raises(UserError, match=r"asr input '1': its prompt is \d+ tokens but the model has 1024 positions"):
        transcribe_units(ck, [np.arange(10) % 16, np.arange(2000) % 16])
    with pytest.raises(UserError, match=r"t2s input '0': its prompt is \d+ tokens but the model has 1024 positions"):
        synthesize_units(ck, [" ".join(["the red cat sees a big dog"] * 180)])  # ~5,000 characters
    # a 2-minute clip through the 50 Hz log-mel codebook, from the command line
    clip = load_audio(corpus.root / "wav" / "utt00.wav")
    reps = int(np.ceil(120 * 16000 / len(clip)))
    long_wav = tmp_path / "two-minutes.wav"
    sf.write(long_wav, np.tile(clip, reps)[: 120 * 16000], 16000)
    assert main(["transcribe", str(trained), str(long_wav)]) == 2
    assert "its prompt is" in capsys.readouterr().err


def test_outputs_are_cut_at_the_models_positions_and_reported(ck, corpus, caplog, monkeypatch):
    from dmlm.inference import prompts_for, transcribe_units
    from dmlm.tasks import get_task
    from dmlm.tokenizers.speech import Codebook
    from dmlm.util.audio import load_audio

    units = Codebook.load(corpus.codebook).encode_batch([load_audio(corpus.root / "wav" / "utt00.wav")])
    full = transcribe_units(ck, units)[0]  # "the red cat runs": more than 2 tokens
    prompt = prompts_for(ck, "asr", [get_task("asr").make_sample("0", units[0], "en")])[0]
    monkeypatch.setattr(ck.model.config, "max_position_embeddings", len(prompt) + 2)  # room for 2 tokens
    with caplog.at_level("WARNING"):
        cut = transcribe_units(ck, units)[0]
    assert len(ck.tokenizer.encode(full, add_special_tokens=False)) > 2
    assert len(ck.tokenizer.encode(cut, add_special_tokens=False)) <= 2 and full.startswith(cut)
    assert f"1 of 1 text outputs reached the model's {len(prompt) + 2} positions" in caplog.text


def test_training_examples_past_the_models_positions_are_refused(run_config, tmp_path):
    from dmlm.training.train import train
    from dmlm.util.errors import UserError

    cfg = run_config(tmp_path / "model", "model.max_positions=16", "train.steps=2")
    with pytest.raises(UserError, match=r"training example\(s\) are longer than the model's 16 positions"):
        train(cfg)


# -- damaged records and files ------------------------------------------------------------------

def test_evaluate_names_a_record_without_text_and_reports_one_without_audio(trained, corpus, tmp_path, caplog):
    import json

    from dmlm.data.manifest import Record, read_manifest, write_manifest
    from dmlm.data.split import Split
    from dmlm.evaluation.options import EvalOptions
    from dmlm.evaluation.run import evaluate
    from dmlm.modeling import load_checkpoint
    from dmlm.util.errors import UserError

    recs = read_manifest(corpus.tiny)
    wav = recs[0].audio_path(corpus.tiny)
    base = [Record(**{**r.__dict__, "audio": str(r.audio_path(corpus.tiny))}) for r in recs]
    no_text = tmp_path / "no_text.jsonl"
    write_manifest(no_text, base[:2] + [Record(id="mute/../x", lang="en", audio=str(wav))])
    with pytest.raises(UserError, match=r"'mute/../x'.*text"):
        evaluate(load_checkpoint(trained), "asr", Split(no_text), options=EvalOptions(progress=False))
    no_audio = tmp_path / "no_audio.jsonl"
    write_manifest(no_audio, base + [Record(id="textonly", lang="en", text="the red cat runs")])
    with caplog.at_level("WARNING"):
        rep = evaluate(load_checkpoint(trained), "asr", Split(no_audio), out=tmp_path / "rep.json",
                       options=EvalOptions(progress=False))
    assert rep["records"] == 4 and rep["skipped"] == {"reason": "no 'audio'", "count": 1, "ids": ["textonly"]}
    assert "1 record(s) without 'audio' are not scored" in caplog.text
    assert json.loads((tmp_path / "rep.json").read_text())["skipped"]["count"] == 1


def test_truncated_safetensors_are_one_line_errors_naming_the_file(trained, tmp_path, capsys):
    import shutil

    from dmlm.modeling import load_checkpoint
    from dmlm.tokenizers.speech import Codebook
    from dmlm.util.errors import UserError
    from dmlm.vocoder import Vocoder

    ck = tmp_path / "model"
    shutil.copytree(trained, ck)
    (ck / "checksums.json").unlink()  # unverified (an older checkpoint): the reader itself must say it
    w = ck / "model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    with pytest.raises(UserError, match=r"model: cannot read the model weights .*truncated or damaged"):
        load_checkpoint(ck)
    cb = ck / "codebooks" / "speech.safetensors"
    cb.write_bytes(cb.read_bytes()[:100])
    with pytest.raises(UserError, match=r"speech.safetensors: not a codebook file"):
        Codebook.load(cb)
    voc = tmp_path / "vocoder"
    voc.mkdir()
    (voc / "config.json").write_text("{}")
    from dmlm.vocoder import files as vm

    (voc / vm.WEIGHTS).write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":")
    with pytest.raises(UserError, match=rf"{vm.WEIGHTS}: cannot read it"):
        Vocoder.load(voc)


def test_an_oversized_image_is_a_clear_error(tmp_path):
    from PIL import Image

    from dmlm.util.images import MAX_PIXELS, ImageError, load_image

    path = tmp_path / "huge.png"
    Image.new("L", (9000, 9000)).save(path)  # 81 Mpx of zeros: a small file
    assert 9000 * 9000 > MAX_PIXELS and path.stat().st_size < 1_000_000
    with pytest.raises(ImageError, match=r"huge.png: image is 9000x9000 pixels, more than dmlm reads"):
        load_image(path)


def test_silent_and_truncated_audio_pass_with_a_warning_naming_the_file(tmp_path, caplog):
    import numpy as np
    import soundfile as sf

    from dmlm.util.audio import load_audio

    sf.write(tmp_path / "silence.wav", np.zeros(16000, np.float32), 16000, subtype="PCM_16")
    sf.write(tmp_path / "full.wav", np.random.default_rng(0).uniform(-0.3, 0.3, 16000).astype(np.float32), 16000,
             subtype="PCM_16")
    data = (tmp_path / "full.wav").read_bytes()
    (tmp_path / "cut.wav").write_bytes(data[: len(data) // 2])
    with caplog.at_level("WARNING"):
        assert len(load_audio(tmp_path / "silence.wav")) == 16000
        assert 7000 < len(load_audio(tmp_path / "cut.wav")) < 9000
        load_audio(tmp_path / "full.wav")
    assert "silence.wav: the audio is silent" in caplog.text
    assert "cut.wav: the file is truncated" in caplog.text
    assert "full.wav" not in caplog.text
