"""`train.dev_mismatched`: the dev loss with each example's source taken from another example, and the
listening gap (mismatched - matched) that tells a model that reads its input from one that only knows the
targets' language (issue 29: a pretrained start reached a low dev loss while ignoring the audio)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from dmlm.modeling import build_model, load_checkpoint
from dmlm.recipes.stages import dev_curve, train_summary
from dmlm.recipes.study_summary import RUN_FACTS, render
from dmlm.training.loop import dev_sums, listening_record
from dmlm.training.setup import setup
from dmlm.training.train import train

STUDIES = Path(__file__).resolve().parents[1] / "docs" / "studies"


def _config(corpus, run_config, out, *overrides):
    return run_config(out, "train.steps=150", "train.lr=3e-3", "train.eval_every=1000", "train.save_every=1000",
                      "train.log_every=10", *overrides, train=corpus.tiny, dev=corpus.tiny)


def _source(r) -> list[int]:
    """The source span of a rendered ASR example: the tokens between its open and close source tags."""
    return r.ids[4:r.prompt_len - 3]


def test_mismatched_dev_keeps_targets_and_takes_the_next_examples_source(corpus, run_config, tmp_path):
    S = setup(_config(corpus, run_config, tmp_path / "m", "train.dev_mismatched=true"))
    dev, mm = S.dev, S.dev_mismatched
    assert len(dev) == len(mm) == 4 and all(r.task == "asr" for r in mm)
    for i, (d, m) in enumerate(zip(dev, mm)):
        assert d.ids[d.prompt_len:] == m.ids[m.prompt_len:]  # the same target tokens
        assert d.ids[:4] == m.ids[:4] and d.ids[d.prompt_len - 3:d.prompt_len] == m.ids[m.prompt_len - 3:m.prompt_len]
        assert _source(m) == _source(dev[(i + 1) % 4]) != _source(d)  # another example's units
        assert sum(m.target) == sum(d.target)
    off = setup(_config(corpus, run_config, tmp_path / "o"))
    assert off.dev_mismatched == [] and [r.ids for r in off.dev] == [r.ids for r in dev]


def test_a_model_that_ignores_its_input_has_no_gap(corpus, run_config, tmp_path):
    """Attention outputs zeroed: each position's logits depend on its own token only, so the target's losses
    cannot see the source: the gap is 0 up to rounding."""
    cfg = _config(corpus, run_config, tmp_path / "m", "train.dev_mismatched=true")
    S = setup(cfg)
    model = build_model(cfg.model, S.vocab, seed=0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("o_proj.weight"):
                p.zero_()
    rec = listening_record(dev_sums(model, S.dev, cfg, S.vocab.pad, "cpu"),
                           dev_sums(model, S.dev_mismatched, cfg, S.vocab.pad, "cpu"))
    assert rec["dev_loss_mismatched"] > 1.0 and abs(rec["dev_listening"]) < 1e-5, rec


def test_a_model_that_transcribes_listens(trained, corpus, run_config, tmp_path):
    """The `trained` checkpoint transcribes tiny.jsonl exactly: with the sources rotated its target loss rises
    by nats."""
    cfg = _config(corpus, run_config, tmp_path / "m", "train.dev_mismatched=true")
    S = setup(cfg)
    ck = load_checkpoint(trained)
    assert ck.vocab.to_dict() == S.vocab.to_dict()
    matched = dev_sums(ck.model, S.dev, cfg, S.vocab.pad, "cpu")
    rec = listening_record(matched, dev_sums(ck.model, S.dev_mismatched, cfg, S.vocab.pad, "cpu"))
    assert rec["dev_listening"] > 2.0, rec
    assert rec["dev_loss_mismatched"] - rec["dev_listening"] == pytest.approx(matched["asr"][0] / matched["asr"][1])


def test_several_tasks_get_a_gap_each_and_lm_tasks_none():
    matched = {"asr": [10.0, 10.0], "t2s": [40.0, 20.0], "text_lm": [5.0, 5.0]}
    mismatched = {"asr": [30.0, 10.0], "t2s": [40.0, 20.0]}
    rec = listening_record(matched, mismatched)
    assert rec == pytest.approx({"dev_loss_mismatched": 70 / 30, "dev_listening": 70 / 30 - 50 / 30,
                                 "dev_loss_mismatched_asr": 3.0, "dev_listening_asr": 2.0,
                                 "dev_loss_mismatched_t2s": 2.0, "dev_listening_t2s": 0.0})
    assert listening_record({"asr": [1.0, 1.0]}, {"asr": [3.0, 1.0]}) == {"dev_loss_mismatched": 3.0,
                                                                        "dev_listening": 2.0}


def _log(out: Path) -> list[dict]:
    return [json.loads(line) for line in Path(f"{out}.log.jsonl").read_text().splitlines()]


def test_the_gap_reaches_the_log_and_the_study_row_and_the_flag_off_changes_nothing(corpus, run_config, tmp_path):
    short = ("train.steps=4", "train.eval_every=2", "train.save_every=100", "train.log_every=1")
    on = train(_config(corpus, run_config, tmp_path / "on", *short, "train.dev_mismatched=true"))
    off = train(_config(corpus, run_config, tmp_path / "off", *short))
    rows_on, rows_off = _log(on), _log(off)
    dev_on = [r for r in rows_on if "dev_loss" in r]
    assert [r["step"] for r in dev_on] == [2, 4]
    for r in dev_on:
        assert r["dev_listening"] == pytest.approx(r["dev_loss_mismatched"] - r["dev_loss"])
    assert not any(k.startswith(("dev_listening", "dev_loss_mismatched")) for r in rows_off for k in r)
    strip = ("dev_listening", "dev_loss_mismatched", "elapsed", "tokens_per_s")
    assert [{k: v for k, v in r.items() if k not in strip} for r in rows_on] == \
           [{k: v for k, v in r.items() if k not in strip} for r in rows_off]  # same losses, bit for bit
    assert train_summary(on)["final_dev_listening"] == dev_on[-1]["dev_listening"]
    assert train_summary(off)["final_dev_listening"] is None
    assert [p["dev_listening"] for p in dev_curve(on)] == [r["dev_listening"] for r in dev_on]
    assert all("dev_listening" not in p for p in dev_curve(off))


def test_the_summary_shows_the_column_only_when_a_run_has_it():
    """Committed summaries (no run has the gap) render byte for byte as committed; a summary whose runs have it
    gets the column, the arm's mean."""
    for name in ("codebook", "loss", "supervision"):
        summary, md = json.loads((STUDIES / f"{name}.json").read_text()), (STUDIES / f"{name}.md").read_text()
        assert render(summary, re.search(r"Command: `([^`]*)`", md).group(1)) == md
        assert RUN_FACTS["final_dev_listening"][0] not in md
    summary = json.loads((STUDIES / "loss.json").read_text())
    for i, r in enumerate(summary["arms"][0]["runs"]):
        r["final_dev_listening"] = 1.0 + i
    md = render(summary, "x")
    header = next(line for line in md.splitlines() if line.startswith("| arm |"))
    assert header.endswith("| final dev listening (mean) |")
    mean = sum(1.0 + i for i in range(len(summary["arms"][0]["runs"]))) / len(summary["arms"][0]["runs"])
    assert next(line for line in md.splitlines() if line.startswith(f"| {summary['arms'][0]['name']} |")).endswith(
        f" {mean:.3f} |")
