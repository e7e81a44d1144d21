"""`dmlm demo` end to end on a tiny corpus: every stage runs and the report has a row per task."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

def _tiny_demo(tmp_path, *extra):
    from dmlm.recipes.demo import load_demo_config

    return load_demo_config(None, [
        f"out={tmp_path / 'demo'}", "prepare.n_train=40", "prepare.n_dev=4", "prepare.n_test=6", "prepare.n_unpaired=30",
        "codebook.backend=mel", "codebook.k=16", "codebook.pooling=1", "codebook_fit_utts=40",
        "image_codebook.k=16", "image_codebook_fit_images=40", "processes=1", "asr_only_batch_tokens=400",
        "run.data.tasks=[asr, 's2tt:es', t2s, i2t, text_lm, 'text_lm:es', speech_lm, image_lm]",
        "run.data.weights=[2, 1, 1, 1, 1, 1, 1, 1]", "run.data.bpe_vocab_size=400",
        "run.model.hidden_size=64", "run.model.layers=2", "run.model.heads=2", "run.model.intermediate_size=128",
        "run.train.steps=6", "run.train.batch_tokens=1200", "run.train.eval_every=3", "run.train.save_every=3",
        "run.train.warmup_steps=1", "run.train.log_every=1", *extra,
    ])


def test_tiny_demo_without_vocoder(tmp_path):
    from dmlm.recipes.demo import run_demo

    from dmlm.data.synth import training_voices

    # T2S on chosen speakers (every training voice here): the ASR-only model must not inherit the t2s entry
    # each model its own loss, as in configs/demo.yaml
    losses = ("run.train.loss=target_length_normalized", "asr_only_loss=length_normalized")
    rep = run_demo(_tiny_demo(tmp_path, "vocoder_minutes=0", "prepare.neural_extra=2",
                              f"run.data.speakers={json.dumps({'t2s': training_voices()})}", *losses))
    out = tmp_path / "demo"
    assert "loss: target_length_normalized" in (out / "model" / "training_state" / "config.yaml").read_text()
    assert "loss: length_normalized" in (out / "model_asr" / "training_state" / "config.yaml").read_text()
    assert (rep["train"]["mixture"]["loss"], rep["train"]["asr_only"]["loss"]) == ("target_length_normalized", "length_normalized")
    from dmlm.data.shards import TokenStore

    assert len(TokenStore(out / "units" / "neural_extra")) == 2  # the vocoder's extra audio gets its units
    tasks = rep["tasks"]
    assert {"asr", "asr_only", "s2tt:es", "i2t", "t2s", "text_lm", "text_lm:es", "speech_lm", "image_lm"} <= set(tasks)
    assert 0 <= tasks["asr"]["wer"] and "baseline_bleu" in tasks["s2tt:es"] and "baseline_cider" in tasks["i2t"]
    assert 0 <= tasks["t2s"]["unit_accuracy"] <= 100 and tasks["text_lm"]["perplexity"] > 1
    assert rep["train"]["mixture"]["steps"] == rep["train"]["asr_only"]["steps"] == 6
    assert rep["train"]["mixture"]["tokens_per_step"]["image"] > 0 and rep["train"]["asr_only"]["tokens_per_step"]["image"] == 0
    saved = json.loads((out / "report.json").read_text())
    assert saved["tasks"]["s2tt:es"]["bleu"] == tasks["s2tt:es"]["bleu"]
    intervals = {r["score"]: r for r in json.loads((out / "intervals.json").read_text())["scores"]}
    assert intervals["S2TT en→es BLEU"]["value"] == pytest.approx(tasks["s2tt:es"]["bleu"])
    assert intervals["ASR WER %"]["ci95"][0] <= tasks["asr"]["wer"] <= intervals["ASR WER %"]["ci95"][1]
    md = (out / "report.md").read_text()
    for row in ("ASR (mixture model)", "ASR (ASR-only model)", "S2TT en→es", "I2T captioning", "T2S", "## I2T captioning examples"):
        assert row in md
    assert "](data/img/" in md  # captions shown next to their images
    # where the time went: wall and CPU seconds of every stage (the training ran in this process)
    assert set(rep["stages_cpu_seconds"]) == set(rep["stages_seconds"]) and rep["stages_cpu_seconds"]["train"] > 0
    assert "| stage | wall s | CPU s | cores busy |" in md and "| train_asr_only |" in md
    assert "loss target_length_normalized" in md and "loss length_normalized" in md  # each model's loss is stated
    assert (out / "loss.png").is_file() and (out / "loss_asr_only.png").is_file()
    # `dmlm report RUN` renders the results page from report.json alone
    from dmlm.cli import main

    (out / "report.md").unlink()
    assert main(["report", str(out), "--results", str(tmp_path / "results.md")]) == 0
    assert (out / "report.md").read_text() == md
    res = (tmp_path / "results.md").read_text()
    assert f"dmlm report {out}" in res and "| S2TT en→es |" in res and f"| BLEU | {tasks['s2tt:es']['bleu']:.2f} |" in res
    assert "Wall time" in res and "mixture model: 6 steps" in res
    assert f"| S2TT en→es BLEU | {tasks['s2tt:es']['bleu']:.2f} | [" in res and "95 % bootstrap intervals" in md
    assert json.loads((tmp_path / "results.json").read_text())["tasks"] == tasks
    import dmlm

    assert dmlm.load(out / "model").tasks == ["asr", "s2tt:es", "t2s", "i2t", "text_lm", "text_lm:es", "speech_lm", "image_lm"]
    # a re-run resumes: nothing is trained again, the report is rebuilt
    mtime = (out / "model" / "model.safetensors").stat().st_mtime_ns
    evals = {p.name: p.stat().st_mtime_ns for p in (out / "eval").glob("*.json")}
    again = run_demo(_tiny_demo(tmp_path, "vocoder_minutes=0", "prepare.neural_extra=2", *losses))
    assert (out / "model" / "model.safetensors").stat().st_mtime_ns == mtime
    assert {p.name: p.stat().st_mtime_ns for p in (out / "eval").glob("*.json")} == evals  # evaluations reused
    assert again["tasks"] == tasks
    assert rep["train"]["mixture"]["example_share"]["asr"] > 0 and rep["train"]["mixture"]["tokens"] > 0


def test_stage_times_add_up_over_invocations(tmp_path):
    from dmlm.recipes.demo import _accumulate_stages

    p = tmp_path / "stages.json"
    _accumulate_stages(p, {"train": 10.0, "evaluate": 2.0}, {"train": 19.0, "evaluate": 1.0})
    a = _accumulate_stages(p, {"train": 0.5, "vocoder": 4.0}, {"train": 1.0, "vocoder": 7.5})["all_invocations"]
    assert a["invocations"] == 2 and a["stages_seconds"] == {"train": 10.5, "evaluate": 2.0, "vocoder": 4.0}
    assert a["stages_cpu_seconds"] == {"train": 20.0, "evaluate": 1.0, "vocoder": 7.5}
    assert a["minutes"] == round(16.5 / 60, 2)


def _tiny_matching_set(folder: Path, clips: int = 1) -> None:
    """A real (tiny) matching set of `clips` clips, saved with its frames' order."""
    from dmlm.vocoder import MatchingSet

    MatchingSet.build([(np.array([1, 2]), torch.zeros(4, 3))] * clips, k=4, r=2, voice="en-us+m3").save(folder)


def test_a_finished_vocoder_is_reused_only_with_the_same_settings(tmp_path):
    from dataclasses import asdict

    from dmlm.recipes.demo import DemoConfig, train_demo_vocoder
    from dmlm.vocoder import VocoderConfig

    target = tmp_path / "model" / "vocoder"
    target.mkdir(parents=True)
    saved = {**asdict(VocoderConfig()), "voice": "en-us+m3", "voices": ["en-us+m3"], "k": 1000, "training": {"steps": 9}}
    (target / "config.json").write_text(json.dumps(saved))
    _tiny_matching_set(target)  # it has its matching set: nothing to build
    # same settings: reused (no training data exists here, so training would fail)
    train_demo_vocoder(DemoConfig(), [tmp_path / "missing.jsonl"], tmp_path)
    other = DemoConfig(vocoder=VocoderConfig(speakers=["piper:en_US-joe-medium"]))
    with pytest.raises(ValueError, match="other settings.*speakers"):
        train_demo_vocoder(other, [tmp_path / "missing.jsonl"], tmp_path)
    # trained on other data (here: without the neural voice's extra audio): not reused either
    saved["training"]["manifests"] = [str((tmp_path / "missing.jsonl").resolve())]
    (target / "config.json").write_text(json.dumps(saved))
    train_demo_vocoder(DemoConfig(), [tmp_path / "missing.jsonl"], tmp_path)
    with pytest.raises(ValueError, match="other settings.*training manifests"):
        train_demo_vocoder(DemoConfig(), [tmp_path / "missing.jsonl", tmp_path / "neural_extra.jsonl"], tmp_path)
    saved["training"] = {"steps": 9, "manifest": str((tmp_path / "missing.jsonl").resolve())}  # saved before session 9
    (target / "config.json").write_text(json.dumps(saved))
    train_demo_vocoder(DemoConfig(), [tmp_path / "missing.jsonl"], tmp_path)


def test_a_finished_vocoder_takes_new_synthesis_settings_without_retraining(tmp_path):
    from dataclasses import asdict

    from dmlm.recipes.demo import DemoConfig, train_demo_vocoder
    from dmlm.recipes.stages import stamp as _stamp
    from dmlm.vocoder import VocoderConfig

    target = tmp_path / "model" / "vocoder"
    target.mkdir(parents=True)
    saved = {**asdict(VocoderConfig()), "voice": "en-us+m3", "voices": ["en-us+m3"], "k": 1000, "training": {"steps": 9}}
    del saved["gl_power"]  # a vocoder saved before the field existed: its default
    (target / "config.json").write_text(json.dumps(saved))
    (target / "model.safetensors").write_bytes(b"weights")
    _tiny_matching_set(target)
    (tmp_path / "model" / "model.safetensors").write_bytes(b"dmlm weights")
    stamp, text_stamp = _stamp(tmp_path / "model", vocoder=True), _stamp(tmp_path / "model")
    train_demo_vocoder(DemoConfig(), [tmp_path / "missing.jsonl"], tmp_path)  # nothing changed: untouched
    assert json.loads((target / "config.json").read_text()) == saved
    new = DemoConfig(vocoder=VocoderConfig(gl_iters=32, gl_power=1.3))
    train_demo_vocoder(new, [tmp_path / "missing.jsonl"], tmp_path)  # no training data: it did not retrain
    now = json.loads((target / "config.json").read_text())
    assert (now["gl_iters"], now["gl_power"], now["training"]) == (32, 1.3, {"steps": 9})
    assert (target / "model.safetensors").read_bytes() == b"weights"
    assert _stamp(tmp_path / "model", vocoder=True) != stamp  # evaluations of the old settings are not reused
    assert _stamp(tmp_path / "model") == text_stamp  # but text tasks never read the vocoder: theirs are
    judge = tmp_path / "model_asr"
    judge.mkdir()
    (judge / "model.safetensors").write_bytes(b"judge weights")
    with_judge = _stamp(tmp_path / "model", vocoder=True, judge=judge)
    (judge / "model.safetensors").write_bytes(b"retrained judge weights")
    assert _stamp(tmp_path / "model", vocoder=True, judge=judge) != with_judge  # a new in-domain judge re-judges


def test_a_finished_vocoder_without_a_matching_set_gets_one(tmp_path, monkeypatch):
    from dataclasses import asdict

    import dmlm.vocoder.train as vt
    from dmlm.recipes.demo import DemoConfig, train_demo_vocoder
    from dmlm.vocoder import VocoderConfig

    target = tmp_path / "model" / "vocoder"
    target.mkdir(parents=True)
    saved = {**asdict(VocoderConfig()), "voice": "en-us+m3", "voices": ["en-us+m3"], "k": 1000, "training": {"steps": 9}}
    (target / "config.json").write_text(json.dumps(saved))
    calls = []
    monkeypatch.setattr(vt, "add_matching_set", lambda *a, **k: calls.append(a))
    train_demo_vocoder(DemoConfig(vocoder=VocoderConfig(knn=0)), [tmp_path / "train.jsonl"], tmp_path)
    assert calls == []  # knn off: no matching set needed
    train_demo_vocoder(DemoConfig(), [tmp_path / "train.jsonl"], tmp_path)
    assert calls == [(target, [tmp_path / "train.jsonl"], [tmp_path / "units" / "train"], tmp_path / "codebook.safetensors")]
    calls.clear()  # with the neural voice's extra audio: both manifests, each with its own units store
    (target / "matching.safetensors").unlink(missing_ok=True)
    train_demo_vocoder(DemoConfig(), [tmp_path / "train.jsonl", tmp_path / "neural_extra.jsonl"], tmp_path)
    assert calls[0][1:3] == ([tmp_path / "train.jsonl", tmp_path / "neural_extra.jsonl"],
                             [tmp_path / "units" / "train", tmp_path / "units" / "neural_extra"])


def test_a_new_matching_clips_rebuilds_only_the_matching_set(tmp_path, monkeypatch):
    from dataclasses import asdict

    import dmlm.vocoder.train as vt
    from dmlm.recipes.demo import DemoConfig, train_demo_vocoder
    from dmlm.vocoder import VocoderConfig

    target = tmp_path / "model" / "vocoder"
    target.mkdir(parents=True)
    saved = {**asdict(VocoderConfig()), "voice": "en-us+m3", "voices": ["en-us+m3"], "k": 1000, "training": {"steps": 9}}
    (target / "config.json").write_text(json.dumps(saved))
    (target / "model.safetensors").write_bytes(b"weights")
    from dmlm.vocoder import MatchingSet

    def a_set(n):
        _tiny_matching_set(target, n)

    a_set(4)
    calls = []

    def rebuild(folder, *args):
        calls.append(json.loads((Path(folder) / "config.json").read_text())["matching_clips"])
        assert not (Path(folder) / "matching.safetensors").exists()  # the stale set is gone first

    monkeypatch.setattr(vt, "add_matching_set", rebuild)
    train_demo_vocoder(DemoConfig(vocoder=VocoderConfig(matching_clips=100)), [tmp_path / "train.jsonl"], tmp_path)
    assert calls == [100]  # built from the new count, the network untouched (no training data here)
    now = json.loads((target / "config.json").read_text())
    assert (now["matching_clips"], now["training"]) == (100, {"steps": 9})
    assert (target / "model.safetensors").read_bytes() == b"weights"
    a_set(2)
    train_demo_vocoder(DemoConfig(vocoder=VocoderConfig(matching_clips=100)), [tmp_path / "train.jsonl"], tmp_path)
    assert calls == [100] and MatchingSet.saved_with_context(target)  # nothing changed: the set is kept
    # a set saved before frame order was kept cannot match with context: rebuilt, unless context is off
    m = MatchingSet.load(target)
    MatchingSet(m.frames, m.bounds, m.voice).save(target)
    train_demo_vocoder(DemoConfig(vocoder=VocoderConfig(matching_clips=100, knn_context=0)), [tmp_path / "train.jsonl"], tmp_path)
    assert calls == [100] and (target / "matching.safetensors").exists()
    train_demo_vocoder(DemoConfig(vocoder=VocoderConfig(matching_clips=100)), [tmp_path / "train.jsonl"], tmp_path)
    assert calls == [100, 100]
    a_set(2)
    train_demo_vocoder(DemoConfig(vocoder=VocoderConfig(matching_clips=0)), [tmp_path / "train.jsonl"], tmp_path)
    assert calls == [100, 100] and not (target / "matching.safetensors").exists()  # no set wanted: none kept


@pytest.mark.parametrize("tasks, named", [("[asr, karaoke]", "karaoke"), ("[asr, s2tt]", "s2tt")])
def test_a_task_the_evaluation_cannot_score_is_refused_when_the_config_loads(tmp_path, tasks, named):
    """Refused before hours of corpus making and training, not when the run reaches its evaluation."""
    from dmlm.util.errors import UserError

    with pytest.raises(UserError, match=named):
        _tiny_demo(tmp_path, f"run.data.tasks={tasks}", "run.data.weights=[]")
    assert not (tmp_path / "demo").exists()


def test_eval_tasks_score_trained_tasks_per_language_and_refuse_others(tmp_path):
    """eval_tasks replaces the mixture's specs in the evaluation (asr:en, asr:es of one `asr`); a task the
    mixture does not train is refused when the config loads."""
    from dmlm.recipes.demo import DemoConfig
    from dmlm.util.config import ConfigError

    cfg = DemoConfig(eval_tasks=["asr:en", "asr:es"])
    cfg.run.data.tasks, cfg.run.data.weights = ["asr", "t2s"], []
    cfg.validate()
    assert cfg.scored_tasks == ["asr:en", "asr:es"]
    cfg.eval_tasks = ["asr:es", "s2tt:es"]
    with pytest.raises(ConfigError, match=r"eval_tasks: \['s2tt:es'\]"):
        cfg.validate()


def test_max_words_limits_bible_verses_and_is_refused_elsewhere():
    from dmlm.data.prepare import PrepareConfig, check_settings
    from dmlm.util.errors import UserError

    check_settings(PrepareConfig(corpus="bible", max_words=14))
    for bad in (PrepareConfig(corpus="mini-world", max_words=14), PrepareConfig(corpus="bible", max_words=-1)):
        with pytest.raises(UserError, match="prepare.max_words"):
            check_settings(bad)
