"""`dmlm demo`: the whole pipeline on the embedded mini-world corpus, offline, on a CPU.

prepare (espeak-ng speech + drawn scenes) -> speech codebook (Whisper-base k-means) and image
codebook (patch k-means) -> tokenize -> train one model on the task mixture (ASR, S2TT
en->es, T2S, I2T, unpaired text/speech/images) and, for comparison, an ASR-only model for the
same number of steps -> train the unit vocoder -> evaluate every task on held-out sentences
-> runs/demo/{report.md, report.json, loss.png, examples/}.

Design decisions:
- The ASR-only model takes the same steps and the same number of ASR examples per step as
  the mixture model (its batch is the mixture's ASR share of it, `asr_only_batch_tokens`);
  the mixture adds the other tasks on top. So the comparison asks "does adding tasks hurt
  ASR?", at the price of the mixture's larger steps, which the report states.
- Each model trains with its own best loss (`asr_only_loss`): the mixture's per-modality means
  over target spans only (`target_length_normalized`), the ASR-only model's over every token
  (`length_normalized`), which lets it learn from the speech it reads.
- Every stage skips work already done, so an interrupted demo re-run continues where it
  stopped (training resumes from its last saved step).
"""

from __future__ import annotations

import json
import logging
import platform
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from dmlm.data.manifest import read_manifest
from dmlm.data.prepare import PrepareConfig, prepare
from dmlm.data.split import store_prefix
from dmlm.decoding import DecodingOptions
from dmlm.evaluation.headline import SPEECH_OUT_KEYS, headline
from dmlm.modeling import CheckpointFiles, vocoder_dir
from dmlm.tokenizers.image import ImageCodebookSettings
from dmlm.tokenizers.speech import CodebookSettings
from dmlm.training.config import RunConfig
from dmlm.util.config import ConfigError, dump_config, load_config
from dmlm.util.cores import available_cores
from dmlm.util.errors import UserError
from dmlm.util.io import atomic_write_json, atomic_write_text
from dmlm.vocoder.model import VocoderConfig

log = logging.getLogger(__name__)


@dataclass
class DemoConfig:
    out: str = "runs/demo"
    """Output folder: data/, units/, codebooks, model/, model_asr/, report.*"""
    prepare: PrepareConfig = field(default_factory=PrepareConfig)
    codebook: CodebookSettings = field(default_factory=CodebookSettings)
    codebook_fit_utts: int = 1500
    """Training utterances whose frames the speech k-means is fitted on."""
    image_codebook: ImageCodebookSettings = field(default_factory=ImageCodebookSettings)
    image_codebook_fit_images: int = 3000
    """Training images whose patches the image k-means is fitted on."""
    run: RunConfig = field(default_factory=RunConfig)
    """The mixture model (its data.tasks and data.weights are the mixture)."""
    asr_only_batch_tokens: int = 0
    """Per-rank batch of the ASR-only comparison model (same steps as `run`); 0: no comparison model."""
    asr_only_loss: str = ""
    """Loss of the ASR-only model ("": the mixture's). Each model should get its own best loss: an ASR-only model
    learns from the speech it reads (`length_normalized`), the mixture does better without it (docs/experiments.md, "Loss")."""
    vocoder: VocoderConfig = field(default_factory=VocoderConfig)
    vocoder_minutes: float = 4.0
    """Training budget of the unit vocoder (0: no vocoder, no audio-level T2S scores)."""
    judge: str = "whisper-base"
    """Whisper preset that listens to synthesized speech (T2S and resynthesis WER)."""
    t2s_eval: int = 100
    """Test sentences synthesized by T2S for judging by ear."""
    resynthesis_eval: int = 100
    """Test clips per voice group (training voices, held-out voice) resynthesized and judged besides the
    vocoder's own voice: the vocoder re-speaking other voices in its own, a diagnostic no headline
    score reads. 0: the vocoder's voice alone (each judged clip costs a full Whisper window:
    docs/design/evaluation.md)."""
    resynthesis_voice_clips: int = -1
    """Test clips in the vocoder's own voice resynthesized and judged as their group (-1: every one in
    the test split; the ~50 among the first `t2s_eval` are too few to read reliably)."""
    t2s_decoding: DecodingOptions = field(default_factory=DecodingOptions)
    """How T2S is decoded for judging by ear."""
    t2s_greedy: bool = True
    """With `t2s_decoding.rerank` > 1, also judge greedy T2S by Whisper (greedy_wer): what reranking buys."""
    eval_limit: int = 0
    """Score only the first N test records per task (0: all)."""
    examples: int = 6
    """Examples per task shown in report.md."""
    processes: int = 2
    """Training processes (torchrun, gloo on CPU). On a 2-core CPU two single-thread ranks train
    ~30 % faster than one process with two threads; 1 trains in this process."""

    def validate(self) -> None:
        """Settings no single field's type can check (filled configs skip `__post_init__`)."""
        from dmlm.training.loss import LOSSES

        if self.asr_only_loss and self.asr_only_loss not in LOSSES:
            raise UserError(f"asr_only_loss must be one of {LOSSES} or empty (the mixture's), got {self.asr_only_loss!r}")
        self.codebook.check()  # before hours of corpus making, not at the codebook stage


def machine() -> dict:
    import os

    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
            "torch_threads": torch.get_num_threads(), "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "python": platform.python_version(), "torch": torch.__version__}


def fit_demo_codebook(cfg: DemoConfig, train_manifest: Path, path: Path):
    from dmlm.tokenizers.speech import Codebook, fit_codebook
    from dmlm.tokenizers.tokenize import load_record_audio

    want = CodebookSettings(**asdict(cfg.codebook))
    if path.is_file():
        cb = Codebook.load(path)
        # frame_rate is an output of fitting (the encoder's rate / pooling), not a setting to compare
        if cb.settings.reproducing() | {"frame_rate": 0} == want.reproducing() | {"frame_rate": 0}:
            return cb
        raise UserError(f"{path} exists with other settings; delete it or use another demo folder")
    records = read_manifest(train_manifest)[: cfg.codebook_fit_utts]
    cb = fit_codebook((load_record_audio(train_manifest, r) for r in records), want, total=len(records))
    cb.save(path)
    return cb


def fit_demo_image_codebook(cfg: DemoConfig, train_manifest: Path, path: Path):
    from dmlm.tokenizers.image import ImageCodebook, fit_image_codebook
    from dmlm.util.images import load_image

    want = ImageCodebookSettings(**asdict(cfg.image_codebook))
    if path.is_file():
        cb = ImageCodebook.load(path)
        if cb.settings.reproducing() == want.reproducing():
            return cb
        raise UserError(f"{path} exists with other settings; delete it or use another demo folder")
    records = [r for r in read_manifest(train_manifest) if r.image][: cfg.image_codebook_fit_images]
    cb = fit_image_codebook([load_image(r.image_path(train_manifest), size=want.image_size) for r in records], want)
    cb.save(path)
    return cb


def _cpu_seconds() -> float:
    """CPU seconds (user + system) of this process and of its finished children (torchrun ranks,
    synthesis workers): against wall seconds it says how much of the machine a stage used."""
    import resource

    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


class _Stages:
    """Times each stage (wall and CPU seconds); prints a banner so the demo log reads as the pipeline."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self.cpu_seconds: dict[str, float] = {}

    def __call__(self, name: str):
        stages = self

        class _S:
            def __enter__(self):
                self.t, self.cpu = time.time(), _cpu_seconds()
                print(f"\n== {name} ==", flush=True)

            def __exit__(self, *exc):
                wall = stages.seconds[name] = round(time.time() - self.t, 1)
                cpu = stages.cpu_seconds[name] = round(_cpu_seconds() - self.cpu, 1)
                if exc[0] is None:
                    print(f"== {name}: {wall:.0f} s wall, {cpu:.0f} CPU s ({cpu / max(wall, 1e-9):.2f} cores busy)",
                          flush=True)

        return _S()


def _train(run: RunConfig, out: Path, name: str, processes: int, resume: bool) -> None:
    from dmlm.training.train import train

    if processes > 1:
        train_distributed(run, out / f"{name}.yaml", processes, resume)
    else:
        train(run, resume=resume)


def run_demo(cfg: DemoConfig, resume: bool = True) -> dict:
    from dmlm.evaluation.tasks import evaluate_task
    from dmlm.tokenizers.tokenize import tokenize_images, tokenize_manifest
    from dmlm.training.train import plot_losses

    cfg.validate()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "demo.yaml", dump_config(cfg))
    stage = _Stages()
    t_all = time.time()
    run = cfg.run
    tasks = run.data.tasks
    uses_images = any(t.split(":")[0] in ("i2t", "image_lm") for t in tasks)

    with stage("prepare"):
        manifests = prepare(cfg.prepare, out / "data")
    with stage("codebooks"):
        cb = fit_demo_codebook(cfg, manifests["train"], out / "codebook.safetensors")
        icb = fit_demo_image_codebook(cfg, manifests["train"], out / "image_codebook.safetensors") if uses_images else None
    with stage("tokenize"):
        for split in ("train", "dev", "test"):
            tokenize_manifest(cb, manifests[split], out / "units")
            if icb is not None:
                tokenize_images(icb, manifests[split], out / "units")
        if "neural_extra" in manifests:  # the vocoder's extra audio: speech units only
            tokenize_manifest(cb, manifests["neural_extra"], out / "units")
        tokenize_unpaired(cb, icb, manifests, out / "units")
    run.data.train, run.data.dev = str(manifests["train"]), str(manifests["dev"])
    run.data.unpaired = unpaired_manifests(manifests)
    run.data.units, run.data.codebook = str(out / "units"), str(out / "codebook.safetensors")
    run.data.image_codebook = str(out / "image_codebook.safetensors") if icb is not None else ""
    run.train.out = str(out / "model")
    with stage("train"):
        _train(run, out, "train", cfg.processes, resume)
    models = {"mixture": out / "model"}
    if cfg.asr_only_batch_tokens and tasks != ["asr"]:
        asr_run = replace(run, data=replace(run.data, tasks=["asr"], weights=[], image_codebook="", unpaired=[],
                                            speakers={k: v for k, v in run.data.speakers.items() if k == "asr"}),
                          train=replace(run.train, out=str(out / "model_asr"), batch_tokens=cfg.asr_only_batch_tokens,
                                        loss=cfg.asr_only_loss or run.train.loss))
        with stage("train_asr_only"):
            _train(asr_run, out, "train_asr", cfg.processes, resume)
        models["asr_only"] = out / "model_asr"
    if cfg.vocoder_minutes > 0 and any(t.split(":")[0] == "t2s" for t in tasks):
        with stage("vocoder"):
            train_demo_vocoder(cfg, [manifests[m] for m in ("train", "neural_extra") if m in manifests], out)

    reports: dict[str, dict] = {}
    evals = out / "eval"
    with stage("evaluate"):
        limit = cfg.eval_limit or None
        for spec in tasks:
            name = spec.split(":")[0]
            key = spec.replace(":", "_")
            reports[key] = _cached(evals / f"{key}.json", models["mixture"], lambda: evaluate_task(
                models["mixture"], spec, manifests["test"], evals / f"{key}.json", units=out / "units",
                limit=limit if name != "asr" else None))
        if "asr_only" in models:
            reports["asr_only"] = _cached(evals / "asr_only.json", models["asr_only"], lambda: evaluate_task(
                models["asr_only"], "asr", manifests["test"], evals / "asr_only.json", units=out / "units"))
        if vocoder_dir(out / "model").is_dir():
            reports.update(evaluate_speech_out(cfg, out, manifests["test"]))
    for name, path in models.items():
        log_path = path.with_name(path.name + ".log.jsonl")
        if log_path.is_file():
            plot_losses(log_path, out / ("loss.png" if name == "mixture" else f"loss_{name}.png"))
    report = {
        "tasks": summarize(reports),
        "machine": machine(),
        "minutes": round((time.time() - t_all) / 60, 2),
        "stages_seconds": stage.seconds,
        "stages_cpu_seconds": stage.cpu_seconds,
        **_accumulate_stages(out / "stages.json", stage.seconds, stage.cpu_seconds),
        "train": {name: train_summary(path) for name, path in models.items()},
        "codebook": {"fingerprint": cb.fingerprint, **cb.settings.reproducing()},
        "image_codebook": {"fingerprint": icb.fingerprint, **asdict(icb.settings)} if icb is not None else None,
        "data": {s: len(read_manifest(p)) for s, p in manifests.items()},
        "models": {k: str(v.resolve()) for k, v in models.items()},
        "config": asdict(cfg),
    }
    atomic_write_json(out / "report.json", report)
    from dmlm.recipes.intervals import headline_intervals
    from dmlm.recipes.report import write_reports

    try:  # intervals.json: each headline score's 95 % interval over test utterances
        headline_intervals(out)
    except UserError as e:  # the scores stand without it; say why it is missing rather than fail the run
        log.warning("no intervals.json: %s", e)
    write_reports(out, results=None)
    return report


UNPAIRED = ("unpaired", "unpaired_speech", "unpaired_images")
"""The prepared manifests of unpaired data: text only, audio only, images only (`PrepareConfig.n_unpaired*`)."""


def unpaired_manifests(manifests: dict[str, Path]) -> list[str]:
    """`run.data.unpaired`: every unpaired manifest the corpus has."""
    return [str(manifests[k]) for k in UNPAIRED if k in manifests]


def tokenize_unpaired(cb, icb, manifests: dict[str, Path], units: Path) -> None:
    """Units of the unpaired audio and codes of the unpaired images (unpaired text needs no store)."""
    from dmlm.tokenizers.tokenize import tokenize_images, tokenize_manifest

    if "unpaired_speech" in manifests:
        tokenize_manifest(cb, manifests["unpaired_speech"], units)
    if "unpaired_images" in manifests and icb is not None:
        tokenize_images(icb, manifests["unpaired_images"], units)


def _accumulate_stages(path: Path, seconds: dict[str, float], cpu_seconds: dict[str, float]) -> dict:
    """Stage times summed over every invocation on this folder (a resumed demo did its work in parts)."""
    total = json.loads(path.read_text()) if path.is_file() else {"invocations": 0, "stages_seconds": {}}
    total["invocations"] += 1
    total.setdefault("stages_cpu_seconds", {})
    for key, new in (("stages_seconds", seconds), ("stages_cpu_seconds", cpu_seconds)):
        for k, v in new.items():
            total[key][k] = round(total[key].get(k, 0.0) + v, 1)
    atomic_write_json(path, total)
    return {"all_invocations": {**total, "minutes": round(sum(total["stages_seconds"].values()) / 60, 2)}}


def _stamp(model_dir: Path, vocoder: bool = False, judge: Path | None = None) -> str:
    """Identifies what an evaluation read, so that it can be reused: the checkpoint's weights;
    with `vocoder`, its vocoder too (weights, settings, matching set); with `judge`, that judge
    checkpoint's weights. A text task's report survives a new vocoder or matching set."""
    parts = [model_dir / "model.safetensors"]
    if vocoder:  # synthesis settings and the matching set can change without retraining
        parts += [vocoder_dir(model_dir) / f for f in ("model.safetensors", "config.json", "matching.safetensors")]
    if judge is not None:
        parts.append(judge / "model.safetensors")
    return ";".join(f"{p.stat().st_size}-{p.stat().st_mtime_ns}" for p in parts if p.is_file())


def _cached(path: Path, model_dir: Path, evaluate, settings: object = None, vocoder: bool = False,
            judge: Path | None = None) -> dict:
    """The report at `path` if it was made for these weights (`_stamp`) and `settings` (a
    dataclass, e.g. decoding options, or a dict), else `evaluate()` (stamped)."""
    stamp = _stamp(model_dir, vocoder, judge)
    if settings is not None:
        stamp += f";{json.dumps(settings if isinstance(settings, dict) else asdict(settings), sort_keys=True)}"
    if path.is_file():
        rep = json.loads(path.read_text())
        if rep.get("model_stamp") == stamp:
            return rep
    rep = evaluate()
    rep["model_stamp"] = stamp
    atomic_write_json(path, rep)
    return rep


def train_demo_vocoder(cfg: DemoConfig, manifests: Sequence[Path], out: Path) -> None:
    """The unit vocoder, trained on `manifests` (the training split, and the neural voice's extra
    audio when prepared) and their units, stored in the model's `vocoder/`."""
    from dmlm.vocoder.model import MATCHING, MatchingSet
    from dmlm.vocoder.train import add_matching_set, train_vocoder

    target = vocoder_dir(out / "model")
    stores = [store_prefix(out / "units", m) for m in manifests]
    if (target / "config.json").is_file():
        saved = json.loads((target / "config.json").read_text())
        changed = cfg.vocoder.changed_settings(saved)
        info = saved.get("training") or {}
        trained_on = info.get("manifests") or ([info["manifest"]] if "manifest" in info else None)  # older: one
        if trained_on is not None and trained_on != [str(Path(m).resolve()) for m in manifests]:
            changed.append(f"training manifests {trained_on}")
        if changed:
            raise UserError(f"{target}: this vocoder was trained with other settings ({', '.join(changed)}); "
                             f"delete the folder to train it again")
        # synthesis settings are taken as they are; a new matching_clips rebuilds only the matching set
        new = {k: getattr(cfg.vocoder, k) for kind in ("synthesis", "matching")
               for k in cfg.vocoder.changed_settings(saved, kind)}
        if new:
            log.info("vocoder: new settings without retraining %s", new)
            saved.update(new)
            atomic_write_json(target / "config.json", saved)
        # the old set is of other clips, or lacks the frame order that matching with context needs
        if "matching_clips" in new or (cfg.vocoder.knn_context and not MatchingSet.saved_with_context(target)):
            (target / MATCHING).unlink(missing_ok=True)
        if cfg.vocoder.knn and cfg.vocoder.matching_clips and not (target / MATCHING).is_file():
            log.info("vocoder: building its matching set (knn=%d, %d clips)", cfg.vocoder.knn, cfg.vocoder.matching_clips)
            add_matching_set(target, list(manifests), stores, out / "codebook.safetensors")
        return
    train_vocoder(list(manifests), stores, out / "codebook.safetensors", cfg.vocoder, target,
                  max_minutes=cfg.vocoder_minutes)


def evaluate_speech_out(cfg: DemoConfig, out: Path, test_manifest: Path) -> dict[str, dict]:
    """T2S and resynthesis judged by ear: units -> vocoder -> an ASR -> WER against the text.

    Two judges: Whisper (`cfg.judge`, independent, but weak on espeak-ng voices: its WER on the
    original recordings is reported beside) and the ASR-only model (in-domain, strong, but it
    hears through the same codebook, so it rewards audio that maps back to the right units).
    """
    from dmlm.evaluation.judge import CheckpointJudge, OnceJudge, WhisperJudge
    from dmlm.evaluation.speech import evaluate_resynthesis, evaluate_t2s_audio
    from dmlm.modeling import load_checkpoint

    parts: dict = {}

    def ck():
        if "ck" not in parts:
            parts["ck"] = load_checkpoint(out / "model")
        return parts["ck"]

    # each judge hears a clip once: the recordings T2S is read against are those resynthesis judged
    judges = {"whisper": lambda: OnceJudge(WhisperJudge(cfg.judge))}
    if CheckpointFiles.is_checkpoint(out / "model_asr"):
        judges["asr_only"] = lambda: OnceJudge(CheckpointJudge(out / "model_asr"))
    reports: dict[str, dict] = {}
    units: dict = {}  # T2S units, generated once for both judges
    ex = out / "examples"
    for jname, make in judges.items():
        def judge(make=make, jname=jname):
            if jname not in parts:
                parts[jname] = make()
            return parts[jname]

        sfx = "" if jname == "whisper" else f"_{jname}"
        read = {"vocoder": True, "judge": out / "model_asr" if jname == "asr_only" else None}
        clips = None if cfg.resynthesis_voice_clips < 0 else cfg.resynthesis_voice_clips
        reports[f"resynthesis{sfx}"] = _cached(out / "eval" / f"resynthesis{sfx}.json", out / "model", lambda: evaluate_resynthesis(
            ck(), test_manifest, store_prefix(out / "units", test_manifest), judge(), n=cfg.resynthesis_eval, out_dir=ex / f"resynthesis{sfx}",
            voice_clips=clips), {"voice_clips": clips, "per_group": cfg.resynthesis_eval}, **read)
        reports[f"t2s_audio{sfx}"] = _cached(out / "eval" / f"t2s_audio{sfx}.json", out / "model", lambda: evaluate_t2s_audio(
            ck(), test_manifest, judge(), cfg.t2s_decoding, n=cfg.t2s_eval, out_dir=ex / f"t2s{sfx}", units_cache=units),
            cfg.t2s_decoding, **read)
        if jname == "whisper" and cfg.t2s_greedy and cfg.t2s_decoding.rerank > 1:  # what reranking buys, beside it
            greedy = DecodingOptions()
            reports["t2s_audio_greedy"] = _cached(out / "eval" / "t2s_audio_greedy.json", out / "model", lambda: evaluate_t2s_audio(
                ck(), test_manifest, judge(), greedy, n=cfg.t2s_eval, out_dir=ex / "t2s_greedy"), greedy, **read)
    return reports


def summarize(reports: dict[str, dict]) -> dict:
    """report.json's `tasks`: the headline numbers of every task (full reports are in eval/)."""
    tasks: dict[str, dict] = {}
    for key, rep in reports.items():
        row = headline(rep)
        if "heldout_combo" in rep:
            row["heldout_combo"] = {k: v for k, v in rep["heldout_combo"].items() if isinstance(v, (int, float))}
        tasks[key] = row
    # T2S is one task scored on units (t2s) and by ear (t2s_audio*); resynthesis by two judges
    for src, dst, prefix in (("t2s_audio", "t2s", ""), ("t2s_audio_asr_only", "t2s", "asr_only_judge_"),
                             ("t2s_audio_greedy", "t2s", "greedy_"),
                             ("resynthesis_asr_only", "resynthesis", "asr_only_judge_")):
        if src in tasks:
            audio = tasks.pop(src)
            tasks.setdefault(dst, {}).update({f"{prefix}{k}": audio.get(k) for k in SPEECH_OUT_KEYS if k in audio})
    if "s2tt_es" in tasks:
        tasks["s2tt"] = tasks.pop("s2tt_es")
    return tasks


def train_summary(model_dir: Path) -> dict:
    """Steps, speed, dev loss and the mixture as trained: mean tokens per step by modality, examples by task.

    The log has every `log_every`-th step, so per-step means come from those rows; the total
    token count is the exact one of the training state.
    """
    log_path = model_dir.with_name(model_dir.name + ".log.jsonl")
    rows = [json.loads(x) for x in log_path.read_text().splitlines()] if log_path.is_file() else []
    steps_logged = [r for r in rows if "loss" in r]
    speed = [r for r in rows if "tokens_per_s" in r]
    files = CheckpointFiles(model_dir)
    meta, saved = files.meta, files.config  # saved: the run config the model was trained with
    state = files.state_dir / "progress.json"
    n = max(1, len(steps_logged))
    per_step = {k.removeprefix("tokens_"): round(sum(r.get(k, 0) for r in steps_logged) / n)
                for k in ("tokens", "tokens_text", "tokens_speech", "tokens_image")}
    examples = {k.removeprefix("examples_"): sum(r[k] for r in steps_logged) for k in (steps_logged[0] if steps_logged else {})
                if k.startswith("examples_")}
    total_ex = sum(examples.values()) or 1
    return {"steps": rows[-1]["step"] if rows else None, "tokens_per_s": speed[-1]["tokens_per_s"] if speed else None,
            "tokens": json.loads(state.read_text())["tokens"] if state.is_file() else None,
            "tokens_per_step": per_step, "example_share": {k: round(v / total_ex, 3) for k, v in examples.items()},
            "final_dev_loss": next((r["dev_loss"] for r in reversed(rows) if "dev_loss" in r), None),
            "padding_share": meta.get("model_summary", {}).get("padding_share"), "tasks": meta.get("tasks"),
            "weights": saved.get("data", {}).get("weights"),
            "batch_tokens": saved.get("train", {}).get("batch_tokens"), "loss": saved.get("train", {}).get("loss"),
            "params": meta.get("model_summary", {}).get("params")}


def train_distributed(run: RunConfig, config_path: Path, processes: int, resume: bool) -> None:
    """`dmlm train` under torchrun with `processes` ranks (one thread each on CPU)."""
    import os
    import socket
    import sys

    from dmlm.util.children import run_child

    atomic_write_text(config_path, dump_config(run))
    with socket.socket() as sock:  # a free port for the rendezvous
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = dict(os.environ)
    if not torch.cuda.is_available():
        env.update(OMP_NUM_THREADS=str(max(1, available_cores() // processes)), GLOO_SOCKET_IFNAME="lo")
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={processes}", "--master_addr=127.0.0.1",
           f"--master_port={port}", "-m", "dmlm.cli", "train", str(config_path)] + (["--resume"] if resume else [])
    print(" ".join(cmd), flush=True)
    rc = run_child(cmd, env)  # a SIGTERM to this process stops the ranks too
    if rc != 0:
        raise UserError(f"training under torchrun failed (exit status {rc}); the ranks' errors are printed above")


def load_demo_config(path: str | None, overrides: list[str]) -> DemoConfig:
    cfg = load_config(path, overrides, cls=DemoConfig)
    try:
        cfg.validate()
    except ValueError as e:
        raise ConfigError(str(e)) from None
    return cfg
