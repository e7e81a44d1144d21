"""`dmlm study`: a tiny study end to end (incl. a kill and a resume), the summary schema, bootstrap
intervals and verdicts on data with a known answer, and every committed study config."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dmlm.metrics.bootstrap import interval, paired_difference, resample_counts, score, utterance_stats, verdict

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "studies"

TINY_BASE = [
    "base.prepare.n_train=40", "base.prepare.n_dev=4", "base.prepare.n_test=6", "base.prepare.n_unpaired=0",
    "base.prepare.images=false", "base.codebook.backend=mel",
    "base.codebook.k=16", "base.codebook.pooling=1", "base.codebook_fit_utts=40", "base.processes=1",
    "base.run.data.tasks=[asr]", "base.run.data.bpe_vocab_size=300",
    "base.run.model.hidden_size=32", "base.run.model.layers=1", "base.run.model.heads=2",
    "base.run.model.intermediate_size=64", "base.run.train.steps=8", "base.run.train.batch_tokens=1500",
    "base.run.train.eval_every=4", "base.run.train.save_every=4", "base.run.train.warmup_steps=1",
    "base.run.train.log_every=1",
]
ARMS = "arms=[{name: full, overrides: [run.train.loss=full]}, {name: ln, overrides: [run.train.loss=length_normalized], expect: better}]"


def _tiny_args(out: Path) -> list[str]:
    return ["name=tiny", f"out={out}", "seeds=[0, 1]", "docs=", "bootstrap=200", ARMS,
            "metrics=[asr.wer, asr.cer, asr.wer_heldout_voice]", *TINY_BASE]


# -- bootstrap on data with a known answer ---------------------------------------------------------

def test_stats_reproduce_the_corpus_metric():
    from dmlm.metrics import error_rates, translation_scores

    refs = ["the red cat runs", "a big dog sees the cat", "the dog"]
    hyps = ["the red cat run", "a big dog sees cat", "the dog"]
    er, ts = error_rates(refs, hyps), translation_scores(refs, hyps)
    for m, want in (("wer", er["wer"]), ("cer", er["cer"]), ("bleu", ts["bleu"]), ("chrf", ts["chrf"])):
        assert score(m, utterance_stats(m, refs, hyps).sum(0)) == pytest.approx(want)


def test_paired_bootstrap_finds_a_real_difference_and_not_a_null_one():
    rng = np.random.default_rng(0)
    n = 400
    words = rng.integers(5, 15, size=n).astype(float)
    base_err = rng.binomial(words.astype(int), 0.2).astype(float)
    better_err = np.maximum(base_err - rng.binomial(1, 0.5, size=n), 0)  # about half an error less per utterance
    ref = np.stack([base_err, words], 1)
    arm = np.stack([better_err, words], 1)
    counts = resample_counts(n, 1000, seed=0)
    d = paired_difference("wer", arm, ref, counts)
    assert d["delta"] < 0 and d["ci95"][1] < 0 and d["verdict"] == "better"
    assert paired_difference("wer", ref, arm, counts)["verdict"] == "worse"
    # the same system against a relabelled copy of itself: no difference, and the interval straddles zero
    same = paired_difference("wer", ref.copy(), ref, counts)
    assert same["verdict"] == "no difference" and same["ci95"][0] <= 0 <= same["ci95"][1]
    lo, hi = interval("wer", ref, counts)
    assert lo < score("wer", ref.sum(0)) < hi


def test_verdict_follows_the_metric_direction():
    assert verdict("bleu", 0.5, 2.0) == "better" and verdict("wer", 0.5, 2.0) == "worse"
    assert verdict("wer_heldout_voice", -2.0, -0.1) == "better" and verdict("cider", -1, 1) == "no difference"


def test_finding_verdict():
    from dmlm.recipes.study_summary import finding_verdict

    claim = {"primary": True, "expect": "better"}
    assert finding_verdict([{**claim, "verdict": "better"}]) == "reproduced"
    assert finding_verdict([{**claim, "verdict": "no difference"}]) == "not reproduced"
    assert finding_verdict([{**claim, "verdict": "better"}, {**claim, "verdict": "worse"}]) == "mixed"
    assert finding_verdict([{"primary": True, "expect": None, "verdict": "better"}]) == "no claim"
    # met on the primary metric, contradicted on another: mixed; a secondary 'no difference' is no contradiction
    other = {"primary": False, "expect": "better"}
    assert finding_verdict([{**claim, "verdict": "better"}, {**other, "verdict": "worse"}]) == "mixed"
    assert finding_verdict([{**claim, "verdict": "better"}, {**other, "verdict": "no difference"}]) == "reproduced"
    assert finding_verdict([{**claim, "verdict": "worse"}, {**other, "verdict": "better"}]) == "not reproduced"


# -- configs ------------------------------------------------------------------------------------------

def test_every_study_config_loads_and_validates():
    from dmlm.recipes.study import load_study_config

    names = sorted(p.stem for p in CONFIGS.glob("*.yaml"))
    assert {"loss", "init", "supervision", "codebook"} <= set(names)
    for name in names:
        cfg = load_study_config(str(CONFIGS / f"{name}.yaml"), [])
        # two arms or more; a study of ways (s2st) compares metrics of one model (configs/studies/s2st.yaml says why)
        assert cfg.name == name and (len(cfg.arms) >= 2 or name == "s2st") and cfg.finding
        for arm in cfg.arms:  # one factor: an arm's resolved training budget is the base's
            assert cfg.arm_config(arm).run.train.steps == cfg.base.run.train.steps


def test_bad_study_configs_name_the_problem():
    from dmlm.recipes.study import load_study_config
    from dmlm.util.config import ConfigError
    from dmlm.util.errors import UserError

    with pytest.raises(ConfigError, match="no arms"):
        load_study_config(None, ["name=x"])
    with pytest.raises(ConfigError, match="unknown config key 'run.train.los'"):
        load_study_config(None, ["name=x", "arms=[{name: a, overrides: [run.train.los=full]}]"])
    with pytest.raises(ConfigError, match="unknown metrics"):
        load_study_config(None, ["name=x", "arms=[{name: a}]", "metrics=[asr.bleu]"])
    with pytest.raises(ConfigError, match="reference 'b' is not an arm"):
        load_study_config(None, ["name=x", "arms=[{name: a, reference: b}]"])
    # a codebook no backend can make fails when the study is loaded (before any run), naming the key
    with pytest.raises(UserError, match="codebook.layer=3.*whisper-hf"):
        load_study_config(None, ["name=x", "arms=[{name: a, overrides: [codebook.layer=3]}]"])
    with pytest.raises(UserError, match="codebook.backend must be one of"):
        load_study_config(None, ["name=x", "arms=[{name: a, overrides: [codebook.backend=hubert]}]"])


# -- end to end ---------------------------------------------------------------------------------------

def test_tiny_study_end_to_end_with_kill_and_resume(tmp_path):
    out = tmp_path / "study"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "dmlm.cli", "study", "none", *_tiny_args(out)]
    cmd[cmd.index("none")] = str(_write_empty(tmp_path))
    # kill the study while the second run trains (the first run's row is written by then)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if "(run 2/4): train" in line:
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait()
    runs = [json.loads(x) for x in (out / "runs.jsonl").read_text().splitlines()]
    assert [(r["arm"], r["seed"]) for r in runs] == [("full", 0)], "".join(lines)
    first_model = out / "runs" / "full" / "seed0" / "model" / "model.safetensors"
    mtime = first_model.stat().st_mtime_ns
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "arm full, seed 0" not in done.stdout  # the finished run is skipped, not redone
    assert "ETA" in done.stdout and "arm ln, seed 1 (run 4/4)" in done.stdout
    assert first_model.stat().st_mtime_ns == mtime
    runs = [json.loads(x) for x in (out / "runs.jsonl").read_text().splitlines()]
    assert sorted((r["arm"], r["seed"]) for r in runs) == [("full", 0), ("full", 1), ("ln", 0), ("ln", 1)]
    assert len(list((out / "shared").glob("codebook-*.safetensors"))) == 1  # shared work done once
    assert all(r["steps"] == 8 and r["tokens"] > 0 and r["config"]["run"]["train"]["seed"] == r["seed"] for r in runs)

    s = json.loads((out / "tiny.json").read_text())
    assert set(s) >= {"study", "reference", "arms", "comparisons", "verdict", "method"}
    assert s["study"] == "tiny" and s["reference"] == "full"
    for arm in s["arms"]:
        assert set(arm) >= {"name", "overrides", "runs", "mean", "std", "ci95"}
        assert [r["seed"] for r in arm["runs"]] == [0, 1]
        assert set(arm["runs"][0]) >= {"seed", "metrics", "steps", "tokens", "seconds"}
        for m in ("asr.wer", "asr.wer_heldout_voice"):
            lo, hi = arm["ci95"][m]
            assert lo <= arm["pooled"][m] <= hi
            assert arm["mean"][m] == pytest.approx(np.mean([r["metrics"][m] for r in arm["runs"]]))
    comps = {(c["arm"], c["metric"]): c for c in s["comparisons"]}
    assert set(comps) == {("ln", m) for m in ("asr.wer", "asr.cer", "asr.wer_heldout_voice")}
    for c in comps.values():
        assert c["verdict"] in ("better", "worse", "no difference") and c["ci95"][0] <= c["delta"] <= c["ci95"][1]
    assert s["verdict"] in ("reproduced", "not reproduced", "mixed")
    md = (out / "tiny.md").read_text()
    assert "| ln | full | asr.wer (primary) |" in md and "±" in md
    assert (out / "tiny_metrics.png").stat().st_size > 1000 and (out / "tiny_dev_loss.png").stat().st_size > 1000

    # the report page from the summaries
    from dmlm.recipes.study_summary import write_studies_doc

    docs = tmp_path / "docs" / "studies"
    docs.mkdir(parents=True)
    (docs / "tiny.json").write_text((out / "tiny.json").read_text())
    (docs / "tiny.reading.md").write_text("A tiny reading.")
    page = write_studies_doc(docs, tmp_path / "docs" / "studies.md").read_text()
    assert "[tiny](studies/tiny.md)" in page and f"**{s['verdict']}**" in page and "A tiny reading." in page
    assert "Not yet run to completion" in page and "`loss`" in page


def test_a_learning_curve_scores_snapshots_along_the_budget(tmp_path):
    """curve=[0.5]: every run keeps a snapshot at step 4 of 8 and scores it; the summary has each arm's score
    and the comparisons at 50 % and 100 % (the latter the run's own final scores), a table and a plot."""
    from dmlm.recipes.study import load_study_config, run_study

    out = tmp_path / "study"
    args = [a for a in _tiny_args(out) if not a.startswith("seeds=")] + ["seeds=[0]", "curve=[0.5]",
                                                                         "base.decoding.max_new_per_prompt=0.5"]
    cfg = load_study_config(str(_write_empty(tmp_path)), args)
    assert cfg.arm_config(cfg.arms[0], 0).run.train.snapshots == [4]
    s = run_study(cfg)
    runs = [json.loads(x) for x in (out / "runs.jsonl").read_text().splitlines()]
    for r in runs:
        assert [p["step"] for p in r["curve"]] == [4, 8]
        assert 0 < r["curve"][0]["examples"] < r["curve"][1]["examples"]
        assert r["curve"][1]["metrics"]["asr.wer"] == r["metrics"]["asr.wer"]
        assert Path(r["curve"][0]["hyps"]["asr"]).is_file() and "asr@step-4" in r["curve"][0]["hyps"]["asr"]
    assert [p["fraction"] for p in s["curve"]] == [0.5, 1.0]
    for p in s["curve"]:
        for name, a in p["arms"].items():
            lo, hi = a["ci95"]["asr.wer"]
            assert lo <= a["pooled"]["asr.wer"] <= hi and len(a["seeds"]) == 1
        assert {(c["arm"], c["metric"]) for c in p["comparisons"]} >= {("ln", "asr.wer")}
    end = {a["name"]: a["pooled"]["asr.wer"] for a in s["arms"]}
    assert {n: a["pooled"]["asr.wer"] for n, a in s["curve"][-1]["arms"].items()} == end
    md = (out / "tiny.md").read_text()
    assert "## Learning curve" in md and "| ln | full |" in md
    assert (out / "tiny_curve.png").stat().st_size > 1000


def test_an_option_added_at_its_default_keeps_every_study_hash():
    """Shared corpora, codebooks and finished runs are named by a hash of the settings away from their defaults:
    a config class that gains an option (at its default) names them as before; a set option changes the name."""
    from dataclasses import field, make_dataclass

    from dmlm.data.prepare import PrepareConfig
    from dmlm.recipes.demo import DemoConfig
    from dmlm.recipes.study import _hash, settings

    assert settings(DemoConfig()) == {}
    cfg = DemoConfig()
    cfg.prepare.n_train, cfg.run.train.lr = 5, 0.1
    assert settings(cfg) == {"prepare": {"n_train": 5}, "run": {"train": {"lr": 0.1}}}
    Grown = make_dataclass("Grown", [("new_option", int, field(default=0))], bases=(PrepareConfig,))
    assert _hash(settings(Grown(n_train=5))) == _hash(settings(PrepareConfig(n_train=5)))
    assert _hash(settings(Grown(n_train=5, new_option=1))) != _hash(settings(PrepareConfig(n_train=5)))


def _write_empty(tmp_path: Path) -> Path:
    p = tmp_path / "study.yaml"
    p.write_text("# every setting comes from the overrides\n")
    return p


# -- S2ST: per-way metrics (issue 31) ---------------------------------------------------------------

def test_s2st_study_scores_each_way_of_one_model():
    from dmlm.recipes.study import load_study_config, metric_key, metric_task, metric_value, metric_way, study_metrics

    cfg = load_study_config(str(CONFIGS / "s2st.yaml"), [])
    assert {"s2st.direct.asr_bleu", "s2st.chained.asr_bleu", "s2st.cascade.asr_bleu"} <= set(cfg.metrics)
    assert cfg.base.vocoder_minutes > 0 and "s2st_chain:es" in cfg.base.run.data.tasks
    m = "s2st.cascade.asr_bleu_heldout_voice"
    assert m in study_metrics() and (metric_task(m), metric_way(m), metric_key(m)) == ("s2st", "cascade", "asr_bleu_heldout_voice")
    assert (metric_task("s2tt.bleu"), metric_way("s2tt.bleu"), metric_key("s2tt.bleu")) == ("s2tt", None, "bleu")
    report = {"asr_bleu": 9.0, "ways": {"direct": {"asr_bleu": 9.0}, "cascade": {"asr_bleu": 4.0}}}
    assert metric_value(report, "s2st.cascade.asr_bleu") == 4.0 and metric_value(report, "s2st.asr_bleu") == 9.0
    assert metric_value(report, "s2st.chained.asr_bleu") is None  # a way the model was not trained for


def test_s2st_study_needs_a_vocoder_and_known_ways():
    from dmlm.recipes.study import load_study_config
    from dmlm.util.config import ConfigError

    with pytest.raises(ConfigError, match="vocoder_minutes"):
        load_study_config(str(CONFIGS / "s2st.yaml"), ["base.vocoder_minutes=0"])
    with pytest.raises(ConfigError, match="unknown metrics"):
        load_study_config(str(CONFIGS / "s2st.yaml"), ["metrics=[s2st.telepathy.asr_bleu]"])


def test_asr_bleu_stats_reproduce_the_s2st_report_and_pool_per_way(tmp_path):
    from dmlm.evaluation.s2st import asr_bleu
    from dmlm.recipes.study_summary import _pooled_stats

    refs = ["el gato rojo corre", "un perro grande ve el gato", "el perro"]
    hyps = ["El gato rojo corre.", "Un perro ve al gato.", "El perro."]
    want = asr_bleu(refs, hyps)
    for m in ("asr_bleu", "asr_chrf"):
        assert score(m, utterance_stats(m, refs, hyps).sum(0)) == pytest.approx(want[m])
    rows = [{"id": str(i), "way": way, "ref": r, "hyp": h if way == "direct" else "", "heldout_voice": False}
            for way in ("direct", "cascade") for i, (r, h) in enumerate(zip(refs, hyps))]
    path = tmp_path / "hyps.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    runs = [{"hyps": {"s2st": str(path)}}]
    direct = np.stack(list(_pooled_stats(runs, "s2st.direct.asr_bleu").values()))
    assert score("asr_bleu", direct.sum(0)) == pytest.approx(want["asr_bleu"])
    assert score("asr_bleu", np.stack(list(_pooled_stats(runs, "s2st.cascade.asr_bleu").values())).sum(0)) == 0.0


# -- S2ST: ways compared in pairs (way_reference) ---------------------------------------------------

_WORDS = ("el gato perro casa rojo grande ve corre come agua libro mesa niña niño sol luna verde azul "
          "calle árbol pan leche noche día").split()


def _way_runs(tmp_path: Path, seeds=(0, 1), n: int = 80) -> list[dict]:
    """runs.jsonl rows of one arm whose S2ST hypotheses are known: `direct` hears one word in 12 wrong, `chained`
    and `cascade` one in 5 (different words of the same utterances: a null difference between them)."""
    rng = np.random.default_rng(0)
    refs = [" ".join(rng.choice(_WORDS, size=rng.integers(8, 13))) for _ in range(n)]

    def garble(ref: str, every: int, offset: int) -> str:
        return " ".join("xx" if (j + offset) % every == 0 else w for j, w in enumerate(ref.split()))

    runs = []
    for seed in seeds:
        rows = [{"id": f"u{i}", "way": way, "ref": ref, "hyp": garble(ref, every, (i + seed + shift) % every),
                 "heldout_voice": i % 4 == 0}
                for way, every, shift in (("direct", 12, 0), ("chained", 5, 1), ("cascade", 5, 3))
                for i, ref in enumerate(refs)]
        path = tmp_path / f"hyps{seed}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        metrics = {}
        for way in ("direct", "chained", "cascade"):
            mine = [r for r in rows if r["way"] == way and not r["heldout_voice"]]
            metrics[f"s2st.{way}.asr_bleu"] = score("asr_bleu", utterance_stats(
                "asr_bleu", [r["ref"] for r in mine], [r["hyp"] for r in mine]).sum(0))
        runs.append({"arm": "all-ways", "seed": seed, "metrics": metrics, "steps": 10, "tokens": 100, "seconds": 1.0,
                     "final_dev_loss": None, "hyps": {"s2st": str(path)}, "dev_curve": [{"step": 10, "dev_loss": 3.0}],
                     "config": {"prepare": {}, "run": {"model": {}, "train": {}, "data": {"tasks": ["s2st:es"]}}}})
    return runs


def test_ways_are_compared_in_pairs_with_the_reference_way(tmp_path):
    """The s2st study with its way_reference (cascade): direct (fewer errors) is 'better' with an interval above 0,
    chained (as many errors, elsewhere) 'no difference', per metric family, in the JSON, the page and docs."""
    from dmlm.recipes.study import load_study_config
    from dmlm.recipes.study_summary import write_studies_doc, write_summary

    cfg = load_study_config(str(CONFIGS / "s2st.yaml"), [f"out={tmp_path / 'out'}", f"docs={tmp_path / 'docs'}",
                                                         "bootstrap=500"])
    assert cfg.way_reference == "cascade"
    s = write_summary(cfg, _way_runs(tmp_path))
    comps = {(c["way"], c["metric"]): c for c in s["way_comparisons"]}
    assert set(comps) == {(w, f"s2st.{k}") for w in ("direct", "chained")
                          for k in ("asr_bleu", "asr_chrf", "asr_bleu_heldout_voice")}
    for c in comps.values():
        assert c["arm"] == "all-ways" and c["reference_way"] == "cascade" and c["ci95"][0] <= c["delta"] <= c["ci95"][1]
        assert c["utterances"] == (20 if c["metric"].endswith("_heldout_voice") else 60)
    for k in ("asr_bleu", "asr_chrf", "asr_bleu_heldout_voice"):
        better, null = comps[("direct", f"s2st.{k}")], comps[("chained", f"s2st.{k}")]
        assert better["verdict"] == "better" and better["ci95"][0] > 0, better
        assert null["verdict"] == "no difference" and null["ci95"][0] < 0 < null["ci95"][1], null
    # the difference is the pooled scores' (both seeds' statistics summed), as an arm comparison's
    pooled = s["arms"][0]["pooled"]
    assert comps[("direct", "s2st.asr_bleu")]["delta"] == pytest.approx(
        pooled["s2st.direct.asr_bleu"] - pooled["s2st.cascade.asr_bleu"])
    assert [c["primary"] for c in s["way_comparisons"] if c["metric"] == "s2st.asr_bleu"] == [True, True]
    md = (tmp_path / "out" / "s2st.md").read_text()
    assert "## Ways compared" in md and "| all-ways | direct | cascade | s2st.asr_bleu (primary) |" in md
    assert (tmp_path / "out" / "s2st_metrics.png").stat().st_size > 1000
    page = write_studies_doc(tmp_path / "docs", tmp_path / "studies.md").read_text()
    assert "direct vs cascade: +" in page and "chained vs cascade:" in page


def test_a_way_reference_must_be_a_way_of_the_metrics():
    from dmlm.recipes.study import load_study_config
    from dmlm.util.config import ConfigError

    with pytest.raises(ConfigError, match="way_reference 'telepathy' is not a way"):
        load_study_config(str(CONFIGS / "s2st.yaml"), ["way_reference=telepathy"])
    # a known way that no metric names: nothing to compare with
    with pytest.raises(ConfigError, match=r"way_reference 'cascade' is not a way.*\['direct'\]"):
        load_study_config(str(CONFIGS / "s2st.yaml"), ["metrics=[s2st.direct.asr_bleu]", "primary="])
    with pytest.raises(ConfigError, match="way_reference 'cascade'.*no metric is TASK.WAY.metric"):
        load_study_config(None, ["name=x", "arms=[{name: a}]", "way_reference=cascade"])


def test_an_arm_whose_model_cannot_be_built_is_refused_when_the_study_loads(tmp_path):
    """A scratch arm over a base that trims an LLM's vocabulary fails at load, not after hours of other arms."""
    from dmlm.recipes.study import load_study_config
    from dmlm.util.errors import UserError

    with pytest.raises(UserError, match="arm scratch: model.keep_layers and model.trim_vocab"):
        load_study_config(str(_write_empty(tmp_path)), [
            "name=t", "base.run.model.init=random", "base.run.model.trim_vocab=true",
            "arms=[{name: llm, overrides: []}, {name: scratch, overrides: [run.model.init=scratch]}]"])


# -- tuning: the summary applies the rule a tuning study fixed (choose, candidate_for) ----------------------------

def _tuning_runs(facts: dict[str, tuple[float, float]]) -> list[dict]:
    """runs.jsonl rows (seed 0) with only the facts a choice reads: {arm: (final dev loss, final dev listening)}."""
    return [{"arm": arm, "seed": 0, "metrics": {}, "steps": 50, "tokens": 100, "seconds": 1.0,
             "final_dev_loss": loss, "final_dev_listening": gap, "hyps": {},
             "dev_curve": [{"step": 50, "dev_loss": loss, "dev_listening": gap}],
             "config": {"prepare": {}, "run": {"model": {}, "train": {}, "data": {"tasks": ["asr"]}}}}
            for arm, (loss, gap) in facts.items()]


def test_a_tuning_study_chooses_the_lowest_dev_loss_among_settings_that_listen(tmp_path):
    """init-tune's rule: the lowest dev loss wins only among listening settings (random-lr3e-3 has the lowest loss
    and does not listen); a group where none listens gets its largest gap, said so; a candidate not yet run makes
    the choice provisional. The JSON and the page carry it."""
    from dmlm.recipes.study import load_study_config
    from dmlm.recipes.study_summary import write_summary

    cfg = load_study_config(str(CONFIGS / "init-tune.yaml"), [f"out={tmp_path / 'out'}", f"docs={tmp_path / 'docs'}",
                                                              "bootstrap=200"])
    facts = {a.name: (3.0, 0.0) for a in cfg.arms}
    facts.update({"random-lr1e-3": (2.5, 0.3), "random-lr3e-3": (2.0, 0.05), "random-lr1e-3-rows10": (2.4, 0.2),
                  "random-lr3e-3-rows10": (2.6, 0.9),
                  "scratch-demo-lr1e-3": (2.0, 0.01), "scratch-demo-lr3e-3": (1.9, 0.04),
                  "scratch-demo-lr1e-2": (2.2, 0.08)})
    del facts["pretrained-lora-lr3e-3"]
    s = write_summary(cfg, _tuning_runs(facts))
    chosen = {c["for"]: c for c in s["choices"]}
    assert list(chosen) == ["random", "pretrained", "pretrained-lora", "scratch-demo"]
    assert chosen["random"]["chosen"] == "random-lr1e-3-rows10" and chosen["random"]["complete"]
    assert chosen["random"]["overrides"] == ["run.train.lr=0.001", "run.train.lr_new_rows=10"]
    assert chosen["random"]["rule"] == "dev_loss_listening"
    assert chosen["scratch-demo"]["chosen"] == "scratch-demo-lr1e-2"
    assert chosen["scratch-demo"]["rule"].startswith("largest dev listening gap")
    assert chosen["pretrained-lora"]["chosen"] == "pretrained-lora-lr1e-3" and not chosen["pretrained-lora"]["complete"]
    page = (tmp_path / "docs" / "init-tune.md").read_text()
    assert "## Chosen settings" in page and "| random | random-lr1e-3-rows10 | 2.400 | 0.200 | yes | **chosen** |" in page
    assert "| random | random-lr3e-3 | 2.000 | 0.050 | no |  |" in page
    assert "pretrained-lora-lr3e-3 | – | – | – | not run |" in page and "provisional" in page
    assert json.loads((tmp_path / "docs" / "init-tune.json").read_text())["choices"][0]["chosen"] == "random-lr1e-3-rows10"


def test_a_choice_rule_needs_candidates_and_the_listening_gap():
    from dmlm.recipes.study import load_study_config
    from dmlm.util.config import ConfigError

    with pytest.raises(ConfigError, match="choose must be one of"):
        load_study_config(str(CONFIGS / "init-tune.yaml"), ["choose=vibes"])
    with pytest.raises(ConfigError, match="dev_loss_listening reads the dev listening gap.*random-lr1e-3"):
        load_study_config(str(CONFIGS / "init-tune.yaml"), ["base.run.train.dev_mismatched=false"])
    with pytest.raises(ConfigError, match="needs arms with `candidate_for`"):
        load_study_config(str(CONFIGS / "init.yaml"), ["choose=dev_loss"])
