"""Unit merges in the recipes (`codebook_merges`): a codebook file of their own per merge count that shares the unit
codebook's token stores, reused on a re-run and refused when it holds other merges; the speech tokens per second
of training audio that study rows report; and a tiny study and a tiny demo that train and score on merged pieces."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dmlm.data.manifest import Record, read_manifest, write_manifest
from dmlm.data.shards import build_store
from dmlm.recipes.stages import fit_merges, merged_codebook_path, speech_tokens_per_second
from dmlm.tokenizers.speech import Codebook, CodebookSettings
from dmlm.tokenizers.unit_bpe import UnitBPE
from dmlm.util.errors import UserError

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "studies"


# -- speech tokens per second of audio ---------------------------------------------------------------

def _store(tmp_path: Path, cb: Codebook, units: dict[str, list[int]], durations: dict[str, float]) -> Path:
    """A manifest of records with those durations (and one text-only record) and its unit store made with `cb`."""
    records = [Record(id=i, split="train", lang="en", audio=f"wav/{i}.wav", duration=durations[i], text="a b")
               for i in units] + [Record(id="text-only", split="train", lang="en", text="no audio")]
    manifest = tmp_path / "train.jsonl"
    write_manifest(manifest, records)
    with_audio = [r for r in records if r.audio]
    build_store(with_audio, lambda chunk: [units[r.id] for r in chunk], tmp_path / "units" / "train",
                {"fingerprint": cb.fingerprint, "modality": "speech"})
    return manifest


def test_speech_tokens_per_second_counts_the_pieces_training_reads(tmp_path):
    from dmlm.vocab import Vocab

    cb = Codebook(np.eye(4, dtype=np.float32), CodebookSettings(backend="mel", model=None, layer=None, k=4, pooling=1))
    units = {"a": [0, 1, 0, 1, 2], "b": [0, 1, 3]}
    manifest = _store(tmp_path, cb, units, {"a": 1.0, "b": 3.0})
    assert speech_tokens_per_second(manifest, tmp_path / "units", cb) == 8 / 4.0  # units: 8 in 4 s
    merged = cb.with_bpe(UnitBPE(k=4, merges=((0, 1),), base=cb.fingerprint))  # piece 4 = units (0, 1)
    # a: 4 4 2, b: 4 3 -> 5 pieces in 4 s; what the training vocabulary renders, counted independently
    assert speech_tokens_per_second(manifest, tmp_path / "units", merged) == 5 / 4.0
    vocab = Vocab(text_size=10, speech_size=merged.pieces, version=2, speech_bpe=merged.bpe.to_dict(),
                  fingerprints={"speech": cb.fingerprint, "speech_bpe": merged.bpe.fingerprint})
    assert sum(len(vocab.speech_ids(u)) for u in units.values()) == 5
    # a store made with another codebook is refused, as training refuses it
    other = Codebook(2 * np.eye(4, dtype=np.float32), cb.settings)
    with pytest.raises(UserError, match="fingerprint|codebook"):
        speech_tokens_per_second(manifest, tmp_path / "units", other)


# -- the merged codebook file: one per count, reused, refused when it holds other merges ---------------

def test_merges_are_fitted_once_into_their_own_file_and_refused_when_other(corpus, codebook, tmp_path):
    import shutil

    unit_cb = shutil.copy(corpus.codebook, tmp_path / "codebook.safetensors")
    path = merged_codebook_path(Path(unit_cb), 8)
    assert path.name == "codebook-merges8.safetensors" and merged_codebook_path(Path(unit_cb), 0) == Path(unit_cb)
    assert fit_merges(codebook, 0, corpus.train, corpus.units, path) is codebook and not path.exists()
    merged = fit_merges(codebook, 8, corpus.train, corpus.units, path)
    assert merged.bpe is not None and 0 < len(merged.bpe.merges) <= 8 and merged.fingerprint == codebook.fingerprint
    assert Codebook.load(path).bpe == merged.bpe
    assert Codebook.load(unit_cb).bpe is None  # the unit codebook (the stores' and the vocoder's) is untouched
    mtime = path.stat().st_mtime_ns
    assert fit_merges(codebook, 8, corpus.train, corpus.units, path).bpe == merged.bpe  # a re-run reuses the file
    assert path.stat().st_mtime_ns == mtime
    # a file there without merges, or with merges of another codebook: refused, naming the file
    other = tmp_path / "other-merges8.safetensors"
    codebook.save(other)
    with pytest.raises(UserError, match="other-merges8.safetensors holds no unit merges"):
        fit_merges(codebook, 8, corpus.train, corpus.units, other)
    stranger = Codebook(codebook.centroids + 1.0, codebook.settings)
    with pytest.raises(UserError, match=f"unit merges of codebook {codebook.fingerprint}, not merges of codebook "
                                        f"{stranger.fingerprint}"):
        fit_merges(stranger, 8, corpus.train, corpus.units, path)


def test_a_study_gives_each_merge_count_its_own_codebook_and_shares_the_stores(tmp_path):
    """Arms with other merge counts never share a merged codebook file, arms with the same count do, and all of them
    share the unit codebook (the key an arm without merges always had) and so its token stores."""
    from dmlm.recipes.study import Shared, load_study_config

    cfg = load_study_config(str(CONFIGS / "unit-bpe.yaml"), [])
    shared = Shared(tmp_path)
    arms = {a.name: cfg.arm_config(a) for a in cfg.arms}
    paths = {n: shared.codebook_paths(c, "data-x")[0] for n, c in arms.items()}
    merged = {n: merged_codebook_path(paths[n], c.codebook_merges) for n, c in arms.items()}
    assert paths["units"] == paths["merges-500"] == paths["merges-1000"] == merged["units"]
    assert len({merged["units"], merged["merges-500"], merged["merges-1000"], merged["dedup-merges-1000"]}) == 4
    assert paths["dedup"] == paths["dedup-merges-1000"] != paths["units"] and merged["dedup"] == paths["dedup"]
    assert merged["merges-1000"].name == f"{paths['units'].stem}-merges1000.safetensors"
    # the same count twice: the same file (its seeds and any other arm with those settings share it)
    again = cfg.arm_config(cfg.arms[2], seed=7)
    assert merged_codebook_path(shared.codebook_paths(again, "data-x")[0], again.codebook_merges) == merged["merges-1000"]
    # the reference arm's codebook is the codebook study's reference arm's (one k-means, one Whisper pass for both)
    codebook_study = load_study_config(str(CONFIGS / "codebook.yaml"), [])
    assert shared.codebook_paths(codebook_study.arm_config(codebook_study.arms[0]), "data-x")[0] == paths["units"]


def test_negative_merges_are_refused_when_the_config_loads():
    from dmlm.recipes.study import load_study_config
    from dmlm.util.config import ConfigError

    with pytest.raises(ConfigError, match="codebook_merges: must be >= 0"):
        load_study_config(None, ["name=x", "arms=[{name: a, overrides: [codebook_merges=-1]}]"])


# -- end to end: a study and a demo on merged pieces ------------------------------------------------------

TINY_BASE = [
    "base.prepare.n_train=40", "base.prepare.n_dev=4", "base.prepare.n_test=6", "base.prepare.n_unpaired=0",
    "base.prepare.images=false", "base.codebook.backend=mel", "base.codebook.k=16", "base.codebook.pooling=1",
    "base.codebook_fit_utts=40", "base.processes=1", "base.run.data.tasks=[asr, t2s]", "base.run.data.bpe_vocab_size=300",
    "base.run.model.hidden_size=32", "base.run.model.layers=1", "base.run.model.heads=2",
    "base.run.model.intermediate_size=64", "base.run.train.steps=6", "base.run.train.batch_tokens=1500",
    "base.run.train.eval_every=3", "base.run.train.save_every=3", "base.run.train.warmup_steps=1",
    "base.run.train.log_every=1", "base.decoding.max_new_per_prompt=0.5", "base.t2s_decoding.max_new_tokens=60",
]


def test_a_tiny_study_trains_and_scores_on_merged_units(tmp_path):
    import dmlm
    from dmlm.data.split import Split
    from dmlm.recipes.study import load_study_config, run_study
    from dmlm.util.io import read_jsonl

    out = tmp_path / "study"
    cfg = load_study_config(None, ["name=tiny", f"out={out}", "seeds=[0]", "docs=", "bootstrap=200",
                                   "arms=[{name: units}, {name: m12, overrides: [codebook_merges=12]}]",
                                   "metrics=[asr.wer, t2s.unit_accuracy]", *TINY_BASE])
    s = run_study(cfg)
    rows = {r["arm"]: r for r in read_jsonl(out / "runs.jsonl")}
    shared = out / "shared"
    unit_cb = next(p for p in shared.glob("codebook-*.safetensors") if "merges" not in p.name)
    assert sorted(p.name for p in shared.glob("codebook-*.safetensors")) == sorted(
        [unit_cb.name, f"{unit_cb.stem}-merges12.safetensors"])
    assert len(list(shared.glob("units-*"))) == 1  # one Whisper pass (here: mel) serves every merge count
    merged = Codebook.load(shared / f"{unit_cb.stem}-merges12.safetensors")
    assert rows["units"]["unit_merges"] == 0 and rows["m12"]["unit_merges"] == len(merged.bpe.merges) > 0
    # the model read pieces: its checkpoint carries the merges, its vocabulary has the merged pieces
    model = dmlm.load(out / "runs" / "m12" / "seed0" / "model")
    assert model.vocab.unit_bpe == merged.bpe and model.vocab.speech_size == merged.pieces
    # speech tokens per second of training audio: fewer with merges, as counted on the training store
    units_dir = Path(rows["m12"]["config"]["run"]["data"]["units"])
    train = Path(rows["m12"]["config"]["run"]["data"]["train"])
    store = Split(train, units_dir).store("speech")
    records = [r for r in read_manifest(train) if r.audio]
    seconds = sum(r.duration for r in records)
    n_units = sum(len(store.get(r.id)) for r in records)
    n_pieces = sum(len(p) for p in merged.bpe.encode_batch([store.get(r.id) for r in records]))
    assert rows["units"]["speech_tokens_per_s"] == pytest.approx(n_units / seconds, abs=1e-3)
    assert rows["m12"]["speech_tokens_per_s"] == pytest.approx(n_pieces / seconds, abs=1e-3)
    assert n_pieces < n_units
    for r in rows.values():
        assert r["examples"] > 0 and 0 <= r["metrics"]["asr.wer"] and 0 <= r["metrics"]["t2s.unit_accuracy"] <= 100
    # ASR hypotheses are text; T2S's were scored on units (0..15), expanded from the pieces the model wrote
    hyps = read_jsonl(rows["m12"]["hyps"]["asr"])
    assert hyps and all(isinstance(h["hyp"], str) for h in hyps)
    t2s = read_jsonl(rows["m12"]["hyps"]["t2s"])
    assert t2s and all(0 <= u < 16 for h in t2s for u in h["hyp"] + h["ref"]) and any(h["hyp"] for h in t2s)
    # the summary: the figure beside the scores, per arm
    assert {a["name"]: a["runs"][0]["speech_tokens_per_s"] for a in s["arms"]} == {
        n: r["speech_tokens_per_s"] for n, r in rows.items()}
    md = (out / "tiny.md").read_text()
    assert "speech tokens/s of training audio |" in md and "examples (mean) |" in md
    assert f"| {rows['m12']['speech_tokens_per_s']:.1f} |" in md


def test_a_tiny_demo_trains_on_merged_units(tmp_path):
    from dmlm.recipes.demo import load_demo_config, run_demo

    cfg = load_demo_config(None, [
        f"out={tmp_path / 'demo'}", "codebook_merges=12", "vocoder_minutes=0", "asr_only_batch_tokens=0",
        *(a.removeprefix("base.") for a in TINY_BASE if not a.startswith("base.prepare.images"))])
    rep = run_demo(cfg)
    out = tmp_path / "demo"
    merged = Codebook.load(out / "codebook-merges12.safetensors")
    assert Codebook.load(out / "codebook.safetensors").bpe is None  # the stores' and the vocoder's codebook
    assert rep["codebook"]["merges"] == len(merged.bpe.merges) > 0 and rep["codebook"]["pieces"] == merged.pieces
    assert rep["codebook"]["speech_tokens_per_s"] > 0
    meta = json.loads((out / "model" / "dmlm.json").read_text())
    assert meta["vocab"]["fingerprints"]["speech_bpe"] == merged.bpe.fingerprint
    assert 0 <= rep["tasks"]["asr"]["wer"] and 0 <= rep["tasks"]["t2s"]["unit_accuracy"] <= 100
    # a re-run reuses the merges and the model; another count in the same folder would resume a model trained on
    # other pieces: refused, not trained on a mix
    mtime = (out / "model" / "model.safetensors").stat().st_mtime_ns
    assert run_demo(cfg)["codebook"]["merges_fingerprint"] == merged.bpe.fingerprint
    assert (out / "model" / "model.safetensors").stat().st_mtime_ns == mtime
    from dataclasses import replace

    with pytest.raises(UserError, match="vocabulary differs"):
        run_demo(replace(cfg, codebook_merges=6))
