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
