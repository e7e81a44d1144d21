"""Unit vocoder, speech out and ASR judging: tiny models on the toy corpus (CPU, seconds).

The toy corpus' codebook is a 16-unit log-mel codebook that deduplicates units (50 Hz), so
the vocoder trained here exercises the duration predictor; a non-deduplicating 25 Hz config
is checked for shapes and exact lengths.
"""

from __future__ import annotations

import json
import shutil
import sys
import types
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from dmlm.util.audio import load_audio, write_wav
from dmlm.data.manifest import read_manifest
from dmlm.evaluation.judge import judge
from dmlm.tokenizers.speech import Codebook, CodebookMismatch
from dmlm.vocoder import NoVocoder, Vocoder, VocoderConfig, run_lengths, train_vocoder
from dmlm.vocoder.network import UnitToSpec, pad_batch
from dmlm.vocoder.spectrogram import griffin_lim, log_magnitude

TINY = dict(dim=32, unit_layers=2, frame_dim=32, frame_layers=1, duration_dim=16, n_fft=256, win_length=256,
            gl_iters=4, dropout=0.0, target="linear", speaker_conditioning=False)
TINY_MEL = {**TINY, "target": "mel", "n_mels": 20}


def tiny_cfg(**kw) -> VocoderConfig:
    return VocoderConfig(**{**TINY, "k": 16, "frame_rate": 25.0, "codebook_fingerprint": "x", **kw})


class EchoJudge:
    """A fake judge: says the same sentence for every clip (checks only the plumbing)."""

    def __init__(self, text: str = "the red cat runs"):
        self.text, self.calls = text, 0

    def transcribe(self, wavs):
        self.calls += 1
        assert all(w.dtype == np.float32 and w.ndim == 1 for w in wavs)
        return [self.text] * len(wavs)


@pytest.fixture(scope="module")
def vocoder_dir(corpus, tmp_path_factory) -> Path:
    """A tiny mel-target vocoder overfit on the 4 clips of tiny.jsonl (deduplicating mel codebook)."""
    out = tmp_path_factory.mktemp("voc") / "vocoder"
    cfg = VocoderConfig(**{**TINY_MEL, "batch_size": 4, "lr": 5e-3, "warmup": 0.05, "table_clips": 0})
    return train_vocoder(corpus.tiny, None, corpus.codebook, cfg, out, steps=80, progress=False)


# ------------------------------------------------------------------------------ model


def test_forward_shapes_and_padding_invariance():
    torch.manual_seed(0)
    cfg = tiny_cfg()
    assert cfg.upsample == 4 and cfg.n_bins == 129
    net = UnitToSpec(cfg).eval()
    seqs = [np.array([1, 2, 3, 4, 5, 6, 7]), np.array([3, 3, 9])]
    ids, mask = pad_batch(seqs)
    with torch.no_grad():
        out = net(ids, mask)
        alone = net(*pad_batch(seqs[1:]))
    assert out.shape == (2, 28, 129)
    assert torch.allclose(out[1, :12], alone[0], atol=1e-5)  # batch mates do not leak into a clip
    assert net.duration is None

    dcfg = tiny_cfg(dedup=True, frame_rate=50.0)
    dnet = UnitToSpec(dcfg).eval()
    assert dcfg.upsample == 2
    with torch.no_grad():
        assert dnet.duration(ids, mask).shape == (2, 7)


def test_hop_must_divide_the_frame_rate():
    with pytest.raises(ValueError, match="hop"):
        tiny_cfg(frame_rate=30.0).upsample


def test_run_lengths():
    u, d = run_lengths(np.array([5, 5, 3, 3, 3, 7]))
    assert u.tolist() == [5, 3, 7] and d.tolist() == [2, 3, 1]
    assert np.repeat(u, d).tolist() == [5, 5, 3, 3, 3, 7]
    assert len(run_lengths(np.array([], dtype=np.int64))[0]) == 0


def test_griffin_lim_inverts_a_true_magnitude():
    t = torch.arange(16_000) / 16_000
    wav = 0.5 * torch.sin(2 * np.pi * 220 * t) * torch.hann_window(16_000)
    spec = log_magnitude(wav, 512, 160, 512)[None, :100]  # (1, 100, 257)
    out = griffin_lim(spec, 512, 160, 512, n_iter=32)
    assert out.shape == (1, 16_000)
    rebuilt = log_magnitude(out[0], 512, 160, 512)[:100]
    assert (rebuilt.exp() - spec[0].exp()).abs().mean() < 0.15 * spec[0].exp().mean()


def test_synthesize_float32_16k_length_from_units():
    voc = Vocoder(tiny_cfg())
    units = np.random.default_rng(0).integers(0, 16, 50)  # 2 s at 25 Hz
    wav = voc.synthesize(units)
    assert wav.dtype == np.float32 and wav.shape == (50 * 640,)  # exactly len / frame_rate seconds
    assert np.isfinite(wav).all() and np.abs(wav).max() <= 1.0
    batch = voc.synthesize_batch([units, units[:10], units[:30].tolist()])
    assert [len(w) for w in batch] == [32_000, 6_400, 19_200]


# ------------------------------------------------------------------------------ training


def test_overfit_drops_the_loss(vocoder_dir, codebook):
    info = json.loads((vocoder_dir / "config.json").read_text())
    hist = info["training"]["history"]
    assert info["training"]["steps"] == 80 and info["training"]["final"]
    assert hist[-1]["spec"] < 0.5 * hist[0]["spec"], hist
    assert "dur" in hist[-1]  # the deduplicating codebook trains the duration predictor
    assert info["codebook_fingerprint"] == codebook.fingerprint and info["dedup"] is True
    assert not list(vocoder_dir.parent.glob(".*tmp"))  # saved atomically, no temp left


def test_unit_table_gives_a_head_start(vocoder_dir, corpus, tmp_path):
    cfg = VocoderConfig(**{**TINY_MEL, "batch_size": 4, "table_clips": 4})
    out = train_vocoder(corpus.tiny, None, corpus.codebook, cfg, tmp_path / "v", steps=10, progress=False)
    with_table = json.loads((out / "config.json").read_text())["training"]["history"][0]["spec"]
    without = json.loads((vocoder_dir / "config.json").read_text())["training"]["history"][0]["spec"]
    assert with_table < 0.5 * without


def test_several_manifests_pool_their_records(corpus, tmp_path):
    """Audio of the output voice beyond the paired corpus: a second manifest (its own folder, its
    own store) joins the training clips and the matching set; ids may not repeat across them."""
    from dmlm.data.manifest import write_manifest
    from dmlm.vocoder import add_matching_set

    recs = read_manifest(corpus.tiny)
    other = tmp_path / "elsewhere"
    other.mkdir()
    for r in recs[2:]:  # the second manifest's audio sits beside it: paths resolve per manifest
        shutil.copy(r.audio_path(corpus.tiny), other / Path(r.audio).name)
    write_manifest(tmp_path / "a.jsonl", [replace(r, audio=str(r.audio_path(corpus.tiny))) for r in recs[:2]])
    write_manifest(other / "b.jsonl", [replace(r, audio=Path(r.audio).name) for r in recs[2:]])
    cfg = VocoderConfig(**{**TINY_MEL, "batch_size": 4, "table_clips": 0, "matching_clips": 10})
    out = train_vocoder([tmp_path / "a.jsonl", other / "b.jsonl"], None, corpus.codebook, cfg, tmp_path / "v",
                        steps=3, progress=False)
    info = json.loads((out / "config.json").read_text())["training"]
    assert info["records"] == len(recs)
    assert info["manifests"] == [str((tmp_path / "a.jsonl").resolve()), str((other / "b.jsonl").resolve())]
    one = train_vocoder(corpus.tiny, None, corpus.codebook, cfg, tmp_path / "v1", steps=3, progress=False)
    assert len(Vocoder.load(out).matching.frames) == len(Vocoder.load(one).matching.frames)  # every clip's frames
    add_matching_set(out, [tmp_path / "a.jsonl", other / "b.jsonl"], [None, None], corpus.codebook, progress=False)
    assert len(Vocoder.load(out).matching.frames) == len(Vocoder.load(one).matching.frames)
    write_manifest(tmp_path / "dup.jsonl", [replace(recs[0], audio=str(recs[0].audio_path(corpus.tiny)))])
    with pytest.raises(ValueError, match=r"dup\.jsonl: record .* is also in .*a\.jsonl"):
        train_vocoder([tmp_path / "a.jsonl", tmp_path / "dup.jsonl"], None, corpus.codebook, cfg, tmp_path / "v2",
                      steps=1, progress=False)
    with pytest.raises(ValueError, match="2 manifests but 1 units stores"):
        train_vocoder([tmp_path / "a.jsonl", other / "b.jsonl"], [tmp_path / "u"], corpus.codebook, cfg,
                      tmp_path / "v3", steps=1, progress=False)
    with pytest.raises(ValueError, match="2 manifests but one units store"):
        train_vocoder([tmp_path / "a.jsonl", other / "b.jsonl"], tmp_path / "u", corpus.codebook, cfg,
                      tmp_path / "v4", steps=1, progress=False)
    assert not (tmp_path / "v2").exists() and not (tmp_path / "v3").exists()


def test_speaker_conditioned_vocoder_speaks_in_one_voice(corpus, tmp_path):
    cfg = VocoderConfig(**{**TINY, "batch_size": 4, "speaker_conditioning": True})
    out = train_vocoder(corpus.tiny, None, corpus.codebook, cfg, tmp_path / "v", steps=3, progress=False)
    voc = Vocoder.load(out)
    assert voc.cfg.voices == ["en-us+m3"] and voc.cfg.voice == "en-us+m3"
    units = [1, 2, 3, 4, 5]
    assert np.allclose(voc.synthesize(units), voc.synthesize(units, voice="en-us+m3"))
    with pytest.raises(ValueError, match="unknown voice 'nobody'.*en-us\\+m3"):
        voc.synthesize(units, voice="nobody")
    with pytest.raises(ValueError, match="no voices"):
        Vocoder(tiny_cfg()).synthesize(units, voice="en-us+m3")


def test_each_language_is_spoken_in_a_voice_of_its_own(corpus, tmp_path):
    """Trained on two languages' voices, the vocoder keeps each language's voice with most clips and
    speaks units of a language in it; an explicit voice wins, an unseen language gets the default voice."""
    from dmlm.data.manifest import write_manifest
    from dmlm.inference import vocode

    rows = [("en", "en-us+m3"), (None, "en-us+m3"), ("en", "en-us+m3"), ("en", "en-us+f2"),  # no lang: English
            ("es", "es+m1"), ("es", "es+m1"), ("es", "es+f2")]
    recs = read_manifest(corpus.train)[: len(rows)]
    write_manifest(tmp_path / "two.jsonl", [replace(r, lang=lang, speaker=spk, audio=str(r.audio_path(corpus.train)))
                                            for r, (lang, spk) in zip(recs, rows)])
    cfg = VocoderConfig(**{**TINY, "batch_size": 4, "table_clips": 0, "speaker_conditioning": True})
    out = train_vocoder(tmp_path / "two.jsonl", None, corpus.codebook, cfg, tmp_path / "v", steps=3, progress=False)
    voc = Vocoder.load(out)
    assert voc.cfg.voice == "en-us+m3" and voc.cfg.voice_by_lang == {"en": "en-us+m3", "es": "es+m1"}
    assert json.loads((out / "config.json").read_text())["voice_by_lang"] == {"en": "en-us+m3", "es": "es+m1"}
    units = [1, 2, 3, 4, 5, 6, 7]
    es, en = voc.synthesize(units, voice="es+m1"), voc.synthesize(units)
    assert np.array_equal(voc.synthesize(units, lang="es"), es) and not np.allclose(es[: len(en)], en[: len(es)])
    assert np.allclose(voc.synthesize_batch([units, units[:4]], lang="es")[0], es, atol=1e-5)  # padding: float noise
    assert np.array_equal(vocode(voc, [np.asarray(units)], lang="es")[0], es)
    assert np.array_equal(voc.synthesize(units, lang="en"), en) and np.array_equal(voc.synthesize(units, lang="de"), en)
    assert np.array_equal(voc.synthesize(units, voice="en-us+f2", lang="es"), voc.synthesize(units, voice="en-us+f2"))
    with pytest.raises(ValueError, match="unknown voice 'nobody'.*es\\+m1"):
        voc.synthesize_batch([units], voice="nobody", lang="es")
    # a user's voice stays the voice of the language it speaks most
    mine = train_vocoder(tmp_path / "two.jsonl", None, corpus.codebook, replace(cfg, voice="en-us+f2"), tmp_path / "v2",
                         steps=1, progress=False)
    assert Vocoder.load(mine).cfg.voice_by_lang == {"en": "en-us+f2", "es": "es+m1"}
    # without speaker conditioning there is one voice for every language
    plain = Vocoder(tiny_cfg())
    assert plain.cfg.voice_by_lang == {} and np.array_equal(plain.synthesize(units, lang="es"), plain.synthesize(units))


def test_matching_set_replaces_frames_by_real_frames_of_the_same_unit():
    from dmlm.vocoder import MatchingSet

    # unit 1: frames at 0 and 10; unit 2: frames at 5 and 6; unit 3 never seen; r = 2 frames per unit
    clips = [(np.array([1, 2]), torch.tensor([[0.0], [10.0], [5.0], [6.0]]))]
    m = MatchingSet.build(clips, k=4, r=2, voice="v")
    assert m.bounds.tolist() == [0, 0, 2, 4, 4] and m.frames.dtype == torch.float16
    pred = torch.tensor([[1.0], [9.0], [1.0], [3.0]])
    units = torch.tensor([1, 1, 2, 3])
    out = m.refine(pred, units, knn=1)
    # nearest real frame of the frame's own unit (unit 2's nearest to 1.0 is 5, not unit 1's 0); unit 3 unseen: kept
    assert out[:, 0].tolist() == [0.0, 10.0, 5.0, 3.0]
    assert m.refine(pred, units, knn=5)[:, 0].tolist() == [5.0, 5.0, 5.5, 3.0]  # k past the unit's frames: all of them
    with pytest.raises(ValueError, match="bounds"):
        MatchingSet(m.frames[:3], m.bounds)


def test_matching_with_context_compares_the_neighbouring_frames(tmp_path):
    from dmlm.vocoder import MatchingSet

    rng = np.random.default_rng(0)
    clips = [(rng.integers(0, 3, n), torch.as_tensor(rng.normal(size=(2 * n, 4)), dtype=torch.float32)) for n in (5, 7, 1)]
    m = MatchingSet.build(clips, k=3, r=2, voice="v")
    flat = torch.cat([f for _, f in clips]).half().float()
    unit_of = np.concatenate([np.repeat(u, 2) for u, _ in clips])
    start = np.concatenate([[s] * len(f) for s, (_, f) in zip(np.cumsum([0, 10, 14])[:3], clips)])
    end = start + np.concatenate([[len(f)] * len(f) for _, f in clips])
    # prev / next: the frame before / after in the same clip, itself at the edges
    rows = {tuple(m.frames[i].float().tolist()): i for i in range(len(m.frames))}
    for j in range(len(flat)):
        i = rows[tuple(flat[j].tolist())]
        assert torch.equal(m.frames[m.prev[i]].float(), flat[max(j - 1, start[j])])
        assert torch.equal(m.frames[m.next[i]].float(), flat[min(j + 1, end[j] - 1)])
    # brute force: two clips of predictions, context 2 at stride 2 (offsets -4..4), knn 2
    pred = torch.as_tensor(rng.normal(size=(10, 4)), dtype=torch.float32)
    units = torch.as_tensor(rng.integers(0, 3, 10))
    lengths, offs = [6, 4], [-4, -2, 0, 2, 4]

    def window(x, j, s, e):
        return torch.cat([x[min(max(j + o, s), e - 1)] for o in offs])

    want = pred.clone()
    for j in range(10):
        s, e = (0, 6) if j < 6 else (6, 10)
        cands = [c for c in range(len(flat)) if unit_of[c] == int(units[j])]
        d = torch.stack([(window(flat, c, start[c], end[c]) - window(pred, j, s, e)).norm() for c in cands])
        want[j] = flat[[cands[i] for i in d.topk(2, largest=False).indices]].mean(0)
    got = m.refine(pred, units, knn=2, context=2, stride=2, lengths=lengths)
    assert torch.allclose(got, want, atol=1e-5)
    assert not torch.allclose(got, m.refine(pred, units, knn=2))  # the context changed the choice
    # saved and loaded with its order; a set saved without it cannot match with context
    m.save(tmp_path)
    assert MatchingSet.saved_with_context(tmp_path)
    assert torch.allclose(MatchingSet.load(tmp_path).refine(pred, units, 2, 2, 2, lengths), got)
    old = MatchingSet(m.frames, m.bounds, "v")
    assert torch.equal(old.refine(pred, units, knn=2), m.refine(pred, units, knn=2))
    with pytest.raises(ValueError, match="rebuild it: `dmlm vocoder match MODEL`"):
        old.refine(pred, units, knn=2, context=1)
    old.save(tmp_path)
    assert not MatchingSet.saved_with_context(tmp_path) and not MatchingSet.saved_with_context(tmp_path / "none")
    with pytest.raises(ValueError, match="clip lengths sum to 9"):
        m.refine(pred, units, knn=2, context=1, lengths=[5, 4])


def test_trained_vocoder_keeps_a_matching_set(vocoder_dir, corpus, codebook, tmp_path):
    from dmlm.vocoder.files import MATCHING
    from dmlm.vocoder import add_matching_set

    voc = Vocoder.load(vocoder_dir)
    assert (vocoder_dir / MATCHING).is_file() and voc.matching is not None and voc.cfg.knn > 0
    assert len(voc.matching.frames) > 0 and int(voc.matching.bounds[-1]) == len(voc.matching.frames)
    units = [np.asarray(codebook.encode(load_audio(r.audio_path(corpus.tiny))), dtype=np.int64)
             for r in read_manifest(corpus.tiny)]
    matched = voc.synthesize_batch(units)
    assert [w.shape for w in matched] == [w.shape for w in (voc.synthesize(u) for u in units)]
    assert all(np.allclose(a, voc.synthesize(u), atol=1e-4) for a, u in zip(matched, units))  # batch mates do not leak
    plain = replace(voc.cfg, knn=0)
    assert not np.allclose(Vocoder(plain, voc.net).synthesize(units[0]), matched[0], atol=1e-4)
    # a vocoder saved without one (older, or killed before its last save) gets the same set rebuilt
    old = tmp_path / "old"
    shutil.copytree(vocoder_dir, old)
    (old / MATCHING).unlink()
    assert Vocoder.load(old).matching is None
    add_matching_set(old, corpus.tiny, None, corpus.codebook, progress=False)
    again = Vocoder.load(old).matching
    assert torch.equal(again.frames, voc.matching.frames) and torch.equal(again.bounds, voc.matching.bounds)
    assert Vocoder.load(old, matching=False).matching is None  # what a rebuild loads: not the set it replaces


def test_durations_restore_timing(vocoder_dir, corpus, codebook):
    voc = Vocoder.load(vocoder_dir, codebook=codebook)
    wav = load_audio(read_manifest(corpus.tiny)[0].audio_path(corpus.tiny))
    units = codebook.encode(wav)  # deduplicated
    full = voc.expand([np.asarray(units)])[0]
    assert len(full) >= len(units)
    out = voc.synthesize(units)
    assert out.dtype == np.float32 and 0.5 * len(wav) < len(out) < 2 * len(wav)


def test_train_needs_a_bound_and_a_store(corpus, tmp_path):
    with pytest.raises(ValueError, match="steps"):
        train_vocoder(corpus.tiny, None, corpus.codebook, tiny_cfg(), tmp_path / "v")
    cb = Codebook.load(corpus.codebook)
    cb.settings.dedup = False  # another fingerprint, and no longer deduplicating
    with pytest.raises(ValueError, match="store"):
        train_vocoder(corpus.tiny, None, cb, VocoderConfig(**TINY), tmp_path / "v", steps=1)


def test_target_cache_and_bf16_training(corpus, tmp_path):
    """The in-memory target cache changes speed, never results; bf16 autocast trains too."""
    from safetensors.torch import load_file

    def run(name, steps=12, **kw):
        cfg = VocoderConfig(**{**TINY_MEL, "batch_size": 2, "table_clips": 4, **kw})
        return train_vocoder(corpus.tiny, None, corpus.codebook, cfg, tmp_path / name, steps=steps, progress=False)

    a, b = load_file(str(run("cached") / "model.safetensors")), load_file(str(run("uncached", cache_gb=0) / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    hist = json.loads((run("bf16", 40, precision="bf16", lr=5e-3) / "config.json").read_text())["training"]["history"]
    assert hist[-1]["spec"] < hist[0]["spec"], hist
    with pytest.raises(ValueError, match="precision must be fp32, bf16 or auto, got 'fp16'"):
        run("bad", precision="fp16")
    from dmlm.vocoder.train import _bf16

    assert _bf16("fp32", "cpu") is False and _bf16("bf16", "cpu") is True and isinstance(_bf16("auto", "cpu"), bool)


def test_bad_units_are_clear_errors():
    voc = Vocoder(tiny_cfg())
    with pytest.raises(ValueError, match=r"unit id 16 is outside \[0, 16\).*k=16"):
        voc.synthesize([1, 2, 16])
    with pytest.raises(ValueError, match="unit id -1"):
        voc.synthesize_batch([[1, 2], [-1]])
    with pytest.raises(ValueError, match="empty"):
        voc.synthesize([])
    with pytest.raises(ValueError, match="empty"):
        voc.synthesize_batch([[1, 2], []])


def test_vocoder_for_another_codebook_is_refused(vocoder_dir, codebook, tmp_path):
    other = Codebook(codebook.centroids + 1.0, codebook.settings)
    with pytest.raises(CodebookMismatch, match="trained for speech codebook"):
        Vocoder.load(vocoder_dir, codebook=other)


def fake_checkpoint(root: Path, corpus, vocoder_dir: Path | None) -> Path:
    """The parts of a checkpoint that speech out reads: dmlm.json, codebooks/, vocoder/."""
    cb = Codebook.load(corpus.codebook)
    ck = root / "model"
    (ck / "codebooks").mkdir(parents=True)
    shutil.copy(corpus.codebook, ck / "codebooks" / "speech.safetensors")
    (ck / "dmlm.json").write_text(json.dumps({"vocab": {"fingerprints": {"speech": cb.fingerprint}}}))
    if vocoder_dir is not None:
        shutil.copytree(vocoder_dir, ck / "vocoder")
    return ck


def test_checkpoint_without_vocoder_says_how_to_train_one(corpus, tmp_path):
    from dmlm.inference import resynthesize
    from dmlm.modeling import CheckpointFiles

    files = CheckpointFiles(fake_checkpoint(tmp_path, corpus, None))
    with pytest.raises(NoVocoder, match="dmlm vocoder train"):
        cb = files.load_codebook("speech")
        resynthesize(cb, files.load_vocoder(cb), np.zeros(16_000, np.float32))


def test_failed_write_leaves_no_partial_file(tmp_path, monkeypatch):
    import soundfile

    target = tmp_path / "out.wav"

    def broken(path, data, sr, subtype=None):
        Path(path).write_bytes(b"RIFF....partial")
        raise OSError("disk full")

    monkeypatch.setattr(soundfile, "write", broken)
    with pytest.raises(OSError, match="disk full"):
        write_wav(target, np.zeros(100, np.float32))
    assert list(tmp_path.iterdir()) == []
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OSError):
        write_wav(blocker / "out.wav", np.zeros(100, np.float32))  # parent is a file: unwritable
    assert [p.name for p in tmp_path.iterdir()] == ["file"]


# ------------------------------------------------------------------------------ speech out


def test_resynthesize_a_checkpoint_folder(vocoder_dir, corpus, tmp_path):
    from dmlm.inference import resynthesize
    from dmlm.modeling import CheckpointFiles

    files = CheckpointFiles(fake_checkpoint(tmp_path, corpus, vocoder_dir))
    cb = files.load_codebook("speech")
    src = read_manifest(corpus.dev)[0].audio_path(corpus.dev)
    out = tmp_path / "out" / "resynth.wav"
    write_wav(out, resynthesize(cb, files.load_vocoder(cb), load_audio(src)))
    wav, ref = load_audio(out), load_audio(src)
    import soundfile

    assert soundfile.info(str(out)).samplerate == 16_000
    assert 0.5 * len(ref) < len(wav) < 2 * len(ref) and np.abs(wav).max() > 0.01


def _patch_synthesize_units(monkeypatch, fn):
    """Install `fn` as dmlm.inference.synthesize_units, whether or not dmlm.inference exists yet."""
    try:
        import dmlm.inference as infer
    except ImportError:
        infer = types.ModuleType("dmlm.inference")
        monkeypatch.setitem(sys.modules, "dmlm.inference", infer)
    monkeypatch.setattr(infer, "synthesize_units", fn, raising=False)


def _loaded_fake_checkpoint(root, corpus, vocoder_dir, codebook):
    from dmlm.modeling import Checkpoint

    path = fake_checkpoint(root, corpus, vocoder_dir)
    ck = Checkpoint(path, model=None, tokenizer=None, vocab=None, meta={})
    ck._codebooks["speech"] = codebook
    ck._vocoder = Vocoder.load(vocoder_dir, codebook=codebook)
    return ck


def test_speak_through_synthesize_units(vocoder_dir, corpus, codebook, tmp_path, monkeypatch):
    from dmlm.api import DMLM
    from dmlm.decoding import DecodingOptions

    def speak(ck, text, opts=None):  # through the front door's speak (units, then the vocoder)
        return DMLM(ck).speak([text], options=opts)[0].samples

    def patch_units(fn):  # the units DMLM.speak vocodes come from its synthesize_units
        monkeypatch.setattr(DMLM, "synthesize_units", lambda self, texts, *, lang="en", return_details=False,
                            options=None, **kw: fn(self.checkpoint, texts, lang=lang, opts=options))

    store_units = {r.text: codebook.encode(load_audio(r.audio_path(corpus.tiny))) for r in read_manifest(corpus.tiny)}
    seen = {}

    def fake(ck, texts, *, lang="en", opts=None):
        seen["opts"] = opts
        return [np.asarray(store_units.get(t, [1, 2, 3])) for t in texts]

    patch_units(fake)
    ck = _loaded_fake_checkpoint(tmp_path, corpus, vocoder_dir, codebook)
    text = read_manifest(corpus.tiny)[0].text
    opts = DecodingOptions(strategy="sample", temperature=0.8, seed=3)
    wav = speak(ck, text, opts)
    assert seen["opts"] is opts
    assert wav.dtype == np.float32 and 0.2 < len(wav) / 16_000 < 5
    write_wav(tmp_path / "speak.wav", wav)
    assert len(load_audio(tmp_path / "speak.wav")) == len(wav)

    patch_units(lambda ck, texts, *, lang="en", opts=None: [np.zeros(0, np.int64) for _ in texts])
    with pytest.raises(ValueError, match="no speech units"):
        speak(ck, text)


def test_judge_with_a_fake_judge():
    res = judge([np.zeros(1600, np.float32)] * 2, ["the red cat runs", "a big dog"], EchoJudge())
    assert res["hyps"] == ["the red cat runs"] * 2
    assert res["wer"] == pytest.approx(100 * 4 / 7)  # second clip: 3 substitutions + 1 insertion; 7 words
    with pytest.raises(ValueError, match="2 clips but 1"):
        judge([np.zeros(10, np.float32)] * 2, ["x"], EchoJudge())


def test_build_judge_picks_a_checkpoint_or_whisper(tmp_path, monkeypatch):
    import dmlm.evaluation.judge as J

    made = []
    monkeypatch.setattr(J, "CheckpointJudge", lambda path, language: made.append(("ck", path, language)) or "ck")
    monkeypatch.setattr(J, "WhisperJudge",
                        lambda name, engine, language: made.append(("whisper", name, engine, language)) or "w")
    (tmp_path / "dmlm.json").write_text("{}")
    assert J.build_judge(str(tmp_path)) == "ck"
    assert J.build_judge("whisper-base", "transformers", language="es") == "w"
    assert made == [("ck", str(tmp_path), "en"), ("whisper", "whisper-base", "transformers", "es")]


def test_evaluate_resynthesis_writes_report_examples_and_plot(vocoder_dir, corpus, codebook, tmp_path):
    from dmlm.data.split import Split
    from dmlm.evaluation.options import EvalOptions
    from dmlm.evaluation.speech import evaluate_resynthesis

    j = EchoJudge(read_manifest(corpus.dev)[0].text)
    out = tmp_path / "eval"
    rep = evaluate_resynthesis(Codebook.load(corpus.codebook), Vocoder.load(vocoder_dir), Split(corpus.dev, corpus.units / "dev"),
                               j, EvalOptions(limit=3), out_dir=out)
    assert rep["task"] == "resynthesis" and rep["scores"]["seen"]["utterances"] == 3
    assert 0 <= rep["wer"] and "original_wer" in rep and j.calls == 2
    assert rep["vocoder_voice"] is None and "vocoder_voice" not in rep["scores"]  # not speaker-conditioned
    assert json.loads((out / "report.json").read_text())["wer"] == rep["wer"]
    assert len((out / "hyps.jsonl").read_text().splitlines()) == 3
    assert (out / "spectrograms.png").stat().st_size > 1000
    wavs = sorted((out / "examples").glob("*.wav"))
    assert wavs and all(load_audio(w).dtype == np.float32 for w in wavs)
    assert not [p for p in out.rglob(".*")]  # no temp files left


def test_scores_group_the_vocoders_own_voice():
    from dmlm.data.manifest import Record
    from dmlm.evaluation.speech import _score

    recs = [Record(id=str(i), text="a red cat", speaker=spk, custom={"heldout_voice": hv})
            for i, (spk, hv) in enumerate([("joe", False), ("m3", False), ("joe", False), ("f4", True)])]
    wavs = [np.zeros(1600, np.float32)] * 4
    scores, _ = _score(recs, wavs, EchoJudge("a red cat"), voice="joe")
    assert scores["seen"]["utterances"] == 3 and scores["heldout_voice"]["utterances"] == 1
    assert scores["vocoder_voice"]["utterances"] == 2
    assert "vocoder_voice" not in _score(recs, wavs, EchoJudge("a red cat"))[0]


def test_resynthesis_can_judge_every_clip_in_the_vocoders_voice(tmp_path):
    from dmlm.data.manifest import Record, write_manifest
    from dmlm.evaluation.speech import _score, pick_records

    rows = [("joe", False), ("m3", False), ("m3", False), ("joe", False), ("f4", True), ("joe", False),
            ("m3", False), ("joe", False), ("f4", True)]
    man = tmp_path / "t.jsonl"
    write_manifest(man, [Record(id=str(i), text="a red cat", speaker=s, custom={"heldout_voice": h})
                         for i, (s, h) in enumerate(rows)])
    ids = lambda recs: [r.id for r in recs]  # noqa: E731
    recs, extra = pick_records(man, 2)
    assert ids(recs) == ["0", "1", "4", "8"] and extra == 0
    recs, extra = pick_records(man, 2, "joe", None)  # every joe clip past the first 2 training-voice ones
    assert ids(recs) == ["0", "1", "4", "8", "3", "5", "7"] and extra == 3
    recs, extra = pick_records(man, 2, "joe", 3)  # joe has 1 among the first 2: 2 more
    assert ids(recs) == ["0", "1", "4", "8", "3", "5"] and extra == 2
    assert pick_records(man, 2, "joe", 1)[1] == 0 and pick_records(man, None, "joe", None) == (pick_records(man, None)[0], 0)
    # the extra clips count in the voice's group only
    recs, extra = pick_records(man, 2, "joe", None)
    wavs = [np.zeros(1600, np.float32)] * len(recs)
    scores, hyps = _score(recs, wavs, EchoJudge("a red cat"), voice="joe", voice_only=extra)
    assert scores["seen"]["utterances"] == 2 and scores["heldout_voice"]["utterances"] == 2
    assert scores["vocoder_voice"]["utterances"] == 4 and len(hyps) == 7
    # n=0: the vocoder's voice alone (the demo's resynthesis_eval: 0), scored as that group only
    recs, extra = pick_records(man, 0, "joe", None)
    assert ids(recs) == ["0", "3", "5", "7"] and extra == 4
    assert ids(pick_records(man, 0, "joe", 2)[0]) == ["0", "3"]
    scores, _ = _score(recs, [np.zeros(1600, np.float32)] * 4, EchoJudge("a red cat"), voice="joe", voice_only=extra)
    assert list(scores) == ["vocoder_voice"] and scores["vocoder_voice"]["utterances"] == 4


def test_once_judge_hears_each_clip_once():
    from dmlm.evaluation.judge import OnceJudge
    from dmlm.evaluation.speech import _judge_name

    class Counting:
        normalizer = "whisper_english"

        def __init__(self):
            self.heard = 0

        def transcribe(self, wavs):
            self.heard += len(wavs)
            return [f"{len(w)}" for w in wavs]

    inner = Counting()
    j = OnceJudge(inner)
    a, b = np.zeros(1600, np.float32), np.ones(800, np.float32)
    assert j.transcribe([a, b, a.copy()]) == ["1600", "800", "1600"] and inner.heard == 2
    assert j.transcribe([b, np.ones(900, np.float32)]) == ["800", "900"] and inner.heard == 3
    assert j.transcribe([a.astype(np.float64)]) == ["1600"] and inner.heard == 3  # the same samples as float32
    # everything else is the inner judge's: its normalizer scores, its name is reported
    assert j.normalizer == "whisper_english" and _judge_name(j) == "Counting"


def test_t2s_texts_prefer_recordings_in_the_vocoders_voice(tmp_path):
    from dmlm.data.manifest import Record, write_manifest
    from dmlm.evaluation.speech import pick_texts

    rows = [("a cat", "m3", False), ("a cat", "joe", False), ("a dog", "f4", True), ("a dog", "joe", False),
            ("a hen", "m3", False), ("a pig", "f4", True)]
    man = tmp_path / "t.jsonl"
    write_manifest(man, [Record(id=str(i), text=t, speaker=s, custom={"heldout_voice": h}) for i, (t, s, h) in enumerate(rows)])
    assert [r.id for r in pick_texts(man, None, "joe")] == ["1", "3", "4", "5"]
    assert [r.id for r in pick_texts(man, 3)] == ["0", "3", "4"]  # no voice: training voices first, manifest order


def test_evaluate_t2s_audio_counts_empty_outputs(vocoder_dir, corpus, codebook, tmp_path, monkeypatch):
    from dmlm.data.split import Split
    from dmlm.evaluation.options import EvalOptions
    from dmlm.evaluation.speech import evaluate_t2s_audio, t2s_units

    calls = []

    def fake(ck, texts, *, lang="en", opts=None):
        calls.append(len(texts))
        return [np.array([1, 2, 3, 4] * 5) if i % 2 else np.zeros(0, np.int64) for i, _ in enumerate(texts)]

    _patch_synthesize_units(monkeypatch, fake)
    ck = _loaded_fake_checkpoint(tmp_path, corpus, vocoder_dir, codebook)
    split, four = Split(corpus.dev), EvalOptions(limit=4, original=False)
    units = t2s_units(ck, split, options=four)
    rep = evaluate_t2s_audio(ck, split, EchoJudge(), options=four, out_dir=tmp_path / "t2s", units=units)
    assert rep["empty_outputs"] == 2 and rep["scores"]["all"]["utterances"] == 4
    assert (tmp_path / "t2s" / "report.json").is_file() and (tmp_path / "t2s" / "spectrograms.png").is_file()
    # a second judge of the same model and options hears the same units, generated once
    again = evaluate_t2s_audio(ck, split, EchoJudge("a b"), options=four, units=units)
    assert calls == [4] and again["empty_outputs"] == 2 and again["wer"] != rep["wer"]


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["ctranslate2", "transformers"])
def test_whisper_judge_on_real_speech(engine, corpus):
    from dmlm.evaluation.judge import WhisperJudge

    recs = read_manifest(corpus.train)[:3]
    wavs = [load_audio(r.audio_path(corpus.train)) for r in recs]
    j = WhisperJudge("whisper-base", engine=engine)
    res = judge(wavs, [r.text for r in recs], j)
    assert all(h.strip() for h in res["hyps"]), res["hyps"]
    assert res["wer"] < 60, res  # clean en-us espeak-ng: Whisper-base gets most words


def test_changed_settings_sorts_settings_by_what_they_need():
    from dataclasses import asdict

    from dmlm.vocoder import VocoderConfig

    saved = asdict(VocoderConfig())
    new = VocoderConfig(dim=128, knn=4, matching_clips=10, k=7)  # k is filled in by training: never a change
    assert new.changed_settings(saved) == ["dim"]
    assert new.changed_settings(saved, "synthesis") == ["knn"]
    assert new.changed_settings(saved, "matching") == ["matching_clips"]
    with pytest.raises(ValueError, match="kind"):
        new.changed_settings(saved, "other")


def test_record_ids_never_choose_where_example_files_go():
    from dmlm.evaluation.speech import safe_name

    assert safe_name("mw-test-000001") == "mw-test-000001"
    for rid in ("../../etc/x", "/abs/path", "a/b\\c", "..", "x" * 300):
        name = safe_name(rid)
        assert "/" not in name and "\\" not in name and not name.startswith(".") and 0 < len(name) <= 120


# ------------------------------------------------------------------------------ saved vocoders and their settings

# config.json as dmlm wrote it before the config was split by kind (`asdict` of the flat VocoderConfig of
# dmlm/vocoder/model.py, every field, in its order), for a tiny deduplicating, speaker-conditioned vocoder
OLD_CONFIG_JSON = {
    "format_version": 1, "dim": 32, "unit_layers": 2, "frame_dim": 32, "frame_layers": 1, "kernel": 5, "dropout": 0.0,
    "duration_dim": 16, "target": "mel", "n_mels": 20, "n_fft": 256, "hop": 160, "win_length": 256, "gl_iters": 4,
    "gl_momentum": 0.99, "gl_power": 1.2, "knn": 2, "knn_context": 0, "knn_stride": 2, "centroid_init": True,
    "table_clips": 4, "matching_clips": 4000, "cache_gb": 2.0, "batch_size": 16, "precision": "fp32", "lr": 0.002,
    "warmup": 0.05, "weight_decay": 0.01, "max_seconds": 8.0, "speakers": None, "seed": 0, "speaker_conditioning": True,
    "codebook_fingerprint": "x", "k": 16, "frame_rate": 50.0, "dedup": True, "voices": ["a", "b"], "voice": "b",
    "training": {"steps": 9, "seconds": 1.0, "loss": 0.5, "history": [], "manifests": ["/data/train.jsonl"],
                 "records": 4, "final": True},
}

# the weights' names in model.safetensors of such a vocoder: renaming a module breaks every saved vocoder
OLD_WEIGHT_NAMES = sorted(
    [f"{p}.{i}.{m}.{w}" for p, n in (("duration.blocks", 2), ("unit_blocks", 2), ("frame_blocks", 1)) for i in range(n)
     for m in ("conv1", "conv2", "norm") for w in ("bias", "weight")]
    + ["duration.emb.weight", "duration.out.bias", "duration.out.weight", "emb.weight", "out.bias", "out.weight",
       "out_norm.bias", "out_norm.weight", "phase", "proj.bias", "proj.weight", "speaker.weight", "table.weight"])


def _old_vocoder_folder(folder: Path) -> dict[str, torch.Tensor]:
    """A vocoder folder written the way dmlm wrote it before: config.json, model.safetensors and a
    matching set without frame order; returns the weights."""
    from safetensors.torch import save_file

    torch.manual_seed(0)
    cfg = VocoderConfig.from_dict(OLD_CONFIG_JSON)
    weights = {k: v + 0.01 * torch.randn_like(v) for k, v in UnitToSpec(cfg).state_dict().items()}  # no zero layer
    folder.mkdir(parents=True)
    save_file(weights, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(OLD_CONFIG_JSON, indent=1))
    frames = torch.randn(32, 20).half()
    save_file({"frames": frames, "bounds": torch.arange(17) * 2}, str(folder / "matching.safetensors"),
              metadata={"voice": "b"})
    return weights


def test_a_vocoder_saved_before_the_split_loads_and_speaks_the_same(tmp_path):
    from safetensors.torch import load_file

    weights = _old_vocoder_folder(tmp_path / "old")
    assert sorted(weights) == OLD_WEIGHT_NAMES
    voc = Vocoder.load(tmp_path / "old")
    assert voc.cfg == VocoderConfig.from_dict(OLD_CONFIG_JSON) and voc.voice == "b" and voc.matching is not None
    assert not voc.matching.has_context
    net = UnitToSpec(voc.cfg)
    net.load_state_dict(load_file(str(tmp_path / "old" / "model.safetensors")))
    units = np.random.default_rng(0).integers(0, 16, 30)
    same = Vocoder(voc.cfg, net, voc.matching).synthesize(units)
    assert np.array_equal(voc.synthesize(units), same)
    # saved again, it writes the same settings under the same keys, and its training record
    voc.save(tmp_path / "again", OLD_CONFIG_JSON["training"])
    assert json.loads((tmp_path / "again" / "config.json").read_text()) == OLD_CONFIG_JSON
    assert np.array_equal(Vocoder.load(tmp_path / "again").synthesize(units), same)


def test_a_vocoder_saved_before_voices_by_language_speaks_every_language_in_its_voice(tmp_path):
    _old_vocoder_folder(tmp_path / "old")
    voc = Vocoder.load(tmp_path / "old")
    assert voc.cfg.voice_by_lang == {} and voc.voice_for("es") == "b" and voc.voice_for("es", "a") == "a"
    units = np.random.default_rng(0).integers(0, 16, 30)
    assert np.array_equal(voc.synthesize(units, lang="es"), voc.synthesize(units))


def test_update_changes_synthesis_settings_only(tmp_path):
    from dmlm.vocoder import VocoderFiles, kind_of

    _old_vocoder_folder(tmp_path / "v")
    voc = Vocoder.load(tmp_path / "v")
    units = np.random.default_rng(1).integers(0, 16, 20)
    before = voc.synthesize(units)
    assert voc.update(knn=2, gl_iters=8) == {"gl_iters": 8}  # knn is already 2: nothing to write for it
    assert voc.cfg.gl_iters == 8 and not np.array_equal(voc.synthesize(units), before)
    saved = json.loads((tmp_path / "v" / "config.json").read_text())
    assert saved == {**OLD_CONFIG_JSON, "gl_iters": 8}  # every other key, the training record too, as it was
    assert Vocoder.load(tmp_path / "v").cfg == voc.cfg
    for name in ("dim", "lr", "k"):  # architecture, training, spec: a new network
        with pytest.raises(ValueError, match=f"{name} cannot change after training"):
            voc.update(**{name: 1})
    with pytest.raises(ValueError, match="unknown vocoder setting 'nope'"):
        voc.update(nope=1)
    assert json.loads((tmp_path / "v" / "config.json").read_text()) == saved  # a refused update writes nothing
    assert [kind_of(n) for n in ("dim", "knn", "matching_clips", "lr", "voice")] == \
        ["architecture", "synthesis", "matching", "training", "spec"]
    # a new matching_clips: the set of the old count goes, with its file
    assert voc.update(matching_clips=3) == {"matching_clips": 3} and voc.matching is None
    assert not (tmp_path / "v" / "matching.safetensors").exists()
    files = VocoderFiles(tmp_path / "v")
    assert files.exists and files.config().matching_clips == 3 and files.trained_on() == ["/data/train.jsonl"]
    with pytest.raises(ValueError, match="neither loaded nor saved"):
        Vocoder(voc.cfg).update(knn=1)
