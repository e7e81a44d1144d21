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
  only in training share all three; a codebook arm gets its own codebook and stores.
- **Resumable.** A finished arm × seed is a row of `OUT/runs.jsonl` (keyed by arm, seed and a
  hash of its resolved config) and is skipped on a re-run; a half-trained one resumes from its
  last saved step (`dmlm train --resume`); finished evaluations are reused for the same weights.
- **Progress** is one line per stage naming arm, seed, run k of n and an ETA from the runs
  finished so far, readable in a log file.
- No vocoder is trained in a study: T2S is scored on its units (unit accuracy), which needs no
  audio; by-ear T2S scores are the demo's (`dmlm demo`).
"""

from __future__ import annotations

import copy
import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from dmlm.data.manifest import read_manifest
from dmlm.data.prepare import prepare
from dmlm.recipes.demo import (DemoConfig, _cached, _train, fit_demo_codebook, fit_demo_image_codebook, machine,
                               tokenize_unpaired, train_summary, unpaired_manifests)
from dmlm.util.config import ConfigError, apply_overrides, dump_config, load_config
from dmlm.util.io import atomic_write_text

METRICS = ("asr.wer", "asr.cer", "asr.wer_heldout_voice", "asr.cer_heldout_voice", "s2tt.bleu", "s2tt.chrf",
           "s2tt.bleu_heldout_voice", "t2s.unit_accuracy", "t2s.unit_error_rate", "i2t.cider")
"""Every metric a study can score: task.metric, as in the task's evaluation report."""


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
    """The base run; a study reads its prepare, codebook, image_codebook, run, processes and eval_limit (no
    vocoder, no ASR-only model)."""
    arms: list[Arm] = field(default_factory=list)
    metrics: list[str] = field(default_factory=lambda: ["asr.wer", "asr.cer", "asr.wer_heldout_voice"])
    """Metrics to score (see `METRICS`); a metric of a task an arm does not train is skipped for that arm."""
    primary: str = ""
    """The metric the verdict reads ("": the first of `metrics`)."""
    bootstrap: int = 2000
    """Bootstrap resamples for every interval."""
    docs: str = "docs/studies"
    """Where the summary (NAME.json, NAME.md, plots) is copied for the docs ("": nowhere)."""
    shared: str = ""
    """Folder of corpora, codebooks and token stores ("": OUT/shared). Its entries are named by a hash of what
    made them, so studies can share one folder safely and reuse each other's corpora."""

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
        bad = [m for m in self.metrics if m not in METRICS]
        if bad or not self.metrics:
            raise ConfigError(f"study {self.name}: unknown metrics {bad}; known: {', '.join(METRICS)}")
        if self.primary and self.primary not in self.metrics:
            raise ConfigError(f"study {self.name}: primary {self.primary!r} is not one of metrics {self.metrics}")
        if self.bootstrap < 100:
            raise ConfigError(f"study {self.name}: bootstrap must be at least 100 resamples, got {self.bootstrap}")
        for a in self.arms:
            self.arm_config(a)  # every override names a real key with a value of its type

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
        cfg.validate()
        return cfg


def _hash(obj: object) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:10]


class Shared:
    """Corpora, codebooks and token stores under OUT/shared/, made once per distinct setting."""

    def __init__(self, root: Path):
        self.root = root

    def data(self, cfg: DemoConfig) -> tuple[str, dict[str, Path]]:
        key = f"data-{cfg.prepare.corpus}-{_hash(asdict(cfg.prepare))}"
        return key, prepare(cfg.prepare, self.root / key)

    def codebooks(self, cfg: DemoConfig, data_key: str, manifests: dict[str, Path]):
        uses_images = any(t.split(":")[0] in ("i2t", "image_lm") for t in cfg.run.data.tasks)
        ckey = f"codebook-{_hash([data_key, asdict(cfg.codebook), cfg.codebook_fit_utts])}"
        cb = fit_demo_codebook(cfg, manifests["train"], self.root / f"{ckey}.safetensors")
        icb, ikey = None, ""
        if uses_images:
            ikey = f"image_codebook-{_hash([data_key, asdict(cfg.image_codebook), cfg.image_codebook_fit_images])}"
            icb = fit_demo_image_codebook(cfg, manifests["train"], self.root / f"{ikey}.safetensors")
        return (ckey, cb), (ikey, icb)

    def units(self, data_key: str, ckey: str, cb, ikey: str, icb, manifests: dict[str, Path]) -> Path:
        from dmlm.tokenizers.tokenize import tokenize_images, tokenize_manifest

        folder = self.root / f"units-{_hash([data_key, ckey, ikey])}"
        for split in ("train", "dev", "test"):
            tokenize_manifest(cb, manifests[split], folder)
            if icb is not None:
                tokenize_images(icb, manifests[split], folder)
        tokenize_unpaired(cb, icb, manifests, folder)
        return folder


def _rows(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.is_file() else []


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
    keys = {(a.name, s): _hash(asdict(cfg.arm_config(a, s))) for a, s in plan}
    done = {(r["arm"], r["seed"]) for r in _rows(runs_path) if r.get("config_hash") == keys.get((r["arm"], r["seed"]))}
    progress = _Progress(cfg.name, len(plan), sum((a.name, s) in done for a, s in plan))
    for k, (arm, seed) in enumerate(plan, 1):
        if (arm.name, seed) in done:
            continue
        t0 = time.time()
        row = run_arm_seed(cfg, arm, seed, shared, lambda what, a=arm.name, s=seed, k=k: progress.stage(a, s, k, what))
        row["config_hash"] = keys[(arm.name, seed)]
        # a row per finished run; earlier rows of the same arm × seed (another config) are superseded
        kept = [r for r in _rows(runs_path) if (r["arm"], r["seed"]) != (arm.name, seed)]
        from dmlm.util.io import write_jsonl

        write_jsonl(runs_path, kept + [row])
        progress.finished(time.time() - t0)
    if not summarize:
        return None
    from dmlm.recipes.study_summary import write_summary

    return write_summary(cfg, [r for r in _rows(runs_path) if (r["arm"], r["seed"]) in keys])


def run_arm_seed(cfg: StudyConfig, arm: Arm, seed: int, shared: Shared, stage) -> dict:
    """One run: the arm's corpus, codebooks and token stores (shared), training, and its evaluations."""
    from dmlm.evaluation.tasks import evaluate_task

    base = cfg.arm_config(arm, seed)
    folder = cfg.out_dir / "runs" / arm.name / f"seed{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    stage("prepare")
    data_key, manifests = shared.data(base)
    stage("codebooks")
    (ckey, cb), (ikey, icb) = shared.codebooks(base, data_key, manifests)
    stage("tokenize")
    units = shared.units(data_key, ckey, cb, ikey, icb, manifests)
    run = base.run
    run.data.train, run.data.dev = str(manifests["train"]), str(manifests["dev"])
    run.data.unpaired = unpaired_manifests(manifests)
    run.data.units, run.data.codebook = str(units), str(shared.root / f"{ckey}.safetensors")
    run.data.image_codebook = str(shared.root / f"{ikey}.safetensors") if icb is not None else ""
    run.train.out = str(folder / "model")
    stage(f"train ({run.train.steps} steps)")
    t_train = time.time()
    _train(run, folder, "train", base.processes, resume=True)
    train_seconds = _add_seconds(folder / "train_seconds.json", time.time() - t_train)
    specs = {t.split(":")[0]: t for t in run.data.tasks}
    metrics: dict[str, float] = {}
    evals: dict[str, str] = {}
    for task in dict.fromkeys(m.split(".")[0] for m in cfg.metrics):
        if task not in specs:
            continue
        stage(f"evaluate {task}")
        path = folder / "eval" / f"{task}.json"
        rep = _cached(path, folder / "model", lambda task=task, path=path: evaluate_task(
            folder / "model", specs[task], manifests["test"], path, units=units,
            limit=base.eval_limit or None, progress=False), {"limit": base.eval_limit, "manifest": str(manifests["test"])})
        evals[task] = str(path.with_suffix(".hyps.jsonl"))
        for m in cfg.metrics:
            t, key = m.split(".")
            if t == task and isinstance(rep.get(key), (int, float)):
                metrics[m] = float(rep[key])
    summary = train_summary(folder / "model")
    curve = [{"step": r["step"], "dev_loss": r["dev_loss"]} for r in _rows(folder / "model.log.jsonl") if "dev_loss" in r]
    return {"arm": arm.name, "seed": seed, "overrides": list(arm.overrides), "metrics": metrics,
            "steps": summary["steps"], "tokens": summary["tokens"], "seconds": round(train_seconds, 1),
            "final_dev_loss": summary["final_dev_loss"], "dev_curve": curve, "hyps": evals,
            "tokens_per_step": summary["tokens_per_step"], "example_share": summary["example_share"],
            "test_records": len(read_manifest(manifests["test"])), "machine": machine(), "config": asdict(base)}


def _add_seconds(path: Path, seconds: float) -> float:
    """Training wall seconds summed over the invocations that trained this run (a resumed run trains in parts)."""
    from dmlm.util.io import atomic_write_json

    total = (json.loads(path.read_text())["seconds"] if path.is_file() else 0.0) + seconds
    atomic_write_json(path, {"seconds": round(total, 1)})
    return total


def load_study_config(path: str | None, overrides: list[str]) -> StudyConfig:
    cfg = load_config(path, overrides, cls=StudyConfig)
    cfg.validate()
    return cfg
