"""Byte-pair merges over speech units: exact round trip, deterministic fit, bound to their codebook by
fingerprint, rendered by the vocabulary, and a model trained on pieces that listens and speaks units."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dmlm.tokenizers.speech import Codebook, CodebookMismatch, fit_unit_bpe
from dmlm.tokenizers.tokenize import fit_bpe
from dmlm.tokenizers.unit_bpe import UnitBPE, UnitBPEError
from dmlm.vocab import Vocab, VocabError


def _speechlike(n: int, k: int = 20, seed: int = 0) -> list[np.ndarray]:
    """Unit sequences with the structure merges find: recurring runs and recurring short patterns."""
    rng = np.random.default_rng(seed)
    words = [rng.integers(0, k, size=rng.integers(2, 5)) for _ in range(12)]
    out = []
    for _ in range(n):
        seq = np.concatenate([np.repeat(words[w], rng.integers(1, 3)) for w in rng.integers(0, 12, size=8)])
        out.append(seq)
    return out


@pytest.fixture(scope="module")
def bpe() -> UnitBPE:
    return UnitBPE.fit(_speechlike(200), k=20, merges=30, base="cafe")


# -- the merges ----------------------------------------------------------------------------------

def test_units_to_pieces_to_units_is_exact_for_any_units(bpe):
    rng = np.random.default_rng(1)
    seen = _speechlike(50)
    unseen = [rng.integers(0, 20, size=n) for n in (1, 2, 7, 300)]  # random: pairs never fitted on
    runs = [np.full(9, 4), np.array([3, 3, 3]), np.array([], dtype=np.int64)]
    for units in seen + unseen + runs:
        pieces = bpe.encode(units)
        assert bpe.decode(pieces) == units.tolist()
        assert all(0 <= p < bpe.vocab_size for p in pieces)
    batch = bpe.encode_batch(seen)
    assert batch == [bpe.encode(u) for u in seen]
    # pieces are real merges: the fitted corpus gets much shorter, and merged ids come after the units
    assert sum(map(len, batch)) < 0.7 * sum(map(len, seen))
    assert max(max(p) for p in batch) >= 20
    assert bpe.vocab_size == 20 + 30 and len(bpe.merges) == 30


def test_out_of_range_units_and_pieces_are_refused(bpe):
    with pytest.raises(UnitBPEError, match=r"out of range \[0, 20\)"):
        bpe.encode([1, 20])
    with pytest.raises(UnitBPEError, match=r"piece ids out of range \[0, 50\)"):
        bpe.decode([50])
    with pytest.raises(UnitBPEError, match="merge 0 joins pieces"):
        UnitBPE(k=4, merges=((0, 4),))


def test_fit_is_deterministic_under_any_hash_seed(bpe):
    script = ("import json; from tests.test_unit_bpe import _speechlike; from dmlm.tokenizers.unit_bpe import UnitBPE;"
              "print(json.dumps(UnitBPE.fit(_speechlike(200), k=20, merges=30, base='cafe').to_dict()))")
    outs = []
    for seed, threads in (("1", "1"), ("2", "2")):
        env = {**os.environ, "PYTHONHASHSEED": seed, "RAYON_NUM_THREADS": threads}
        run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True,
                             cwd=Path(__file__).resolve().parents[1])
        outs.append(json.loads(run.stdout))
    assert outs[0] == outs[1] == bpe.to_dict()


def test_merges_stop_at_pairs_seen_twice():
    bpe = UnitBPE.fit([np.array([0, 1, 2, 3]), np.array([0, 1, 5])], k=8, merges=10)
    assert bpe.merges == ((0, 1),)  # only (0, 1) occurs twice
    assert UnitBPE.fit([np.array([0, 1])], k=8, merges=0).merges == ()


def test_stored_merges_are_checked_against_their_fingerprint(bpe):
    d = bpe.to_dict()
    assert UnitBPE.from_dict(d) == bpe
    d["merges"] = d["merges"][:-1]  # a merge lost
    with pytest.raises(UnitBPEError, match=f"stored unit BPE fingerprint {bpe.fingerprint} != computed"):
        UnitBPE.from_dict(d, "cb.safetensors")


# -- the codebook carries them ---------------------------------------------------------------------

def test_codebook_file_carries_its_merges_and_refuses_another_codebooks(corpus, codebook, tmp_path, mel_settings):
    cb = fit_bpe(codebook, corpus.train, corpus.units, merges=6)
    assert cb.bpe is not None and cb.bpe.base == codebook.fingerprint and cb.pieces == 16 + 6
    assert cb.fingerprint == codebook.fingerprint  # the units (stores, vocoders) are the same units
    loaded = Codebook.load(cb.save(tmp_path / "cb_bpe.safetensors"))
    assert loaded.bpe == cb.bpe and loaded.bpe.fingerprint == cb.bpe.fingerprint
    assert Codebook.load(corpus.codebook).bpe is None  # a file without merges loads as before
    # merges fitted on one codebook cannot ride on another
    other = Codebook(codebook.centroids[::-1].copy(), mel_settings())
    with pytest.raises(CodebookMismatch, match=f"fitted on codebook {codebook.fingerprint}.*{other.fingerprint}"):
        other.with_bpe(cb.bpe)


def test_fitting_refuses_a_store_of_another_codebook(corpus, codebook, mel_settings):
    other = Codebook(codebook.centroids[::-1].copy(), mel_settings())
    with pytest.raises(CodebookMismatch, match=f"made with speech codebook {codebook.fingerprint}.*"
                                               f"given is {other.fingerprint}"):
        fit_bpe(other, corpus.train, corpus.units, merges=6)


def test_codebook_bpe_verb_writes_the_codebook_with_merges(corpus, tmp_path, capsys):
    from dmlm.cli import main

    out = tmp_path / "cb6.safetensors"
    assert main(["codebook", "bpe", str(corpus.codebook), str(corpus.train), "--units", str(corpus.units),
                 "--merges", "6", "-o", str(out)]) == 0
    assert Codebook.load(out).pieces == 22 and "6 merged pieces" in capsys.readouterr().out


# -- the vocabulary renders pieces -------------------------------------------------------------------

def test_vocabulary_renders_units_as_pieces_and_expands_them_exactly(bpe):
    fps = {"speech": "cafe", "speech_bpe": bpe.fingerprint}
    v = Vocab(text_size=300, speech_size=bpe.vocab_size, image_size=8, fingerprints=fps, speech_bpe=bpe.to_dict())
    assert v.version == 2 and v.speech_units == 20 and v.range("speech") == (556, 606)
    for units in _speechlike(20, seed=3):
        ids = v.speech_ids(units)
        assert len(ids) < len(units) and all(556 <= i < 606 for i in ids)
        assert v.ids_to_units([v.bos, *ids, v.close("speech")]) == units.tolist()
    with pytest.raises(VocabError, match=r"speech unit out of range \[0, 20\)"):
        v.speech_ids([25])  # a piece id is not a unit
    again = Vocab.from_dict(json.loads(json.dumps(v.to_dict())))
    assert again == v and again.speech_ids([1, 2, 3]) == v.speech_ids([1, 2, 3])
    assert len(v.token_strings()) == v.size - 300


def test_vocabulary_without_merges_is_written_as_before():
    v = Vocab(text_size=300, speech_size=16, fingerprints={"speech": "abc"})
    d = v.to_dict()
    assert "speech_bpe" not in d and d["version"] == 1
    assert v.speech_ids([0, 15]) == [556, 571] and v.ids_to_units([556, 571, 3]) == [0, 15]


def test_vocabulary_refuses_merges_that_do_not_fit(bpe):
    with pytest.raises(VocabError, match="speech range has 40 ids but the unit merges make 50"):
        Vocab(text_size=300, speech_size=40, speech_bpe=bpe.to_dict())
    with pytest.raises(VocabError, match=f"fitted on speech codebook cafe, the layout's is beef"):
        Vocab(text_size=300, speech_size=50, speech_bpe=bpe.to_dict(), fingerprints={"speech": "beef"})
    with pytest.raises(VocabError, match="fingerprints name unit merges 0123 but the layout has none"):
        Vocab(text_size=300, speech_size=16, fingerprints={"speech_bpe": "0123"})
    with pytest.raises(VocabError, match="newer than this dmlm"):
        Vocab.from_dict({**Vocab(text_size=300, speech_size=50, speech_bpe=bpe.to_dict()).to_dict(), "version": 3})


# -- end to end: train on pieces, listen and speak in units ---------------------------------------------

@pytest.fixture(scope="module")
def bpe_model(corpus, codebook, run_config, tmp_path_factory):
    from dmlm.training.train import train

    root = tmp_path_factory.mktemp("unit_bpe")
    cb_path = fit_bpe(codebook, corpus.train, corpus.units, merges=8).save(root / "cb_bpe8.safetensors")
    cfg = run_config(root / "model", f"data.codebook={cb_path}", 'data.tasks=["asr","t2s"]', "train.steps=60",
                     "train.lr=3e-3", "train.eval_every=1000", "train.save_every=1000", "train.log_every=10",
                     train=corpus.tiny, dev=corpus.tiny)
    return train(cfg), cb_path


def test_training_renders_pieces_and_the_checkpoint_records_the_merges(bpe_model, corpus, run_config, codebook):
    from dmlm.modeling import CheckpointFiles
    from dmlm.training.setup import setup

    model, cb_path = bpe_model
    cb = Codebook.load(cb_path)
    files = CheckpointFiles(model)
    meta = json.loads((model / "dmlm.json").read_text())
    vocab = Vocab.from_dict(meta["vocab"])
    assert vocab.speech_size == cb.pieces == 24 and vocab.unit_bpe == cb.bpe
    assert vocab.fingerprints == {"speech": cb.fingerprint, "speech_bpe": cb.bpe.fingerprint}
    assert files.load_codebook("speech").bpe == cb.bpe  # the checkpoint's codebook carries the merges
    with pytest.raises(CodebookMismatch, match=f"made with unit merges {cb.bpe.fingerprint}, but .* has none"):
        codebook.check_bpe(vocab.fingerprints.get("speech_bpe"), "checkpoint")
    # what training read: each record's units as pieces, shorter than the units
    S = setup(run_config(model.parent / "again", f"data.codebook={cb_path}", 'data.tasks=["asr"]',
                         train=corpus.tiny, dev=corpus.tiny))
    s0, s1 = S.vocab.range("speech")
    speech = [[i for i in r.ids if s0 <= i < s1] for r in S.train]
    assert any(i >= s0 + 16 for ids in speech for i in ids)  # merged pieces occur
    from dmlm.data.shards import TokenStore
    from dmlm.data.split import store_prefix

    store = TokenStore(store_prefix(corpus.units, corpus.tiny))
    assert sum(map(len, speech)) < sum(len(store[i]) for i in range(len(store)))
    assert sorted(S.vocab.ids_to_units(ids) for ids in speech) == sorted(store[i].tolist() for i in range(len(store)))


def test_a_model_on_pieces_transcribes_waveforms_and_speaks_units(bpe_model, corpus):
    import dmlm
    from dmlm.vocoder import VocoderConfig, train_vocoder

    model, cb_path = bpe_model
    m = dmlm.load(model)
    wav = corpus.wavs(corpus.tiny)[0]
    assert isinstance(m.transcribe(wav), str)  # waveform -> units -> pieces in the prompt
    res = m.synthesize_units("the red cat runs", return_details=True)
    s0 = m.vocab.range("speech")[0]
    pieces = [i - s0 for i in res.ids if i >= s0]
    expanded = [u for p in pieces for u in m.vocab.unit_bpe.piece_units(p)]
    assert res.units.tolist() == expanded and all(0 <= u < 16 for u in expanded)
    # the vocoder (trained on unit stores) takes the expanded units
    train_vocoder([corpus.tiny], [corpus.units / "tiny"], model / "codebooks" / "speech.safetensors",
                  VocoderConfig(dim=32, frame_dim=32, batch_size=2), model / "vocoder", steps=2, progress=False)
    audio = dmlm.load(model).speak("the red cat runs", max_new_tokens=40)
    assert len(audio.samples) > 0 and np.isfinite(audio.samples).all()
