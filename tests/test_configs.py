"""Every shipped YAML config loads into its dataclass (unknown keys or bad types would fail)."""

from __future__ import annotations

from pathlib import Path

import pytest

from dmlm.training.config import RunConfig
from dmlm.util.config import ConfigError, load_config

CONFIGS = Path(__file__).parent.parent / "configs"


def test_demo_config():
    from dmlm.recipes.demo import load_demo_config

    cfg = load_demo_config(str(CONFIGS / "demo.yaml"), [])
    assert cfg.codebook.k == 1000 and cfg.codebook.pooling == 2 and not cfg.codebook.dedup
    assert cfg.processes == 2
    # the mixture covers every registered task, in fixed steps, but S2ST: its English-only corpus has no
    # speech in another language to translate into (configs/multilingual.yaml trains those)
    from dmlm.tasks import TASKS, scoring_for

    s2st = {n for n in TASKS if scoring_for(n).judged_against == "translation"}
    assert s2st and {t.split(":")[0] for t in cfg.run.data.tasks} == set(TASKS) - s2st
    assert len(cfg.run.data.weights) == len(cfg.run.data.tasks)
    assert cfg.run.train.max_minutes == 0 and cfg.vocoder_minutes > 0
    assert cfg.t2s_decoding.rerank > 1 and cfg.vocoder.knn > 0
    # the ASR-only comparison is left out of the default run (its minutes), added by the override
    # the config's comment gives, with its own best loss (docs/experiments.md, "Mixture and ASR-only")
    assert cfg.asr_only_batch_tokens == 0 and cfg.run.train.loss == "target_length_normalized"
    with_asr = load_demo_config(str(CONFIGS / "demo.yaml"), ["asr_only_batch_tokens=800", "asr_only_loss=length_normalized"])
    assert (with_asr.asr_only_batch_tokens, with_asr.asr_only_loss) == (800, "length_normalized")
    assert "asr_only_batch_tokens=800 asr_only_loss=length_normalized" in (CONFIGS / "demo.yaml").read_text()


def test_frozen_options_are_replaced_and_validated():
    from dmlm.recipes.demo import load_demo_config

    cfg = load_demo_config(None, ["t2s_decoding.rerank=4", "t2s_decoding.temperature=0.7"])
    assert (cfg.t2s_decoding.rerank, cfg.t2s_decoding.temperature, cfg.t2s_decoding.strategy) == (4, 0.7, "greedy")
    with pytest.raises(ConfigError, match="t2s_decoding: decoding rerank must be >= 0"):
        load_demo_config(None, ["t2s_decoding.rerank=-1"])
    with pytest.raises(ConfigError, match="asr_only_loss must be one of"):
        load_demo_config(None, ["asr_only_loss=mean"])


def test_base_config():
    cfg = load_config(CONFIGS / "base.yaml", [], RunConfig)
    assert isinstance(cfg, RunConfig) and cfg.model.init == "pretrained"


def test_overrides_are_typed():
    cfg = load_config(None, ["train.lr=1e-3", "train.lambdas=[2,1,1]", "model.tie_embeddings=false"], RunConfig)
    assert cfg.train.lr == 1e-3 and cfg.train.lambdas == [2.0, 1.0, 1.0] and cfg.model.tie_embeddings is False
    with pytest.raises(ConfigError, match="train.steps"):
        load_config(None, ["train.steps=many"], RunConfig)
    with pytest.raises(ConfigError, match="unknown config key"):
        load_config(None, ["train.stepz=3"], RunConfig)


def test_asr_only_demo_config():
    from dmlm.recipes.demo import load_demo_config

    cfg = load_demo_config(str(CONFIGS / "demo-asr.yaml"), [])
    assert cfg.run.data.tasks == ["asr"] and cfg.run.train.max_minutes > 0 and cfg.out == "runs/demo-asr"


def test_quick_demo_differs_from_the_full_one_only_in_size():
    from dataclasses import asdict

    from dmlm.recipes.demo import load_demo_config

    full = load_demo_config(str(CONFIGS / "demo.yaml"), [])
    quick = load_demo_config(str(CONFIGS / "demo-quick.yaml"), [])
    assert quick.out != full.out  # a quick run never overwrites the full demo's folder
    # what each task is and how it is modelled, tokenized, trained and decoded is the full demo's
    assert asdict(quick.run.data) == asdict(full.run.data) and asdict(quick.run.model) == asdict(full.run.model)
    assert asdict(quick.codebook) == asdict(full.codebook) and asdict(quick.image_codebook) == asdict(full.image_codebook)
    assert (quick.run.train.loss, quick.run.train.lr, quick.run.train.batch_tokens) == (
        full.run.train.loss, full.run.train.lr, full.run.train.batch_tokens)
    assert quick.prepare.corpus == full.prepare.corpus and quick.prepare.neural_share == full.prepare.neural_share
    # ... on less of it
    assert quick.prepare.n_train < full.prepare.n_train and quick.run.train.steps < full.run.train.steps
    assert 0 < quick.vocoder_minutes < full.vocoder_minutes and quick.asr_only_batch_tokens == 0


def test_a_config_extends_another_key_by_key(tmp_path):
    """`extends: FILE` reads FILE first (relative to the config's folder), then the config's own keys:
    nested sections merge key by key, lists and mappings of values are replaced whole, chains work."""
    (tmp_path / "sub").mkdir()
    (tmp_path / "base.yaml").write_text(
        "data: {tasks: [asr, t2s], weights: [0.5, 0.5], speakers: {t2s: [joe]}}\n"
        "train: {steps: 1000, lr: 0.002, warmup_steps: 100}\n")
    (tmp_path / "sub" / "mid.yaml").write_text("extends: ../base.yaml\ntrain: {steps: 300}\ndata: {tasks: [asr]}\n")
    (tmp_path / "sub" / "top.yaml").write_text("extends: mid.yaml\ntrain: {warmup_steps: 10}\n")
    cfg = load_config(tmp_path / "sub" / "top.yaml", ["train.lr=0.001"], RunConfig)
    assert (cfg.train.steps, cfg.train.warmup_steps, cfg.train.lr) == (300, 10, 0.001)
    assert cfg.data.tasks == ["asr"] and cfg.data.weights == [0.5, 0.5] and cfg.data.speakers == {"t2s": ["joe"]}


@pytest.mark.parametrize("files,match", [
    ({"a.yaml": "extends: b.yaml\n", "b.yaml": "extends: a.yaml\n"}, "loops back"),
    ({"a.yaml": "extends: missing.yaml\n"}, r"missing.yaml: config file not found \(extended by"),
    ({"a.yaml": "extends: [b.yaml]\n"}, "must name a config file"),
    ({"a.yaml": "extends: b.yaml\n", "b.yaml": "train: {stepz: 3}\n"}, "unknown config key 'train.stepz'"),
])
def test_extends_errors_name_the_file(tmp_path, files, match):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_config(tmp_path / "a.yaml", [], RunConfig)


def test_quick_demo_config_says_only_what_differs():
    import yaml

    quick = yaml.safe_load((CONFIGS / "demo-quick.yaml").read_text())
    assert quick["extends"] == "demo.yaml" and "model" not in quick["run"] and "data" not in quick["run"]


def test_multilingual_config_speaks_and_scores_four_languages():
    """configs/multilingual.yaml (issue 31): every language of mini-world's translations spoken, ASR and T2S
    trained and scored in each, S2TT both ways and S2ST; the config validates (every spec parses and scores)."""
    from dmlm.recipes.demo import load_demo_config
    from dmlm.tasks import parse_spec

    cfg = load_demo_config(str(CONFIGS / "multilingual.yaml"), [])
    cfg.validate()
    assert cfg.prepare.speech_langs == ["es", "de", "fr"]
    langs = ["en", *cfg.prepare.speech_langs]
    trained = {parse_spec(s) for s in cfg.run.data.tasks}
    scored = {parse_spec(s) for s in cfg.eval_tasks}
    assert {("asr", lg) for lg in langs} | {("t2s", lg) for lg in langs} <= scored
    # one `asr` for every recording; English T2S is `t2s` in the vocoder's voice, the others per language
    assert ("asr", None) in trained and {("t2s", lg) for lg in langs[1:]} <= trained
    assert cfg.run.data.speakers == {"t2s": ["piper:en_US-joe-medium"]}
    assert {("s2tt", "es"), ("s2tt", "en"), ("s2st", "es"), ("s2st_chain", "es")} <= trained
    assert {("s2tt", "es"), ("s2tt", "en"), ("s2st", "es")} <= scored
    assert len(cfg.run.data.weights) == len(cfg.run.data.tasks) and sum(cfg.run.data.weights) == pytest.approx(1.0)
