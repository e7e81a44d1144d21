"""The stages every recipe is made of: prepare, fit codebooks, tokenize, train, evaluate.

`dmlm demo`, `dmlm study`, the CLI's `dmlm codebook fit` and `bench/` call these functions; a
recipe is the order it calls them in and where it puts their outputs (`RunFolder`).

Design decisions:
- **One implementation per stage.** `fit_speech_codebook` / `fit_image_codebook` are what
  `dmlm codebook fit` runs and what the recipes run (`fit_codebooks` adds reuse of a file fitted
  with the same settings); training goes through `train_model` (in this process, or under
  torchrun via `dmlm.training.launch`).
- **Work done is not redone.** A codebook file fitted with the same settings is reused (another
  one is an error, not a silent refit), and so is a file of unit merges (`fit_merges`: one file per
  merge count, its units the unit codebook's, so every count shares the token stores); an
  evaluation report is reused while the files it read are unchanged (`cached`, keyed by
  `stamp`); training resumes from its last saved step.
- **A model is loaded once** for all its evaluations (`evaluate_model`, through `dmlm.load`),
  and only if one of them has to run.
- Which modality a task reads or writes is asked of the task table (`dmlm.tasks`), never
  spelled here by task name.
"""

from __future__ import annotations

import json
import logging
import platform
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from dmlm.data.manifest import read_manifest
from dmlm.decoding import DecodingOptions
from dmlm.modeling import vocoder_dir
from dmlm.recipes.run_folder import RunFolder
from dmlm.tasks import get_task, parse_spec
from dmlm.tokenizers.image import ImageCodebook, ImageCodebookSettings
from dmlm.tokenizers.speech import Codebook, CodebookSettings
from dmlm.training.config import RunConfig
from dmlm.util.errors import UserError
from dmlm.util.io import atomic_write_json

log = logging.getLogger(__name__)

SPLITS = ("train", "dev", "test")
UNPAIRED = ("unpaired", "unpaired_speech", "unpaired_images")
"""The prepared manifests of unpaired data: text only, audio only, images only (`PrepareConfig.n_unpaired*`)."""
EXTRA_AUDIO = "neural_extra"
"""The prepared manifest of the vocoder's extra audio (speech units only)."""
TEST_SETS = ("test_domain",)
"""Prepared test sets beside the test split (`PrepareConfig.n_test_domain`: the held-out text domain), tokenized
like it; no training task reads them."""


# -- timing ----------------------------------------------------------------------------------------

def cpu_seconds() -> float:
    """CPU seconds (user + system) of this process and of its finished children (torchrun ranks,
    synthesis workers): against wall seconds it says how much of the machine a stage used."""
    import resource

    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


class Stages:
    """Times each stage (wall and CPU seconds); prints a banner so a recipe's log reads as its pipeline.

        stage = Stages()
        with stage("prepare"):
            ...
    """

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self.cpu_seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        t, cpu0 = time.time(), cpu_seconds()
        print(f"\n== {name} ==", flush=True)
        ok = False
        try:
            yield
            ok = True
        finally:
            wall = self.seconds[name] = round(time.time() - t, 1)
            cpu = self.cpu_seconds[name] = round(cpu_seconds() - cpu0, 1)
            if ok:
                print(f"== {name}: {wall:.0f} s wall, {cpu:.0f} CPU s ({cpu / max(wall, 1e-9):.2f} cores busy)", flush=True)


def machine() -> dict:
    """The machine a run ran on (CPU, cores, memory, whether bf16 autocast is native, GPU, versions): stated beside
    every timing. The same CPU name covers models with and without AVX512-BF16, whose speeds differ ~1.7x."""
    import os

    import torch

    from dmlm.util.precision import native_bf16

    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line[line.index(":") + 1 :].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
            "torch_threads": torch.get_num_threads(), "native_bf16": native_bf16(), "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "python": platform.python_version(), "torch": torch.__version__}


# -- prepare ---------------------------------------------------------------------------------------

def prepare_data(cfg, folder: str | Path) -> dict[str, Path]:
    """The corpus `cfg` (a `PrepareConfig`) in `folder`, made once: {manifest name: path}."""
    from dmlm.data.prepare import prepare

    return prepare(cfg, folder)


def unpaired_manifests(manifests: dict[str, Path]) -> list[str]:
    """`run.data.unpaired`: every unpaired manifest the corpus has."""
    return [str(manifests[k]) for k in UNPAIRED if k in manifests]


def uses_images(specs: Sequence[str]) -> bool:
    """Whether any task of `specs` reads or writes images (then an image codebook is needed)."""
    return any("image" in (task.source, task.target) for task in (get_task(parse_spec(s)[0]) for s in specs))


def uses_speech_out(specs: Sequence[str]) -> bool:
    """Whether any task of `specs` writes speech from a source (then a vocoder makes it audible)."""
    return any(task.source is not None and task.target == "speech" for task in (get_task(parse_spec(s)[0]) for s in specs))


# -- codebooks -------------------------------------------------------------------------------------

def fit_speech_codebook(manifest: str | Path, settings: CodebookSettings, max_utts: int = 0) -> Codebook:
    """k-means units fitted on the audio of the first `max_utts` records that have audio (0: all), taken in
    turn from each recording language where there are several (a manifest lists its languages one after
    another: the first records alone would fit an English-only codebook; docs/design/data.md, "Speech in
    four languages"). A one-language manifest gives its first `max_utts` records, as always."""
    from dmlm.tokenizers.speech import fit_codebook
    from dmlm.tokenizers.tokenize import load_record_audio

    records = interleave_languages([r for r in read_manifest(manifest) if r.audio is not None])[: max_utts or None]
    if not records:
        raise UserError(f"{manifest}: no record has 'audio'")
    return fit_codebook((load_record_audio(manifest, r) for r in records), replace(settings), total=len(records))


def interleave_languages(records: list) -> list:
    """`records` taken in turn from each language (`record.lang`, in order of first appearance), each
    language's records in their own order; a one-language list is returned unchanged."""
    by_lang: dict = {}
    for r in records:
        by_lang.setdefault(r.lang, []).append(r)
    if len(by_lang) < 2:
        return records
    queues = list(by_lang.values())
    return [q[i] for i in range(max(map(len, queues))) for q in queues if i < len(q)]


def fit_image_codebook(manifest: str | Path, settings: ImageCodebookSettings, max_images: int = 0) -> ImageCodebook:
    """Patch k-means codes fitted on the first `max_images` images (0: all); an external codebook has nothing to fit."""
    from dmlm.tokenizers.image import fit_image_codebook as fit
    from dmlm.tokenizers.tokenize import load_record_image

    if settings.backend == "external":  # codes come from another tokenizer: nothing to fit
        if not settings.name:
            raise UserError("an external image codebook needs name=… (the tokenizer that made the codes) and k=…")
        return ImageCodebook.external(settings.k, settings.name, settings.image_size)
    records = [r for r in read_manifest(manifest) if r.image is not None][: max_images or None]
    if not records:
        raise UserError(f"{manifest}: no record has an 'image'")
    return fit([load_record_image(manifest, r, settings.image_size) for r in records], replace(settings))


def _reuse_or_fit(path: Path, load: Callable, same: Callable[[Any], bool], fit: Callable[[], Any]):
    """The codebook at `path` if `same(it)`, else (no file) `fit()` saved there; another one at `path` is an error."""
    if path.is_file():
        cb = load(path)
        if same(cb):
            return cb
        raise UserError(f"{path} exists with other settings; delete it or use another output folder")
    cb = fit()
    cb.save(path)
    return cb


def fit_codebooks(manifest: Path, speech: CodebookSettings, speech_utts: int, speech_path: Path,
                  image: ImageCodebookSettings | None = None, images: int = 0,
                  image_path: Path | None = None) -> tuple[Codebook, ImageCodebook | None]:
    """The speech codebook (and with `image`, the image codebook) fitted on `manifest`, or reused
    from their files when those were fitted with the same settings."""
    def same_speech(cb: Codebook) -> bool:  # frame_rate is an output of fitting (the encoder's rate / pooling)
        return cb.settings.reproducing() | {"frame_rate": 0} == speech.reproducing() | {"frame_rate": 0}

    cb = _reuse_or_fit(speech_path, Codebook.load, same_speech, lambda: fit_speech_codebook(manifest, speech, speech_utts))
    icb = None
    if image is not None:
        icb = _reuse_or_fit(image_path, ImageCodebook.load, lambda c: c.settings.reproducing() == image.reproducing(),
                            lambda: fit_image_codebook(manifest, image, images))
    return cb, icb


def merged_codebook_path(codebook: Path, merges: int) -> Path:
    """The file of the speech codebook carrying `merges` unit merges: beside the unit codebook `codebook`, named
    by the count (`codebook-merges500.safetensors`), so runs with other counts never share one; `codebook`
    itself without merges. Its units, and so the token stores and the vocoder, are the unit codebook's."""
    return codebook.with_name(f"{codebook.stem}-merges{merges}{codebook.suffix}") if merges else codebook


def fit_merges(cb: Codebook, merges: int, train: Path, units: Path, path: Path) -> Codebook:
    """The speech codebook a run reads: `cb` without `merges`; else `cb` carrying up to `merges` unit merges
    fitted on the units of the training manifest `train` (its store in `units`, made with `cb`; see
    `dmlm.tokenizers.unit_bpe`), saved at `path` (`merged_codebook_path`), or reused from there when that file
    holds merges fitted on `cb`. A file there without merges, or of another codebook, is an error, as
    `fit_codebooks` refuses a codebook of other settings."""
    from dmlm.tokenizers.tokenize import fit_bpe

    if not merges:
        return cb
    if path.is_file():
        merged = Codebook.load(path)
        if merged.bpe is not None and merged.fingerprint == cb.fingerprint:
            return merged
        what = "no unit merges" if merged.bpe is None else f"the unit merges of codebook {merged.fingerprint}"
        raise UserError(f"{path} holds {what}, not merges of codebook {cb.fingerprint}; delete it or use another "
                        "output folder")
    merged = fit_bpe(cb.with_bpe(None), train, units, merges)
    merged.save(path)
    return merged


def merges_summary(cb: Codebook) -> dict:
    """A report's facts of the codebook's unit merges ({} without): how many were fitted (a small corpus may give
    fewer than asked), the speech ids they make and their fingerprint."""
    if cb.bpe is None:
        return {}
    return {"merges": len(cb.bpe.merges), "pieces": cb.pieces, "merges_fingerprint": cb.bpe.fingerprint}


def speech_tokens_per_second(manifest: Path, units: Path, codebook: Codebook) -> float | None:
    """Speech tokens the LM reads per second of `manifest`'s audio: each record's units as stored in `units`
    (after the codebook's deduplication), rendered as `codebook`'s merged pieces when it has merges (as
    training renders them, `Vocab.speech_ids`), summed over the records with audio and a `duration`, divided
    by their summed duration (None: no such record)."""
    from dmlm.data.split import Split

    records = [r for r in read_manifest(manifest) if r.audio is not None and r.duration]
    if not records:
        return None
    store = Split(manifest, units).store("speech", codebook)
    seqs = [store.get(r.id) for r in records]
    pieces = codebook.bpe.encode_batch(seqs) if codebook.bpe is not None else seqs
    return round(sum(map(len, pieces)) / sum(r.duration for r in records), 3)


# -- tokenize --------------------------------------------------------------------------------------

def tokenize_splits(cb: Codebook, icb: ImageCodebook | None, manifests: dict[str, Path], units: Path) -> None:
    """Units (and image codes) of every split, the vocoder's extra audio, the other test sets (`TEST_SETS`) and the
    unpaired audio and images (unpaired text needs no store); a store already made is kept."""
    from dmlm.tokenizers.tokenize import tokenize_images, tokenize_manifest

    for split in SPLITS:
        tokenize_manifest(cb, manifests[split], units)
        if icb is not None:
            tokenize_images(icb, manifests[split], units)
    if EXTRA_AUDIO in manifests:  # the vocoder's extra audio: speech units only
        tokenize_manifest(cb, manifests[EXTRA_AUDIO], units)
    for name in (n for n in TEST_SETS if n in manifests):  # scored like test, so tokenized like it
        tokenize_manifest(cb, manifests[name], units)
    tokenize_unpaired(cb, icb, manifests, units)


def tokenize_unpaired(cb: Codebook, icb: ImageCodebook | None, manifests: dict[str, Path], units: Path) -> None:
    """Units of the unpaired audio and codes of the unpaired images (unpaired text needs no store)."""
    from dmlm.tokenizers.tokenize import tokenize_images, tokenize_manifest

    if "unpaired_speech" in manifests:
        tokenize_manifest(cb, manifests["unpaired_speech"], units)
    if "unpaired_images" in manifests and icb is not None:
        tokenize_images(icb, manifests["unpaired_images"], units)


# -- vocoder ---------------------------------------------------------------------------------------

def make_vocoder(target: Path, settings, minutes: float, manifests: Sequence[Path], stores: Sequence[Path],
                 codebook: Path) -> None:
    """The unit vocoder (a `VocoderConfig`) in `target`, trained for `minutes` on `manifests` and their unit
    `stores`; one already there takes new synthesis and matching settings without retraining (`reuse_vocoder`)."""
    from dmlm.vocoder import VocoderFiles, reuse_vocoder, train_vocoder

    VocoderFiles(target).finish_interrupted_save()  # a save killed mid-swap: reuse what it saved
    if VocoderFiles(target).exists:
        reuse_vocoder(target, settings, list(manifests), list(stores), codebook)
        return
    train_vocoder(list(manifests), list(stores), codebook, settings, target, max_minutes=minutes)


def install_vocoder(vocoder: Path, model: Path) -> None:
    """A copy of the vocoder folder `vocoder` as `model`'s own (`vocoder_dir`), where loading the model finds it."""
    import shutil

    from dmlm.util.io import atomic_dir

    with atomic_dir(vocoder_dir(model), what="vocoder") as tmp:
        shutil.copytree(vocoder, tmp, dirs_exist_ok=True)


# -- train -----------------------------------------------------------------------------------------

def point_run_at(run: RunConfig, manifests: dict[str, Path], units: Path, codebook: Path, image_codebook: Path | None,
                 model: Path) -> None:
    """`run.data` reads the prepared corpus, its token stores and codebooks; `run.train.out` is `model`."""
    run.data.train, run.data.dev = str(manifests["train"]), str(manifests["dev"])
    run.data.unpaired = unpaired_manifests(manifests)
    run.data.units, run.data.codebook = str(units), str(codebook)
    run.data.image_codebook = str(image_codebook) if image_codebook is not None else ""
    run.train.out = str(model)


def train_model(run: RunConfig, config_path: Path, processes: int, resume: bool) -> None:
    """Train `run` in this process (`processes` 1) or under torchrun with `processes` ranks (reading
    the run config written to `config_path`)."""
    from dmlm.training.launch import train_distributed
    from dmlm.training.train import train

    if processes > 1:
        train_distributed(run, config_path, processes, resume)
    else:
        train(run, resume=resume)


def train_summary(model_dir: Path) -> dict:
    """Steps, speed, dev loss and the mixture as trained: mean tokens per step by modality, examples by task.

    The log has every `log_every`-th step, so per-step means come from those rows; the total
    token count is the exact one of the training state.
    """
    from dmlm.modeling import CheckpointFiles

    rows = _log_rows(model_dir)
    steps_logged = [r for r in rows if "loss" in r]
    speed = [r for r in rows if "tokens_per_s" in r]
    files = CheckpointFiles(model_dir)
    meta, saved = files.meta, files.config  # saved: the run config the model was trained with
    n = max(1, len(steps_logged))
    per_step = {k.removeprefix("tokens_"): round(sum(r.get(k, 0) for r in steps_logged) / n)
                for k in ("tokens", "tokens_text", "tokens_speech", "tokens_image")}
    examples = {k.removeprefix("examples_"): sum(r[k] for r in steps_logged) for k in (steps_logged[0] if steps_logged else {})
                if k.startswith("examples_")}
    total_ex = sum(examples.values()) or 1
    summary = meta.get("model_summary", {})
    return {"steps": rows[-1]["step"] if rows else None, "tokens_per_s": speed[-1]["tokens_per_s"] if speed else None,
            "tokens": _trained_tokens(model_dir),
            "tokens_per_step": per_step, "example_share": {k: round(v / total_ex, 3) for k, v in examples.items()},
            "final_dev_loss": next((r["dev_loss"] for r in reversed(rows) if "dev_loss" in r), None),
            "final_dev_listening": next((r.get("dev_listening") for r in reversed(rows) if "dev_loss" in r), None),
            "padding_share": summary.get("padding_share"), "tasks": meta.get("tasks"),
            "weights": saved.get("data", {}).get("weights"),
            "batch_tokens": saved.get("train", {}).get("batch_tokens"), "loss": saved.get("train", {}).get("loss"),
            "params": summary.get("params")}


def dev_curve(model_dir: Path) -> list[dict]:
    """[{"step", "dev_loss"}] of a model's run log, with "dev_listening" where it has one (train.dev_mismatched)."""
    return [{"step": r["step"], "dev_loss": r["dev_loss"], **({"dev_listening": r["dev_listening"]}
                                                              if "dev_listening" in r else {})}
            for r in _log_rows(model_dir) if "dev_loss" in r]


def log_path(model_dir: Path) -> Path:
    """The run log (JSONL) of the checkpoint `model_dir`."""
    from dmlm.training.runlog import RunLog

    return RunLog.log_path(model_dir)


def _log_rows(model_dir: Path) -> list[dict]:
    from dmlm.training.runlog import RunLog

    return RunLog.rows(model_dir)


def _trained_tokens(model_dir: Path) -> int | None:
    """The exact count of tokens trained on, from the training state (None: no state)."""
    from dmlm.training.state import read_progress

    progress = read_progress(model_dir)
    return progress.tokens if progress is not None else None


# -- evaluate --------------------------------------------------------------------------------------

def stamp(model_dir: Path, vocoder: bool = False, judge: Path | None = None) -> str:
    """Identifies what an evaluation read, so that it can be reused: the checkpoint's weights;
    with `vocoder`, its vocoder too (weights, settings, matching set); with `judge`, that judge
    checkpoint's weights. A text task's report survives a new vocoder or matching set."""
    parts = [model_dir / "model.safetensors"]
    if vocoder:  # synthesis settings and the matching set can change without retraining
        parts += [vocoder_dir(model_dir) / f for f in ("model.safetensors", "config.json", "matching.safetensors")]
    if judge is not None:
        parts.append(judge / "model.safetensors")
    return ";".join(f"{p.stat().st_size}-{p.stat().st_mtime_ns}" for p in parts if p.is_file())


def cached(path: Path, model_dir: Path, evaluate: Callable[[], dict], settings: object = None, vocoder: bool = False,
           judge: Path | None = None) -> dict:
    """The report at `path` if it was made for these weights (`stamp`) and `settings` (a
    dataclass, e.g. decoding options, or a dict), else `evaluate()` (stamped)."""
    key = stamp(model_dir, vocoder, judge)
    if settings is not None:
        key += f";{json.dumps(settings if isinstance(settings, dict) else asdict(settings), sort_keys=True)}"
    if path.is_file():
        rep = json.loads(path.read_text())
        if rep.get("model_stamp") == key:
            return rep
    rep = evaluate()
    rep["model_stamp"] = key
    atomic_write_json(path, rep)
    return rep


class LazyModel:
    """`dmlm.load(folder)` on first use: a model whose evaluations are all reused is never loaded."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self._model = None

    def __call__(self):
        if self._model is None:
            import dmlm

            self._model = dmlm.load(self.folder)
        return self._model


def evaluate_model(model: LazyModel, specs: Sequence[str], manifest: Path, folder: RunFolder, units: Path,
                   limit: Callable[[str], int | None] = lambda spec: None, key: Callable[[str], str] = lambda spec: spec,
                   settings: Callable[[str], object] = lambda spec: None, progress: bool = True,
                   text_decoding: DecodingOptions | None = None) -> dict[str, dict]:
    """{key(spec): report} of the model on each task of `specs` over `manifest`, each reused while its
    weights are unchanged (`cached`); the model is loaded once, for those that must run.

    `limit(spec)`: the records per voice group scored (None: all); `settings(spec)`: what else the
    reuse depends on (e.g. the limit and manifest); `text_decoding`: how the tasks that write text decode
    (None: the defaults), a part of what the reuse depends on.
    """
    reports = {}
    for spec in specs:
        path = folder.eval_report(key(spec))
        opts = text_decoding if get_task(parse_spec(spec)[0]).target == "text" else None
        depends = settings(spec)
        if opts is not None and opts != DecodingOptions():  # a report decoded otherwise is not reused
            given = depends if isinstance(depends, dict) else asdict(depends) if depends is not None else {}
            depends = {**given, "text_decoding": asdict(opts)}
        reports[key(spec)] = cached(path, model.folder, lambda spec=spec, path=path, opts=opts: model().evaluate(
            spec, manifest, units=units, out=path, limit=limit(spec), progress=progress, options=opts), depends)
    return reports
