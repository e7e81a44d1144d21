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
    # the mixture covers every registered task; the ASR-only comparison takes the same fixed steps
    from dmlm.tasks import TASKS

    assert {t.split(":")[0] for t in cfg.run.data.tasks} == set(TASKS)
    assert len(cfg.run.data.weights) == len(cfg.run.data.tasks)
    assert cfg.run.train.max_minutes == 0 and cfg.asr_only_batch_tokens > 0 and cfg.vocoder_minutes > 0
    assert cfg.t2s_decoding.rerank > 1 and cfg.vocoder.knn > 0
    # each model its own best loss (README, session 10)
    assert (cfg.run.train.loss, cfg.asr_only_loss) == ("target_length_normalized", "length_normalized")


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
