"""`dmlm demo`: the whole pipeline on the embedded mini-world corpus, offline, on a CPU.

prepare (espeak-ng speech + drawn scenes) -> speech codebook (Whisper-base k-means) and image
codebook (patch k-means) -> tokenize -> train one model on the task mixture (ASR, S2TT
en->es, T2S, I2T, unpaired text/speech/images) and, for comparison, an ASR-only model for the
same number of steps -> train the unit vocoder -> evaluate every task on held-out sentences
-> runs/demo/{report.md, report.json, loss.png, examples/}.

The stages are `dmlm.recipes.stages`; every file's name is `dmlm.recipes.run_folder.RunFolder`'s.

Design decisions:
- The ASR-only model takes the same steps and the same number of ASR examples per step as
  the mixture model (its batch is the mixture's ASR share of it, `asr_only_batch_tokens`);
  the mixture adds the other tasks on top. So the comparison asks "does adding tasks hurt
  ASR?", at the price of the mixture's larger steps, which the report states. Both models'
  ASR is scored on the whole test split (`eval_limit` spares the other tasks), so they compare.
- Each model trains with its own best loss (`asr_only_loss`): the mixture's per-modality means
  over target spans only (`target_length_normalized`), the ASR-only model's over every token
  (`length_normalized`), which lets it learn from the speech it reads.
- Every stage skips work already done, so an interrupted demo re-run continues where it
  stopped (training resumes from its last saved step; evaluations of unchanged weights are reused).
- Summary rows are keyed by task spec (`s2tt:es`), the ASR-only model's by its name (`asr_only`),
  so a run with `s2tt:de` reports it; no row is renamed.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from dmlm.data.manifest import read_manifest
from dmlm.data.prepare import PrepareConfig, check_settings
from dmlm.data.split import Split, store_prefix
from dmlm.decoding import DecodingOptions
from dmlm.evaluation.headline import SPEECH_OUT_KEYS, headline
from dmlm.modeling import CheckpointFiles, vocoder_dir
from dmlm.recipes.multilingual_report import asr_beside_whisper, check_whisper_baseline, s2st_ways
from dmlm.recipes.open_report import ScratchConfig, check_open, open_report, train_scratch
from dmlm.recipes.run_folder import RunFolder
from dmlm.recipes.stages import (EXTRA_AUDIO, LazyModel, Stages, cached, evaluate_model, fit_codebooks, fit_merges,
                                 machine, merged_codebook_path, merges_summary, point_run_at, prepare_data,
                                 speech_tokens_per_second, tokenize_splits, train_model, train_summary, uses_images,
                                 uses_speech_out)
from dmlm.tasks import check_scorable, parse_spec
from dmlm.tokenizers.image import ImageCodebookSettings
from dmlm.tokenizers.speech import CodebookSettings
from dmlm.training.config import RunConfig
from dmlm.util.config import ConfigError, dump_config, load_config
from dmlm.util.errors import UserError
from dmlm.util.io import atomic_write_json, atomic_write_text
from dmlm.vocoder import VocoderConfig

log = logging.getLogger(__name__)

ASR_ONLY = "asr_only"
"""The comparison model's name (its folder is `RunFolder.model(ASR_ONLY)`, its summary row this key)."""
ASR_ONLY_TASK = "asr"
"""The one task the comparison model trains: the demo asks whether adding tasks hurts ASR."""
MIXTURE = "mixture"


@dataclass
class DemoConfig:
    out: str = "runs/demo"
    """Output folder: data/, units/, codebooks, model/, model_asr/, report.*"""
    recipe: str = "configs/demo.yaml"
    """The config file the run was made from (`dmlm demo FILE` sets it; the results page names it)."""
    prepare: PrepareConfig = field(default_factory=PrepareConfig)
    codebook: CodebookSettings = field(default_factory=CodebookSettings)
    codebook_fit_utts: int = 1500
    """Training utterances whose frames the speech k-means is fitted on."""
    codebook_merges: int = 0
    """Byte-pair merges over the speech units (0: none), fitted on the training split's units after tokenizing and
    stored in a speech codebook file of their own beside the unit codebook, as `dmlm codebook bpe` writes it; the
    models read the merged pieces, the token stores and the vocoder keep units (docs/design/vocabulary.md)."""
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
    decoding: DecodingOptions = field(default_factory=DecodingOptions)
    """How the tasks that write text (ASR, S2TT, I2T) decode when scored; T2S's is `t2s_decoding`. E.g.
    `max_new_per_prompt: 0.5` stops a looping transcript near its input's length (an early checkpoint's)."""
    eval_tasks: list[str] = field(default_factory=list)
    """The task specs scored on the test split ([]: the mixture's, `run.data.tasks`). A multilingual run names
    each language (`asr:en`, `asr:es`) to report ASR per language where it trained one `asr` for all."""
    examples: int = 6
    """Examples per task shown in report.md."""
    processes: int = 2
    """Training processes (torchrun, gloo on CPU). On a 2-core CPU two single-thread ranks train
    ~30 % faster than one process with two threads; 1 trains in this process."""
    open_report: bool = False
    """The open-vocabulary report (`dmlm.recipes.open_report`, configs/open.yaml): after the evaluation, ASR on
    every test set (held-out chapters, the held-out domain of `prepare.n_test_domain`, the held-out and the neural
    voice) beside Whisper-base on the same clips and the `scratch` model, with 95 % intervals, S2TT and T2S, into
    report.json's test_sets/s2tt/t2s/train_minutes/targets and a section of report.md."""
    scratch: ScratchConfig = field(default_factory=ScratchConfig)
    """With `open_report`: a from-scratch reference model trained `scratch.minutes` on the same data (0: none)."""
    whisper_baseline: bool = False
    """Whisper-base beside each scored ASR (`asr:LANG`, `dmlm.recipes.multilingual_report`, configs/multilingual.yaml):
    greedy, no prompt, its language forced, on exactly the clips dmlm's evaluation scored, both by the ASR task's
    normalizer, WER and CER with 95 % intervals, per voice group: report.json's asr_languages and a section of
    report.md. Costs a Whisper-base transcription of every such clip (once: reused by a re-run)."""

    def validate(self) -> None:
        """Settings no single field's type can check (filled configs skip `__post_init__`)."""
        from dmlm.training.loss import LOSSES

        if self.codebook_merges < 0:
            raise ConfigError(f"codebook_merges: must be >= 0 (0: no unit merges), got {self.codebook_merges}")
        if self.asr_only_loss and self.asr_only_loss not in LOSSES:
            raise UserError(f"asr_only_loss must be one of {LOSSES} or empty (the mixture's), got {self.asr_only_loss!r}")
        self.codebook.check()  # before hours of corpus making, not at the codebook stage
        check_settings(self.prepare)  # likewise a corpus size or a training value that cannot work
        try:
            self.run.check_values()
        except ConfigError as e:  # its keys are under `run.` here
            raise ConfigError(f"run.{e}") from None
        check_scorable(self.scored_tasks)  # a task the evaluation cannot score fails now, not after training
        check_open(self)  # the open report's settings (configs/open.yaml)
        check_whisper_baseline(self)
        trained = {parse_spec(t)[0] for t in self.run.data.tasks}
        untrained = [t for t in self.eval_tasks if parse_spec(t)[0] not in trained]
        if untrained:
            raise ConfigError(f"eval_tasks: {untrained} name tasks the mixture does not train (run.data.tasks: "
                              f"{self.run.data.tasks})")

    @property
    def scored_tasks(self) -> list[str]:
        """The task specs the evaluation scores: `eval_tasks`, else the mixture's."""
        return list(self.eval_tasks or self.run.data.tasks)

    def limit_of(self, spec: str) -> int | None:
        """The records per voice group the mixture's evaluation of `spec` scores (None: all): `eval_limit`, but a bare
        ASR on the whole test split, where the ASR-only model is scored too, so the two compare."""
        return None if spec == ASR_ONLY_TASK or not self.eval_limit else self.eval_limit


def run_demo(cfg: DemoConfig, resume: bool = True) -> dict:
    """Every stage of the demo into `cfg.out` (see the module docstring); returns report.json's content."""
    cfg.validate()
    folder = RunFolder(cfg.out)
    folder.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder.config, dump_config(cfg))
    stage = Stages()
    t_all = time.time()
    manifests, cb, icb = make_inputs(cfg, folder, stage)
    models = train_models(cfg, folder, manifests, stage, resume)
    if cfg.vocoder_minutes > 0 and uses_speech_out(cfg.run.data.tasks):
        with stage("vocoder"):
            train_demo_vocoder(cfg, [manifests[m] for m in ("train", EXTRA_AUDIO) if m in manifests], folder.out)
    with stage("evaluate"):
        reports = evaluate_demo(cfg, folder, models, manifests["test"])
    sections = report_sections(cfg, folder, manifests, models, reports, stage)
    plot_losses(folder, models)
    report = {
        "tasks": summarize(reports),
        "comparison": {"key": ASR_ONLY, "task": ASR_ONLY_TASK},  # which row scores which model (report.md's labels)
        "machine": machine(),
        "minutes": round((time.time() - t_all) / 60, 2),
        "stages_seconds": stage.seconds,
        "stages_cpu_seconds": stage.cpu_seconds,
        **_accumulate_stages(folder.stages, stage.seconds, stage.cpu_seconds),
        "train": {name: train_summary(path) for name, path in models.items()},
        "codebook": {"fingerprint": cb.fingerprint, **cb.settings.reproducing(), **merges_summary(cb),
                     "speech_tokens_per_s": speech_tokens_per_second(manifests["train"], folder.units, cb)},
        "image_codebook": {"fingerprint": icb.fingerprint, **asdict(icb.settings)} if icb is not None else None,
        "data": {s: len(read_manifest(p)) for s, p in manifests.items()},
        "models": {k: str(v.resolve()) for k, v in models.items()},
        "config": asdict(cfg),
        **sections,
    }
    atomic_write_json(folder.report_json, report)
    write_pages(folder)
    return report


def report_sections(cfg: DemoConfig, folder: RunFolder, manifests: dict[str, Path], models: dict[str, Path],
                    reports: dict[str, dict], stage: Stages) -> dict:
    """report.json's sections beyond the demo's: every test set beside Whisper-base and the scratch model
    (`open_report`, configs/open.yaml), each language's ASR beside Whisper-base (`whisper_baseline`,
    configs/multilingual.yaml) and, when S2ST is scored, its three ways and the ceiling."""
    out = {}
    if cfg.open_report:
        with stage("open_report"):
            out = open_report(cfg, folder, manifests, models, summarize(reports))
    if cfg.whisper_baseline:
        with stage("whisper_baseline"):
            out["asr_languages"] = asr_beside_whisper(cfg, folder, manifests["test"])
    try:  # read from what the S2ST evaluation kept: seconds
        ways = s2st_ways(folder, cfg.scored_tasks)
    except UserError as e:  # the headline scores stand without it; say why it is missing rather than fail the run
        log.warning("no s2st_ways: %s", e)
        ways = {}
    return out | ({"s2st_ways": ways} if ways else {})


def make_inputs(cfg: DemoConfig, folder: RunFolder, stage: Stages):
    """Prepare, fit the codebooks, tokenize every split and fit the unit merges (`codebook_merges`): (manifests,
    speech codebook the models read, image codebook or None)."""
    with stage("prepare"):
        manifests = prepare_data(cfg.prepare, folder.data)
    with stage("codebooks"):
        images = uses_images(cfg.run.data.tasks)
        cb, icb = fit_codebooks(manifests["train"], cfg.codebook, cfg.codebook_fit_utts, folder.codebook,
                                cfg.image_codebook if images else None, cfg.image_codebook_fit_images,
                                folder.image_codebook)
    with stage("tokenize"):
        tokenize_splits(cb, icb, manifests, folder.units)
    if cfg.codebook_merges:
        with stage("unit_merges"):
            cb = fit_merges(cb, cfg.codebook_merges, manifests["train"], folder.units,
                            merged_codebook_path(folder.codebook, cfg.codebook_merges))
    return manifests, cb, icb


def asr_only_run(cfg: DemoConfig, run: RunConfig, out: Path) -> RunConfig:
    """The comparison model's run: the mixture's, on its one task, with its own batch and loss, into `out`."""
    return replace(run, data=replace(run.data, tasks=[ASR_ONLY_TASK], weights=[], image_codebook="", unpaired=[],
                                     speakers={k: v for k, v in run.data.speakers.items() if k == ASR_ONLY_TASK}),
                   train=replace(run.train, out=str(out), batch_tokens=cfg.asr_only_batch_tokens,
                                 loss=cfg.asr_only_loss or run.train.loss))


def train_models(cfg: DemoConfig, folder: RunFolder, manifests: dict[str, Path], stage: Stages,
                 resume: bool) -> dict[str, Path]:
    """The mixture model and (with `asr_only_batch_tokens`) the ASR-only model: {name: checkpoint folder}."""
    run = cfg.run
    point_run_at(run, manifests, folder.units, merged_codebook_path(folder.codebook, cfg.codebook_merges),
                 folder.image_codebook if uses_images(run.data.tasks) else None, folder.model(MIXTURE))
    with stage("train"):
        train_model(run, folder.run_config(MIXTURE), cfg.processes, resume)
    models = {MIXTURE: folder.model(MIXTURE)}
    if cfg.asr_only_batch_tokens and run.data.tasks != [ASR_ONLY_TASK]:
        with stage("train_asr_only"):
            train_model(asr_only_run(cfg, run, folder.model(ASR_ONLY)), folder.run_config(ASR_ONLY), cfg.processes, resume)
        models[ASR_ONLY] = folder.model(ASR_ONLY)
    return models | train_scratch(cfg, folder, run, stage, resume)  # the open report's reference model, if any


def evaluate_demo(cfg: DemoConfig, folder: RunFolder, models: dict[str, Path], test: Path) -> dict[str, dict]:
    """Every evaluation of the demo, keyed by task spec (the ASR-only model's by its name); each model loaded once."""
    loaded = {name: LazyModel(path) for name, path in models.items()}
    reports = evaluate_model(loaded[MIXTURE], cfg.scored_tasks, test, folder, folder.units, limit=cfg.limit_of,
                             text_decoding=cfg.decoding)
    if ASR_ONLY in loaded:
        reports |= evaluate_model(loaded[ASR_ONLY], [ASR_ONLY_TASK], test, folder, folder.units, key=lambda spec: ASR_ONLY,
                                   text_decoding=cfg.decoding)
    if vocoder_dir(models[MIXTURE]).is_dir():
        reports |= evaluate_speech_out(cfg, folder, loaded, test)
    return reports


def plot_losses(folder: RunFolder, models: dict[str, Path]) -> None:
    """loss.png (the mixture) and loss_NAME.png (other models) from their run logs."""
    from dmlm.recipes.stages import log_path
    from dmlm.training.runlog import plot_losses as plot

    for name, path in models.items():
        if log_path(path).is_file():
            plot(log_path(path), folder.loss_plot(name))


def write_pages(folder: RunFolder) -> None:
    """intervals.json (when the kept outputs allow), report.md, from report.json."""
    from dmlm.recipes.intervals import headline_intervals
    from dmlm.recipes.report import write_reports

    try:  # intervals.json: each headline score's 95 % interval over test utterances
        headline_intervals(folder.out)
    except UserError as e:  # the scores stand without it; say why it is missing rather than fail the run
        log.warning("no intervals.json: %s", e)
    write_reports(folder.out, results=None)


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


def train_demo_vocoder(cfg: DemoConfig, manifests: Sequence[Path], out: Path) -> None:
    """The unit vocoder, trained on `manifests` (the training split, and the neural voice's extra
    audio when prepared) and their units, stored in the model's `vocoder/`; a vocoder already there
    takes new synthesis and matching settings without retraining (`reuse_vocoder`)."""
    from dmlm.recipes.stages import make_vocoder

    folder = RunFolder(out)
    make_vocoder(vocoder_dir(folder.model(MIXTURE)), cfg.vocoder, cfg.vocoder_minutes, manifests,
                 [store_prefix(folder.units, m) for m in manifests], folder.codebook)


class _SpeechOut:
    """What the by-ear evaluations share: the mixture's checkpoint and vocoder, each judge (built once,
    hearing each clip once) and the T2S units (generated once for every judge)."""

    def __init__(self, cfg: DemoConfig, folder: RunFolder, loaded: dict[str, LazyModel], test: Path):
        self.cfg, self.folder, self.loaded = cfg, folder, loaded
        self.split = Split(test, folder.units)
        self._judges: dict = {}
        self._units = None

    @property
    def ck(self):
        return self.loaded[MIXTURE]().checkpoint

    def judge_names(self) -> list[str]:
        """Whisper (independent, but weak on espeak-ng voices) and the ASR-only model (in-domain, strong,
        but it hears through the same codebook, so it rewards audio that maps back to the right units)."""
        return ["whisper"] + ([ASR_ONLY] if CheckpointFiles.is_checkpoint(self.folder.model(ASR_ONLY)) else [])

    def judge(self, name: str):
        from dmlm.evaluation.judge import CheckpointJudge, OnceJudge, WhisperJudge

        if name not in self._judges:  # each judge hears a clip once: T2S's recordings are those resynthesis judged
            inner = WhisperJudge(self.cfg.judge) if name == "whisper" else CheckpointJudge(self.loaded[name]().checkpoint)
            self._judges[name] = OnceJudge(inner)
        return self._judges[name]

    def t2s_units(self, options):
        from dmlm.evaluation.speech import t2s_units

        if self._units is None:
            self._units = t2s_units(self.ck, self.split, self.cfg.t2s_decoding, options)
        return self._units


def evaluate_speech_out(cfg: DemoConfig, folder: RunFolder, loaded: dict[str, LazyModel], test: Path) -> dict[str, dict]:
    """T2S and resynthesis judged by ear: units -> vocoder -> an ASR -> WER against the text, by each judge.

    Whisper's WER on the original recordings is reported beside its WER on synthesized speech.
    """
    from dmlm.evaluation.options import EvalOptions
    from dmlm.evaluation.speech import evaluate_resynthesis, evaluate_t2s_audio

    out = _SpeechOut(cfg, folder, loaded, test)
    model = folder.model(MIXTURE)
    t2s_key = next(s for s in cfg.run.data.tasks if uses_speech_out([s]))
    clips = None if cfg.resynthesis_voice_clips < 0 else cfg.resynthesis_voice_clips
    resyn = EvalOptions(limit=cfg.resynthesis_eval, voice_clips=clips)
    t2s = EvalOptions(limit=cfg.t2s_eval)
    reports: dict[str, dict] = {}
    for jname in out.judge_names():
        sfx = "" if jname == "whisper" else f"_{jname}"
        read = {"vocoder": True, "judge": folder.model(jname) if jname != "whisper" else None}
        reports[f"resynthesis{sfx}"] = cached(folder.eval_report(f"resynthesis{sfx}"), model, lambda: evaluate_resynthesis(
            out.ck.codebook("speech"), out.ck.vocoder(), out.split, out.judge(jname), resyn,
            out_dir=folder.example_dir(f"resynthesis{sfx}")), {"voice_clips": clips, "per_group": cfg.resynthesis_eval}, **read)
        reports[f"t2s_audio{sfx}"] = cached(folder.eval_report(f"t2s_audio{sfx}"), model, lambda: evaluate_t2s_audio(
            out.ck, out.split, out.judge(jname), cfg.t2s_decoding, t2s, out_dir=folder.example_dir(f"{t2s_key}{sfx}"),
            units=out.t2s_units(t2s)), cfg.t2s_decoding, **read)
        if jname == "whisper" and cfg.t2s_greedy and cfg.t2s_decoding.rerank > 1:  # what reranking buys, beside it
            greedy = DecodingOptions()
            reports["t2s_audio_greedy"] = cached(folder.eval_report("t2s_audio_greedy"), model, lambda: evaluate_t2s_audio(
                out.ck, out.split, out.judge(jname), greedy, t2s, out_dir=folder.example_dir(f"{t2s_key}_greedy")),
                greedy, **read)
    return reports


def summarize(reports: dict[str, dict]) -> dict:
    """report.json's `tasks`: the headline numbers of every evaluation (full reports are in eval/), keyed
    as the evaluations are: task spec, `asr_only`, `resynthesis`."""
    tasks: dict[str, dict] = {}
    for key, rep in reports.items():
        row = headline(rep)
        if "heldout_combo" in rep:
            row["heldout_combo"] = {k: v for k, v in rep["heldout_combo"].items() if isinstance(v, (int, float))}
        tasks[key] = row
    # T2S is one task scored on units (its spec) and by ear (t2s_audio*); resynthesis by two judges
    t2s = next((k for k in tasks if _is_speech_out_task(k)), None)
    for src, dst, prefix in (("t2s_audio", t2s, ""), (f"t2s_audio_{ASR_ONLY}", t2s, "asr_only_judge_"),
                             ("t2s_audio_greedy", t2s, "greedy_"),
                             (f"resynthesis_{ASR_ONLY}", "resynthesis", "asr_only_judge_")):
        if src in tasks and dst is not None:
            audio = tasks.pop(src)
            tasks.setdefault(dst, {}).update({f"{prefix}{k}": audio.get(k) for k in SPEECH_OUT_KEYS if k in audio})
    return tasks


def _is_speech_out_task(key: str) -> bool:
    """A summary key that is a task spec writing speech from a source (T2S)."""
    try:
        return uses_speech_out([key])
    except UserError:  # asr_only, resynthesis, t2s_audio…: names of evaluations, not task specs
        return False


def load_demo_config(path: str | None, overrides: list[str]) -> DemoConfig:
    cfg = load_config(path, overrides, cls=DemoConfig)
    if path:
        cfg.recipe = str(path)
    try:
        cfg.validate()
    except ValueError as e:
        raise ConfigError(str(e)) from None
    return cfg
