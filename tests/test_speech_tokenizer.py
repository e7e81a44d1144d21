"""Speech codebook: fitting, encoding, fingerprints, persistence; frame features."""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import save_file

from dmlm.tokenizers.features import MelFeatures, build_features, log_mel, n_frames
from dmlm.tokenizers.speech import Codebook, CodebookMismatch, dedup, fit_codebook, pool_frames


@pytest.fixture(scope="module")
def wavs(corpus):
    return corpus.wavs(corpus.train)[:4]  # a few seconds of speech


def test_fit_and_encode_are_deterministic_with_a_seed(wavs, mel_settings):
    a = fit_codebook(wavs, mel_settings(seed=3))
    b = fit_codebook(wavs, mel_settings(seed=3))
    np.testing.assert_array_equal(a.centroids, b.centroids)
    assert a.fingerprint == b.fingerprint
    assert a.encode_batch(wavs) == b.encode_batch(wavs)
    assert a.centroids.shape == (16, MelFeatures().dim)
    assert a.settings.frame_rate == 50.0
    c = fit_codebook(wavs, mel_settings(seed=4))
    assert c.fingerprint != a.fingerprint


def test_encode_units_are_in_range_and_batch_independent(codebook, wavs):
    batched = codebook.encode_batch(wavs)
    alone = [codebook.encode(w) for w in wavs]
    assert batched == alone
    for w, u in zip(wavs, batched):
        assert all(0 <= x < 16 for x in u)
        assert 0 < len(u) <= n_frames(len(w)) + 1
        assert all(a != b for a, b in zip(u, u[1:]))  # dedup: no run survives


def test_save_load_round_trip_keeps_fingerprint_and_units(codebook, wavs, tmp_path):
    path = codebook.save(tmp_path / "cb.safetensors")
    back = Codebook.load(path)
    assert back.fingerprint == codebook.fingerprint
    assert back.settings == codebook.settings
    np.testing.assert_array_equal(back.centroids, codebook.centroids)
    assert back.encode_batch(wavs) == codebook.encode_batch(wavs)
    with safe_open(str(path), "np") as f:
        assert f.metadata()["fingerprint"] == codebook.fingerprint


def test_registry_builds_the_speech_tokenizer(codebook, tmp_path, wavs):
    from dmlm.tokenizers import REGISTRY, Tokenizer, load_tokenizer

    assert "speech" in REGISTRY
    tok = load_tokenizer("speech", str(codebook.save(tmp_path / "cb.safetensors")))
    assert isinstance(tok, Tokenizer) and tok.modality == "speech" and tok.vocab_size == 16
    units = tok.encode(wavs[0])
    frames = tok.decode(units)  # the codebook's view of the audio: centroid frames
    assert frames.shape == (len(units), codebook.centroids.shape[1])
    np.testing.assert_array_equal(tok.assign(frames), units)
    with pytest.raises(ValueError, match="unit ids"):
        tok.decode([16])


def test_fingerprint_covers_settings_and_centroids(codebook, mel_settings):
    base = codebook.fingerprint
    for change in ({"dedup": False}, {"pooling": 2}, {"backend": "whisper"}, {"layer": 3}, {"seed": 1}):
        other = Codebook(codebook.centroids, mel_settings(**{**codebook.settings.__dict__, **change}))
        assert other.fingerprint != base, change
    # a fit-time knob that does not change units does not change the fingerprint
    same = Codebook(codebook.centroids, mel_settings(**{**codebook.settings.__dict__, "max_frames": 7}))
    assert same.fingerprint == base
    moved = codebook.centroids.copy()
    moved[0, 0] += 1e-3
    assert Codebook(moved, codebook.settings).fingerprint != base


def test_tampered_file_is_refused(codebook, tmp_path):
    path = codebook.save(tmp_path / "cb.safetensors")
    with safe_open(str(path), "np") as f:
        meta = f.metadata()
    settings = json.loads(meta["settings"])
    settings["dedup"] = False  # edit the settings, keep the stored fingerprint
    save_file({"centroids": codebook.centroids}, str(tmp_path / "bad.safetensors"),
              metadata={**meta, "settings": json.dumps(settings)})
    with pytest.raises(CodebookMismatch, match="fingerprint"):
        Codebook.load(tmp_path / "bad.safetensors")
    save_file({"centroids": codebook.centroids + 1}, str(tmp_path / "bad2.safetensors"), metadata=meta)
    with pytest.raises(CodebookMismatch):
        Codebook.load(tmp_path / "bad2.safetensors")
    with pytest.raises(FileNotFoundError):
        Codebook.load(tmp_path / "missing.safetensors")


def test_mismatch_with_a_store_or_checkpoint_fingerprint(codebook, corpus, wavs, mel_settings):
    from dmlm.data.split import Split
    from dmlm.tasks import Sources
    from dmlm.tokenizers.text import TextTokenizer
    from dmlm.training.setup import task_samples

    codebook.check(codebook.fingerprint, "token store x")  # same: fine
    codebook.check(None, "legacy store")  # unknown: nothing to compare
    with pytest.raises(CodebookMismatch, match="token store x was made with speech codebook 0123456789abcdef"):
        codebook.check("0123456789abcdef", "token store x")
    other = fit_codebook(wavs, mel_settings(seed=11))
    text = TextTokenizer.train_bpe(corpus.texts(corpus.train), 280)
    store = Split(corpus.tiny, corpus.units).store("speech", codebook)  # made with the session codebook
    assert len(task_samples("asr", Sources(corpus.tiny, text, speech=store))) == 4
    with pytest.raises(CodebookMismatch, match=str(store.prefix)):
        Split(corpus.tiny, corpus.units).store("speech", other)  # what training's setup opens its stores with


def test_dedup_and_pooling():
    np.testing.assert_array_equal(dedup(np.array([1, 1, 2, 2, 2, 1, 3, 3])), [1, 2, 1, 3])
    np.testing.assert_array_equal(dedup(np.array([5])), [5])
    assert len(dedup(np.array([], dtype=np.int64))) == 0
    f = np.arange(10, dtype=np.float32).reshape(5, 2)
    np.testing.assert_array_equal(pool_frames(f, 1), f)
    np.testing.assert_array_equal(pool_frames(f, 2), [[1, 2], [5, 6]])  # the odd last frame is dropped
    np.testing.assert_array_equal(pool_frames(f[:1], 2), f[:1])


def test_no_dedup_gives_one_unit_per_frame(codebook, wavs, mel_settings):
    raw = Codebook(codebook.centroids, mel_settings(**{**codebook.settings.__dict__, "dedup": False}))
    u = raw.encode(wavs[0])
    assert len(u) == len(MelFeatures()([wavs[0]])[0])
    assert dedup(np.array(u)).tolist() == codebook.encode(wavs[0])


def test_log_mel_shape_and_frames():
    rng = np.random.default_rng(0)
    for n in (16000, 16050, 8000 + 159):
        m = log_mel(rng.standard_normal(n).astype(np.float32) * 0.1)
        assert tuple(m.shape) == (80, n // 160)
        assert float(m.max()) - float(m.min()) <= 2.0 + 1e-6  # dynamic range clamped to 8 dB·log10 / 4
    assert tuple(log_mel(np.zeros(3200, np.float32), n_mels=128).shape) == (128, 20)
    assert n_frames(16000) == 50 and n_frames(1) == 1


def test_mel_features_shape(wavs):
    feats = MelFeatures()(wavs)
    for w, f in zip(wavs, feats):
        assert f.dtype == np.float32 and f.shape == (-(-(len(w) // 160) // 2), 160)


def test_too_little_audio_for_k_is_an_error(mel_settings):
    with pytest.raises(ValueError, match="frames to fit k=16"):
        fit_codebook([np.zeros(1600, np.float32)], mel_settings())


def test_unknown_backend_is_an_error():
    with pytest.raises(ValueError, match="unknown speech feature backend"):
        build_features("hubert")


@pytest.mark.slow
def test_whisper_features_use_each_clip_own_length_and_ignore_batch_mates(corpus):
    """whisper-base (CTranslate2, offline preset): a clip's features do not depend on its batch."""
    feats = build_features("whisper", "whisper-base", -1, compute_type="int8", pad_quantum=0.5)
    all_wavs = corpus.wavs(corpus.train)
    # clips of several padded lengths, and two of the same padded length (batched together)
    wavs = [all_wavs[0], all_wavs[1][:12000], all_wavs[2], all_wavs[1][:11000]]
    together = feats(wavs)
    for w, f in zip(wavs, together):
        assert f.shape == (n_frames(len(w)), feats.dim)
        alone = feats([w])[0]
        np.testing.assert_array_equal(f, alone)
    # reversed order, one batch each: same again
    for w, f in zip(wavs[::-1], feats(wavs[::-1])):
        np.testing.assert_array_equal(f, feats([w])[0])


@pytest.mark.slow
def test_whisper_engines_agree_and_layers_are_selectable(corpus):
    """transformers (any layer) and CTranslate2 (last layer) give the same last-layer features."""
    wavs = corpus.wavs(corpus.train)[:3]
    ct2 = build_features("whisper", "whisper-base", -1, compute_type="float32")(wavs)
    hf = build_features("whisper-hf", "whisper-base", -1)
    last = hf(wavs)
    for a, b in zip(ct2, last):
        assert a.shape == b.shape
        assert np.abs(a - b).max() < 1e-2 * np.abs(a).max()
    mid = build_features("whisper-hf", "whisper-base", 3)(wavs)
    assert mid[0].shape == last[0].shape and not np.allclose(mid[0], last[0])
    with pytest.raises(ValueError, match="layer"):
        build_features("whisper", "whisper-base", 3)
