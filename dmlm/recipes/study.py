"""`dmlm study CONFIG.yaml`: a controlled comparison of arms over several seeds, with confidence intervals.

A study is a base run (a `DemoConfig`: corpus, codebooks, model, training budget, tasks), a list
of arms (a name and `key=value` overrides on any field of it: `run.train.loss=full`,
`codebook.layer=3`, `prepare.corpus=bible`, `run.model.init=pretrained`), the seeds every arm is
trained with, and the metrics to score. Each arm × seed is one run of the demo's stages
(prepare → codebooks → tokenize → train → evaluate); `dmlm.recipes.study_summary` turns the runs
into the summary (means, seed spread, bootstrap intervals, paired comparisons, verdicts) and plots.

Design decisions:
- **Same budget, one factor.** Every arm trains the base's optimizer steps with the base's
  hyper-parameters; an arm changes only what its overrides name. The seed is the training seed
  (`run.train.seed`: initialization, data order and task sampling); the corpus and codebooks are
  the arm's, shared by its seeds, so seeds measure training variance on one data draw.
- **Shared work is done once.** Corpora, codebooks and token stores live under `OUT/shared/`,
  named by a hash of exactly the settings that make them (`prepare` for a corpus; the corpus and
  the codebook settings for a codebook; both codebooks for the token stores). Arms that differ
  only in training share all three; a codebook arm gets its own codebook and stores. Unit merges
  (`codebook_merges`) are a codebook file of their own per count beside the unit codebook
  (`codebook-HASH-mergesN`): arms with other counts never share one, and every count shares the
  unit codebook's token stores, since the merges apply when training renders the units.
- **Resumable.** A finished arm × seed is a row of `OUT/runs.jsonl` (keyed by arm, seed and a
  hash of its resolved config) and is skipped on a re-run; a half-trained one resumes from its
  last saved step (`dmlm train --resume`); finished evaluations are reused for the same weights.
- **Progress** is one line per stage naming arm, seed, run k of n and an ETA from the runs
  finished so far, readable in a log file.
- A vocoder only where a metric hears speech out (S2ST's ASR-BLEU, per way: `s2st.cascade.asr_bleu`):
  trained once per corpus, codebook and vocoder settings under `shared/` (as codebooks are) and
  copied into each run's model. T2S is scored on its units (unit accuracy), which needs no audio;
  by-ear T2S scores are the demo's (`dmlm demo`).
"""

from __future__ import annotations

import copy
import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from dmlm.data.manifest import read_manifest
from dmlm.data.split import store_prefix
from dmlm.evaluation.headline import scorable_metrics
from dmlm.metrics.bootstrap import LOWER_IS_BETTER, base_metric
from dmlm.recipes.demo import DemoConfig
from dmlm.recipes.run_folder import RunFolder
from dmlm.modeling import vocoder_dir
from dmlm.recipes.stages import (EXTRA_AUDIO, LazyModel, dev_curve, evaluate_model, fit_codebooks, fit_merges,
                                 install_vocoder, machine, make_vocoder, merged_codebook_path, point_run_at,
                                 prepare_data, speech_tokens_per_second, tokenize_splits, train_model, train_summary,
                                 uses_images)
from dmlm.tasks import TASKS, parse_spec, scoring_for
from dmlm.util.config import ConfigError, apply_overrides, dump_config, field_default, load_config
from dmlm.util.errors import UserError
from dmlm.util.io import atomic_write_json, atomic_write_text, read_jsonl, write_jsonl


def study_metrics() -> list[str]:
    """Every metric a study can score, `TASK.metric`: a headline metric of a decoded task's row (or its
    held-out-voice variant) that the bootstrap can resample (`dmlm.metrics.bootstrap`)."""
    out = []
    for name, task in TASKS.items():
        if not task.decoded:
            continue
        for key in scorable_metrics(name):
            if key in LOWER_IS_BETTER:
                out += [f"{name}.{key}", f"{name}.{key}_heldout_voice"]
    return [m for m in out if m.split(".", 1)[1] in _reported(m.split(".", 1)[0])] + _way_metrics()


def _way_metrics() -> list[str]:
    """`TASK.WAY.metric` of each task whose report scores several ways (S2ST: `s2st.cascade.asr_bleu`), read
    from the report's `ways[WAY]` (`dmlm.evaluation.s2st`)."""
    from dmlm.evaluation.s2st import WAY_TASKS

    out = []
    for name, task in TASKS.items():
        if task.decoded and scoring_for(name).judged_against == "translation":
            keys = [k for k in scorable_metrics(name) if k in LOWER_IS_BETTER]
            out += [f"{name}.{way}.{k}{v}" for way in WAY_TASKS for k in keys for v in ("", "_heldout_voice")]
    return out


def speech_out_metric(metric: str) -> bool:
    """Whether scoring `metric` hears the model's speech (a vocoder makes it audible, a judge transcribes it)."""
    return scoring_for(metric_task(metric)).by_ear == "always"


def _reported(name: str) -> set[str]:
    """The metric keys a study can read of task `name`: its headline metrics and their held-out-voice variants."""
    keys = set(scorable_metrics(name))
    return keys | {f"{k}_heldout_voice" for k in keys if base_metric(k) in LOWER_IS_BETTER}


def metric_task(metric: str) -> str:
    """The task name of a study metric (`s2tt.bleu` -> `s2tt`)."""
    return metric.split(".", 1)[0]


def metric_key(metric: str) -> str:
    """The report key of a study metric (`s2tt.bleu` -> `bleu`, `s2st.cascade.asr_bleu` -> `asr_bleu`)."""
    return metric.rsplit(".", 1)[1]


def metric_way(metric: str) -> str | None:
    """The way of a per-way study metric (`s2st.cascade.asr_bleu` -> `cascade`), else None."""
    parts = metric.split(".")
    return parts[1] if len(parts) == 3 else None


def metric_value(report: dict, metric: str) -> float | None:
    """The study metric's value in a task's evaluation report (a way's from `report["ways"]`), None if absent."""
    way = metric_way(metric)
    value = (report.get("ways", {}).get(way, {}) if way else report).get(metric_key(metric))
    return float(value) if isinstance(value, (int, float)) else None


CHOICE_RULES = {"": "no choice", "dev_loss": "lowest final dev loss",
                "dev_loss_listening": "lowest final dev loss among the settings that listen"}
"""The rules a tuning study's summary can choose each candidate group's setting by (`StudyConfig.choose`)."""


@dataclass
class Arm:
    name: str = ""
    """Short name (a folder name: letters, digits, - and _)."""
    overrides: list[str] = field(default_factory=list)
    """`key=value` overrides on the base (a DemoConfig), e.g. run.train.loss=full."""
    reference: str = ""
    """The arm this one is compared with ("": the study's reference)."""
    expect: str = ""
    """What the paper's finding predicts for this arm against its reference: better, worse or "" (not a claim of
    the paper: reported, not part of the verdict)."""
    candidate_for: str = ""
    """In a tuning study, the arm of the tuned study this setting is a candidate for (e.g. `random`); the summary's
    "Chosen settings" picks one candidate per name by the study's `choose` rule ("": not a candidate)."""


@dataclass
class StudyConfig:
    name: str = ""
    """The study's name: its summary is NAME.json / NAME.md."""
    out: str = ""
    """Output folder ("": runs/studies/NAME)."""
    finding: str = ""
    """The paper's claim this study tests, in a sentence (docs/studies.md quotes it)."""
    reference: str = ""
    """The arm every other arm is compared with ("": the first)."""
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    base: DemoConfig = field(default_factory=DemoConfig)
    """The base run; a study reads its prepare, codebook, codebook_merges, image_codebook, run, processes and
    eval_limit, and its vocoder and vocoder_minutes when a metric hears speech out (judged by Whisper-base) (no
    ASR-only model)."""
    arms: list[Arm] = field(default_factory=list)
    metrics: list[str] = field(default_factory=lambda: ["asr.wer", "asr.cer", "asr.wer_heldout_voice"])
    """Metrics to score, `TASK.metric` (see `study_metrics`); a metric of a task an arm does not train is skipped
    for that arm."""
    primary: str = ""
    """The metric the verdict reads ("": the first of `metrics`)."""
    way_reference: str = ""
    """The way every other way of a per-way metric is compared with, e.g. `cascade` ("": ways are not compared):
    for each arm and each per-way metric family (`s2st.WAY.asr_bleu`, `s2st.WAY.asr_chrf`, ...), each way of
    `metrics` minus this way on the same test utterances pooled across seeds, with a paired bootstrap interval."""
    bootstrap: int = 2000
    """Bootstrap resamples for every interval."""
    curve: list[float] = field(default_factory=list)
    """Fractions of the training budget (each in (0, 1)) at which the metrics of the primary metric's task are
    also scored, on a snapshot of the model kept there (`train.snapshots`): learning curves, the end of training
    their last point. E.g. [0.25, 0.5], since a pretrained start's advantage is largest early."""
    docs: str = "docs/studies"
    """Where the summary (NAME.json, NAME.md, plots) is copied for the docs ("": nowhere)."""
    shared: str = ""
    """Folder of corpora, codebooks and token stores ("": OUT/shared). Its entries are named by a hash of what
    made them, so studies can share one folder safely and reuse each other's corpora."""
    choose: str = ""
    """How a tuning study picks each candidate group's setting (arms with the same `candidate_for`), applied by the
    summary, fixed before the runs: "" (no choice), `dev_loss` (the lowest final dev loss, mean over seeds) or
    `dev_loss_listening` (the lowest final dev loss among the settings whose final dev listening gap, mean over
    seeds, exceeds `listening_min` nats; if none does, the largest gap: `train.dev_mismatched` must be on)."""
    listening_min: float = 0.1
    """`choose: dev_loss_listening`: the dev listening gap (nats) above which a setting counts as listening."""

    def validate(self) -> None:
        import re

        if not self.name or not re.fullmatch(r"[A-Za-z0-9_-]+", self.name):
            raise ConfigError(f"study: name must be letters, digits, - or _, got {self.name!r}")
        if not self.arms:
            raise ConfigError(f"study {self.name}: no arms; list them under `arms:` (name, overrides)")
        names = [a.name for a in self.arms]
        for a in self.arms:
            if not re.fullmatch(r"[A-Za-z0-9_.-]+", a.name or ""):
                raise ConfigError(f"study {self.name}: arm name must be letters, digits, ., - or _, got {a.name!r}")
            if a.reference and a.reference not in names:
                raise ConfigError(f"study {self.name}: arm {a.name}: reference {a.reference!r} is not an arm ({names})")
            if a.expect not in ("", "better", "worse"):
                raise ConfigError(f"study {self.name}: arm {a.name}: expect must be better, worse or empty")
        if len(set(names)) != len(names):
            raise ConfigError(f"study {self.name}: arm names repeat: {names}")
        if self.reference and self.reference not in names:
            raise ConfigError(f"study {self.name}: reference {self.reference!r} is not an arm ({names})")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"study {self.name}: seeds must be distinct and at least one, got {self.seeds}")
        known = study_metrics()
        bad = [m for m in self.metrics if m not in known]
        if bad or not self.metrics:
            raise ConfigError(f"study {self.name}: unknown metrics {bad}; known: {', '.join(known)}")
        if any(speech_out_metric(m) for m in self.metrics) and self.base.vocoder_minutes <= 0:
            raise ConfigError(f"study {self.name}: metrics heard by ear ({[m for m in self.metrics if speech_out_metric(m)]}) "
                              "need a vocoder: set base.vocoder_minutes > 0")
        if self.primary and self.primary not in self.metrics:
            raise ConfigError(f"study {self.name}: primary {self.primary!r} is not one of metrics {self.metrics}")
        ways = list(dict.fromkeys(metric_way(m) for m in self.metrics if metric_way(m)))
        if self.way_reference and self.way_reference not in ways:
            raise ConfigError(f"study {self.name}: way_reference {self.way_reference!r} is not a way of the per-way "
                              f"metrics (ways: {ways or 'none: no metric is TASK.WAY.metric'})")
        if any(not 0 < f < 1 for f in self.curve) or len(set(self.curve)) != len(self.curve):
            raise ConfigError(f"study {self.name}: curve must list distinct fractions of the budget in (0, 1), "
                              f"got {self.curve}")
        if self.choose not in CHOICE_RULES:
            raise ConfigError(f"study {self.name}: choose must be one of {sorted(CHOICE_RULES)}, got {self.choose!r}")
        if self.choose and not any(a.candidate_for for a in self.arms):
            raise ConfigError(f"study {self.name}: choose: {self.choose} needs arms with `candidate_for` (the arm of "
                              "the tuned study each setting is a candidate for)")
        if self.choose and not all(a.candidate_for for a in self.arms):
            raise ConfigError(f"study {self.name}: choose: {self.choose}: arms "
                              f"{[a.name for a in self.arms if not a.candidate_for]} lack `candidate_for`")
        if self.bootstrap < 100:
            raise ConfigError(f"study {self.name}: bootstrap must be at least 100 resamples, got {self.bootstrap}")
        for a in self.arms:  # every override names a real key with a value that can run, before any stage
            try:
                self.arm_config(a)
            except UserError as e:
                raise (ConfigError if isinstance(e, ConfigError) else UserError)(
                    f"study {self.name}: arm {a.name}: {e}") from None
        if self.choose == "dev_loss_listening":
            off = [a.name for a in self.arms if not self.arm_config(a).run.train.dev_mismatched]
            if off:
                raise ConfigError(f"study {self.name}: choose: dev_loss_listening reads the dev listening gap, but "
                                  f"arms {off} train without run.train.dev_mismatched=true")

    @property
    def out_dir(self) -> Path:
        return Path(self.out or f"runs/studies/{self.name}")

    @property
    def reference_arm(self) -> str:
        return self.reference or self.arms[0].name

    def reference_of(self, arm: Arm) -> str | None:
        ref = arm.reference or self.reference_arm
        return None if ref == arm.name else ref

    def arm_config(self, arm: Arm, seed: int | None = None) -> DemoConfig:
        """The base with the arm's overrides (and the seed's) applied."""
        cfg = apply_overrides(copy.deepcopy(self.base), list(arm.overrides))
        if seed is not None:
            cfg.run.train.seed = seed
        if self.curve:  # the arm's own step count: an arm may change it
            cfg.run.train.snapshots = sorted({max(1, round(f * cfg.run.train.steps)) for f in self.curve})
        cfg.validate()
        return cfg

    @property
    def curve_task(self) -> str:
        """The task a learning curve scores: the primary metric's."""
        return metric_task(self.primary or self.metrics[0])


def settings(obj: object) -> object:
    """What a hash of a config reads: a dataclass as {field: value} of the fields set away from their defaults
    (recursively), so that an option added later, at its default, leaves every existing hash (and the shared
    corpora, codebooks and finished runs named by one) as it was."""
    import dataclasses

    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out = {}
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if value != field_default(type(obj), f.name):
                out[f.name] = settings(value)
        return out
    if isinstance(obj, (list, tuple)):
        return [settings(x) for x in obj]
    if isinstance(obj, dict):
        return {k: settings(v) for k, v in obj.items()}
    return obj


def _hash(obj: object) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:10]


class Shared:
    """Corpora, codebooks and token stores under OUT/shared/, made once per distinct setting."""

    def __init__(self, root: Path):
        self.root = root

    def data(self, cfg: DemoConfig) -> tuple[str, dict[str, Path]]:
        key = f"data-{cfg.prepare.corpus}-{_hash(settings(cfg.prepare))}"
        return key, prepare_data(cfg.prepare, self.root / key)

    def codebook_paths(self, cfg: DemoConfig, data_key: str) -> tuple[Path, Path | None]:
        """The arm's speech codebook file and (when a task reads or writes images) its image codebook file."""
        ckey = f"codebook-{_hash([data_key, settings(cfg.codebook), cfg.codebook_fit_utts])}"
        ikey = f"image_codebook-{_hash([data_key, settings(cfg.image_codebook), cfg.image_codebook_fit_images])}"
        return self.root / f"{ckey}.safetensors", (self.root / f"{ikey}.safetensors" if uses_images(cfg.run.data.tasks)
                                                   else None)

    def codebooks(self, cfg: DemoConfig, data_key: str, manifests: dict[str, Path]):
        path, ipath = self.codebook_paths(cfg, data_key)
        return fit_codebooks(manifests["train"], cfg.codebook, cfg.codebook_fit_utts, path,
                             cfg.image_codebook if ipath is not None else None, cfg.image_codebook_fit_images, ipath)

    def units(self, data_key: str, paths: tuple[Path, Path | None], cb, icb, manifests: dict[str, Path]) -> Path:
        ckey, ikey = paths[0].stem, paths[1].stem if paths[1] is not None else ""
        folder = self.root / f"units-{_hash([data_key, ckey, ikey])}"
        tokenize_splits(cb, icb, {k: v for k, v in manifests.items() if k != "neural_extra"}, folder)
        return folder

    def vocoder(self, cfg: DemoConfig, data_key: str, codebook: Path, units: Path, manifests: dict[str, Path]) -> Path:
        """The unit vocoder of the arm's corpus and speech codebook, trained on its training split as the demo's."""
        key = f"vocoder-{_hash([data_key, codebook.stem, settings(cfg.vocoder), cfg.vocoder_minutes])}"
        train = [manifests[m] for m in ("train", EXTRA_AUDIO) if m in manifests]
        make_vocoder(self.root / key, cfg.vocoder, cfg.vocoder_minutes, train, [store_prefix(units, m) for m in train],
                     codebook)
        return self.root / key


class _Progress:
    """One line per stage: arm, seed, run k of n, elapsed, and an ETA from the runs finished so far."""

    def __init__(self, name: str, total: int, done: int):
        self.name, self.total, self.done, self.t0, self.spent = name, total, done, time.time(), []

    def stage(self, arm: str, seed: int, k: int, what: str) -> None:
        eta = ""
        if self.spent:
            left = (self.total - self.done) * sum(self.spent) / len(self.spent)
            eta = f", ETA {left / 60:.0f} min"
        print(f"== study {self.name}: arm {arm}, seed {seed} (run {k}/{self.total}): {what}"
              f" [{(time.time() - self.t0) / 60:.1f} min{eta}]", flush=True)

    def finished(self, seconds: float) -> None:
        self.done += 1
        self.spent.append(seconds)


def run_study(cfg: StudyConfig, summarize: bool = True) -> dict | None:
    """Train and score every arm × seed not yet in OUT/runs.jsonl, then write the summary."""
    cfg.validate()
    out = cfg.out_dir
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "study.yaml", dump_config(cfg))
    shared = Shared(Path(cfg.shared) if cfg.shared else out / "shared")
    runs_path = out / "runs.jsonl"
    plan = [(a, s) for a in cfg.arms for s in cfg.seeds]
    keys = {(a.name, s): _hash(settings(cfg.arm_config(a, s))) for a, s in plan}
    done = {(r["arm"], r["seed"]) for r in read_jsonl(runs_path, missing_ok=True) if r.get("config_hash") == keys.get((r["arm"], r["seed"]))}
    progress = _Progress(cfg.name, len(plan), sum((a.name, s) in done for a, s in plan))
    for k, (arm, seed) in enumerate(plan, 1):
        if (arm.name, seed) in done:
            continue
        t0 = time.time()
        row = run_arm_seed(cfg, arm, seed, shared, lambda what, a=arm.name, s=seed, k=k: progress.stage(a, s, k, what))
        row["config_hash"] = keys[(arm.name, seed)]
        # a row per finished run; earlier rows of the same arm × seed (another config) are superseded
        kept = [r for r in read_jsonl(runs_path, missing_ok=True) if (r["arm"], r["seed"]) != (arm.name, seed)]
        write_jsonl(runs_path, kept + [row])
        progress.finished(time.time() - t0)
    if not summarize:
        return None
    from dmlm.recipes.study_summary import write_summary

    return write_summary(cfg, [r for r in read_jsonl(runs_path, missing_ok=True) if (r["arm"], r["seed"]) in keys])


def run_arm_seed(cfg: StudyConfig, arm: Arm, seed: int, shared: Shared, stage) -> dict:
    """One run: the arm's corpus, codebooks and token stores (shared), training, and its evaluations."""
    base = cfg.arm_config(arm, seed)
    folder = RunFolder(cfg.out_dir / "runs" / arm.name / f"seed{seed}")
    folder.out.mkdir(parents=True, exist_ok=True)
    stage("prepare")
    data_key, manifests = shared.data(base)
    stage("codebooks")
    paths = shared.codebook_paths(base, data_key)
    cb, icb = shared.codebooks(base, data_key, manifests)
    stage("tokenize")
    units = shared.units(data_key, paths, cb, icb, manifests)
    speech = merged_codebook_path(paths[0], base.codebook_merges)  # its own file per count; the stores are shared
    if base.codebook_merges:
        stage("unit merges")
        cb = fit_merges(cb, base.codebook_merges, manifests["train"], units, speech)
    run = base.run
    point_run_at(run, manifests, units, speech, paths[1], folder.model())
    stage(f"train ({run.train.steps} steps)")
    t_train = time.time()
    train_model(run, folder.run_config(), base.processes, resume=True)
    train_seconds = _add_seconds(folder.train_seconds, time.time() - t_train)
    specs = {parse_spec(t)[0] for t in run.data.tasks}
    if any(speech_out_metric(m) and metric_task(m) in specs for m in cfg.metrics):
        stage("vocoder")
        install_vocoder(shared.vocoder(base, data_key, paths[0], units, manifests), folder.model())
    metrics, evals = evaluate_arm(cfg, base, folder, manifests["test"], units, stage)
    curve = score_curve(cfg, base, folder, manifests["test"], units, stage)
    summary = train_summary(folder.model())
    examples = _examples(folder.model())
    return {"arm": arm.name, "seed": seed, "overrides": list(arm.overrides), "metrics": metrics,
            "steps": summary["steps"], "tokens": summary["tokens"], "seconds": round(train_seconds, 1),
            "final_dev_loss": summary["final_dev_loss"], "dev_curve": dev_curve(folder.model()), "hyps": evals,
            **({"final_dev_listening": summary["final_dev_listening"]}
               if summary["final_dev_listening"] is not None else {}),
            "tokens_per_step": summary["tokens_per_step"], "example_share": summary["example_share"],
            "examples": examples, "unit_merges": len(cb.bpe.merges) if cb.bpe is not None else 0,
            "speech_tokens_per_s": speech_tokens_per_second(manifests["train"], units, cb),
            "test_records": len(read_manifest(manifests["test"])), "machine": machine(), "config": asdict(base),
            **({"curve": curve + [{"step": summary["steps"], "examples": examples,
                                   "metrics": {m: v for m, v in metrics.items() if metric_task(m) == cfg.curve_task},
                                   "hyps": {cfg.curve_task: evals.get(cfg.curve_task)}}]} if curve else {})}


def score_curve(cfg: StudyConfig, base: DemoConfig, folder: RunFolder, test: Path, units: Path, stage) -> list[dict]:
    """[{"step", "examples", "metrics", "hyps"}] of the curve task's study metrics on each snapshot of the run
    (`curve`); their reports are `eval/TASK@step-N.json`, reused while the snapshot is unchanged."""
    from dmlm.modeling import CheckpointFiles
    from dmlm.training.loop import snapshot_dir

    task = cfg.curve_task
    spec = next((t for t in base.run.data.tasks if parse_spec(t)[0] == task), None)
    points = []
    for step in base.run.train.snapshots if spec else []:
        snap = snapshot_dir(folder.model(), step)
        if not CheckpointFiles.is_checkpoint(snap):
            raise UserError(f"{snap}: the snapshot of step {step} is missing; train the run again from its start "
                            "(delete its folder) to score the learning curve")
        stage(f"evaluate {task} at step {step}")
        key = f"{task}@step-{step}"
        rep = evaluate_model(LazyModel(snap), [spec], test, folder, units, limit=lambda s: base.eval_limit or None,
                             key=lambda s: key, settings=lambda s: {"limit": base.eval_limit, "manifest": str(test)},
                             progress=False, text_decoding=base.decoding)[key]
        points.append({"step": step, "examples": CheckpointFiles(snap).meta.get("examples"),
                       "metrics": {m: metric_value(rep, m) for m in cfg.metrics
                                   if metric_task(m) == task and metric_value(rep, m) is not None},
                       "hyps": {task: str(folder.eval_hyps(key))}})
    return points


def _examples(model_dir: Path) -> int | None:
    """The examples a finished run trained on (its saved progress)."""
    from dmlm.training.state import read_progress

    progress = read_progress(model_dir)
    return progress.examples if progress is not None else None


def evaluate_arm(cfg: StudyConfig, base: DemoConfig, folder: RunFolder, test: Path, units: Path,
                 stage) -> tuple[dict[str, float], dict[str, str]]:
    """({metric: value}, {task: hypotheses file}) of the study's metrics on the tasks this run trained;
    evaluations are keyed by task name (eval/TASK.json), the model loaded once."""
    specs = {parse_spec(t)[0]: t for t in base.run.data.tasks}
    model = LazyModel(folder.model())
    metrics: dict[str, float] = {}
    evals: dict[str, str] = {}
    settings = {"limit": base.eval_limit, "manifest": str(test)}
    if vocoder_dir(folder.model()).is_dir():  # a report heard through another vocoder is not reused
        settings["vocoder"] = (vocoder_dir(folder.model()) / "config.json").read_text()
    for task in dict.fromkeys(metric_task(m) for m in cfg.metrics):
        if task not in specs:
            continue
        stage(f"evaluate {task}")
        rep = evaluate_model(model, [specs[task]], test, folder, units, limit=lambda spec: base.eval_limit or None,
                             key=lambda spec, task=task: task, settings=lambda spec: settings, progress=False,
                             text_decoding=base.decoding)[task]
        by_ear = scoring_for(task).by_ear == "always"  # its hypotheses are in the report's folder (`evaluate`)
        evals[task] = str(folder.eval_report(task).with_suffix("") / "hyps.jsonl" if by_ear else folder.eval_hyps(task))
        for m in cfg.metrics:
            if metric_task(m) == task and metric_value(rep, m) is not None:
                metrics[m] = metric_value(rep, m)
    return metrics, evals


def _add_seconds(path: Path, seconds: float) -> float:
    """Training wall seconds summed over the invocations that trained this run (a resumed run trains in parts)."""
    total = (json.loads(path.read_text())["seconds"] if path.is_file() else 0.0) + seconds
    atomic_write_json(path, {"seconds": round(total, 1)})
    return total


def load_study_config(path: str | None, overrides: list[str]) -> StudyConfig:
    cfg = load_config(path, overrides, cls=StudyConfig)
    cfg.validate()
    return cfg
