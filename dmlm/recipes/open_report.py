"""The open-vocabulary model's report (issue 30): every ASR test set beside Whisper-base on the same clips.

`dmlm demo configs/open.yaml` (`make demo OPEN=1`) sets `open_report: true`. After the demo's own
evaluation this module
- scores the mixture's ASR on every test set: the held-out chapters (the test split) and the held-out text
  domain (`test_domain.jsonl`, `PrepareConfig.n_test_domain`, tokenized like test by `stages.tokenize_splits`);
- runs Whisper-base (`dmlm.evaluation.whisper_baseline`: greedy, English, no prompt) on exactly those clips;
- with `scratch.minutes`, scores the from-scratch reference model (trained by `train_scratch` beside the
  mixture, in `model_scratch/`, as the demo's ASR-only model is) the same way, and on S2TT;
- returns report.json's `test_sets`, `s2tt`, `t2s`, `train_minutes` and `targets` (`open_report`), which
  report.md shows (`render_section`) and `dmlm report RUN --open` publishes as docs/open/report.{md,json}
  (`publish`).

Design decisions:
- A test set is a manifest and a voice group (`TEST_SETS`): `chapters` (held-out chapters, training voices),
  `heldout_voice` (the same sentences in the held-out voice), `neural_voice` (the training-voice clips in the
  neural voice, a part of `chapters`: the voice Whisper hears best and T2S speaks), `domain` and
  `domain_heldout_voice` (the held-out domain in the training voices and in the held-out voice).
- Every column of a test set is computed here, by one function, from the per-utterance rows the evaluations
  kept (eval/*.hyps.jsonl), over the same utterance ids: a system that heard other clips is an error, not a
  silent mismatch. WER/CER are the ASR task's scoring (dmlm's normalizer) with a 95 % bootstrap interval over
  utterances; each system also carries them after Whisper's English normalizer on both sides
  (`whisper_english`), since Whisper writes digits and spellings ("300", "gray") that dmlm's normalizer counts
  as errors. `dmlm_vs_whisper_base`: dmlm's WER minus Whisper's, its paired interval (the same resamples of
  the same utterances) and verdict.
- Whisper translates into English only, so S2TT (en→es) has no Whisper column; T2S is the demo's by-ear
  evaluation (units -> vocoder -> Whisper-base), with Whisper's WER on the original recordings beside it.
- Evaluations are reused while what they read is unchanged (`stages.cached`): the mixture's ASR on the test
  split is the demo's own report; Whisper's is keyed by the manifest it heard.
- `train_minutes` is the training state's own clock (`Progress.elapsed`): the minutes the time budget
  counts, summed over resumed invocations, start-up and evaluation excluded.
- The issue's targets are checked, not assumed: `targets` states each rule, its numbers and whether it holds.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from dmlm.data.manifest import HELDOUT_VOICE, is_heldout_voice, read_manifest
from dmlm.data.synth import NEURAL_VOICE
from dmlm.evaluation.whisper_baseline import LANG, NEURAL_GROUP
from dmlm.metrics import error_rates
from dmlm.metrics.bootstrap import interval, paired_difference, resample_counts, utterance_stats
from dmlm.modeling import ModelConfig
from dmlm.recipes.run_folder import RunFolder
from dmlm.recipes.stages import TEST_SETS as PREPARED_TEST_SETS
from dmlm.recipes.stages import LazyModel, Stages, cached, evaluate_model, train_model, uses_speech_out
from dmlm.tasks import get_task, parse_spec
from dmlm.training.config import RunConfig
from dmlm.util.config import ConfigError
from dmlm.util.errors import UserError
from dmlm.util.io import atomic_write_json, atomic_write_text, read_jsonl

if TYPE_CHECKING:
    from dmlm.recipes.demo import DemoConfig

log = logging.getLogger(__name__)

SCRATCH = "scratch"
"""The from-scratch reference model's name (its folder is `RunFolder.model(SCRATCH)`, its columns this key)."""
DMLM, WHISPER = "dmlm", "whisper_base"
BASELINE = "whisper-base"
"""The Whisper run side by side: the one whose encoder makes the speech units (issue 30)."""
TEST_SPLIT, DOMAIN = "test", PREPARED_TEST_SETS[0]
TEST_SETS: dict[str, tuple[str, bool, str | None]] = {
    "chapters": (TEST_SPLIT, False, None),
    HELDOUT_VOICE: (TEST_SPLIT, True, None),
    NEURAL_GROUP: (TEST_SPLIT, False, NEURAL_VOICE),
    "domain": (DOMAIN, False, None),
    f"domain_{HELDOUT_VOICE}": (DOMAIN, True, None),
}
"""Test set -> (prepared manifest, its voice group: the held-out voice (True) or the training voices (False),
the one speaker it keeps or None)."""
OPEN_KEYS = ("test_sets", "s2tt", "t2s", "train_minutes", "scratch_train_minutes", "targets")
"""What `open_report` adds to report.json (and docs/open/report.json keeps)."""
DRAWS = 2000  # bootstrap resamples, as `dmlm.recipes.intervals`
TARGET_WER = 25.0  # issue 30: held-out chapters below 25 % WER ...
DOMAIN_FACTOR = 2.0  # ... and the held-out domain within 2x Whisper-base's WER


@dataclass
class ScratchConfig:
    """The from-scratch reference: what a CPU user gets without an LLM, trained the same minutes on the same data
    (the mixture's tasks, weights, corpus and loss), scored on the same test sets."""

    minutes: float = 0.0
    """Training budget in minutes (0: no reference model). configs/open.yaml sets the mixture's max_minutes."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """Its architecture; the default is the demo's (configs/demo.yaml: 4 Llama layers of 256, from scratch)."""
    lr: float = 0.002
    """Peak learning rate: the demo's (configs/demo.yaml)."""
    batch_tokens: int = 2000
    """Per-rank batch in tokens: the demo's."""
    steps: int = 100_000
    """The LR schedule's length in steps: more than the minutes allow, so the minutes end it (the schedule follows
    whichever of steps and minutes ends first)."""


def check_open(cfg: DemoConfig) -> None:
    """The open report's settings no single field's type can check (`DemoConfig.validate`)."""
    s = cfg.scratch
    if s.minutes < 0:
        raise ConfigError(f"scratch.minutes: a training budget >= 0 (0: no reference model), got {s.minutes}")
    if s.minutes > 0 and not cfg.open_report:
        raise ConfigError("scratch.minutes: the from-scratch reference is scored by the open report only; set "
                          "open_report: true, or scratch.minutes: 0")
    if s.model.init != "scratch":
        raise ConfigError(f"scratch.model.init: the reference model starts from scratch, got {s.model.init!r}")
    if cfg.open_report:
        recognition_spec(cfg.run.data.tasks)  # an error now, not after hours of training
        if not cfg.prepare.n_test_domain:
            log.warning("open_report without prepare.n_test_domain: no held-out-domain test set")


def is_recognition(spec: str) -> bool:
    """Whether `spec` transcribes speech (ASR, in any language): what Whisper-base is set beside."""
    task = get_task(parse_spec(spec)[0])
    return task.source == "speech" and getattr(task, "target_text", None) == "text"


def _is_translation(spec: str) -> bool:
    task = get_task(parse_spec(spec)[0])
    return task.source == "speech" and task.target == "text" and getattr(task, "target_text", None) == "translation"


def recognition_spec(specs: list[str]) -> str:
    """The speech recognition spec among the mixture's (the one every test set scores); an error if none."""
    found = [s for s in specs if is_recognition(s)]
    if not found:
        raise ConfigError(f"open_report: the mixture trains no speech recognition task (run.data.tasks: {specs})")
    return found[0]


# -- the reference model -----------------------------------------------------------------------------

def scratch_run(cfg: DemoConfig, run: RunConfig, out: Path) -> RunConfig:
    """The reference model's run: the mixture's data, loss and schedule shape, on `cfg.scratch`'s model, rate,
    batch and minutes, with its own BPE; none of the pretrained start's options (stages, row rates, start check)."""
    s = cfg.scratch
    return replace(run, model=replace(s.model), data=replace(run.data, text_tokenizer=""),
                   train=replace(run.train, out=str(out), steps=s.steps, max_minutes=s.minutes, lr=s.lr,
                                 batch_tokens=s.batch_tokens, stages=[], lr_new_rows=1.0, lr_text_rows=1.0,
                                 allow_lossy_start=False, compile=False, snapshots=[]))


def train_scratch(cfg: DemoConfig, folder: RunFolder, run: RunConfig, stage: Stages, resume: bool) -> dict[str, Path]:
    """With `open_report` and `scratch.minutes`, the reference model trained (resumable): {SCRATCH: its folder}."""
    if not (cfg.open_report and cfg.scratch.minutes > 0):
        return {}
    out = folder.model(SCRATCH)
    with stage("train_scratch"):
        train_model(scratch_run(cfg, run, out), folder.run_config(SCRATCH), cfg.processes, resume)
    return {SCRATCH: out}


# -- evaluations -------------------------------------------------------------------------------------

def _stamp(manifest: Path) -> str:
    st = manifest.stat()
    return f"{st.st_size}-{st.st_mtime_ns}"


def _asr_rows(folder: RunFolder, model: LazyModel, spec: str, name: str, manifest: Path, prefix: str = "") -> list[dict]:
    """A model's ASR hypotheses on every clip of `manifest` (`prefix`: the model's name in the report key). The
    mixture's on the test split is the demo's own evaluation (same key, reused)."""
    key = "_".join(p for p in (prefix, spec, "" if name == TEST_SPLIT else name) if p)
    settings = None if name == TEST_SPLIT else {"manifest": _stamp(manifest)}  # a regrown test set is scored again
    evaluate_model(model, [spec], manifest, folder, folder.units, key=lambda s: key, settings=lambda s: settings)
    return read_jsonl(folder.eval_hyps(key))


def whisper_rows(folder: RunFolder, name: str, manifest: Path, progress: bool, language: str = LANG,
                 limit: int | None = None) -> list[dict]:
    """Whisper-base's transcripts of the clips of `manifest` in `language` (its first `limit` per voice group; None:
    every one), in report eval/whisper_base_NAME.json; reused while the manifest is unchanged (Whisper reads no
    checkpoint of the run: the report is keyed by the manifest, the language and the limit alone)."""
    from dmlm.evaluation.whisper_baseline import evaluate_whisper

    path = folder.eval_report(f"{WHISPER}_{name}")
    settings = {"manifest": _stamp(manifest), "model": BASELINE}
    if language != LANG or limit is not None:  # English, every clip: the key of reports made before languages
        settings |= {"language": language, "limit": limit}
    cached(path, manifest.parent, lambda: evaluate_whisper(manifest, model=BASELINE, limit=limit, out=path,
                                                           progress=progress, language=language), settings)
    return read_jsonl(folder.eval_hyps(f"{WHISPER}_{name}"))


def _system_rows(cfg: DemoConfig, folder: RunFolder, manifests: dict[str, Path], models: dict[str, Path],
                 progress: bool) -> dict[str, dict[str, list[dict]]]:
    """{system: {manifest name: hypothesis rows}} of dmlm, Whisper-base and (when trained) the scratch model."""
    spec = recognition_spec(cfg.run.data.tasks)
    loaded = {DMLM: LazyModel(folder.model())} | ({SCRATCH: LazyModel(models[SCRATCH])} if SCRATCH in models else {})
    out: dict[str, dict[str, list[dict]]] = {name: {} for name in (DMLM, WHISPER, *loaded)}
    for name in (n for n in (TEST_SPLIT, DOMAIN) if n in manifests):
        speakers = {r.id: r.speaker for r in read_manifest(manifests[name])}
        for system, model in loaded.items():
            rows = _asr_rows(folder, model, spec, name, manifests[name], "" if system == DMLM else system)
            out[system][name] = [{**r, "speaker": speakers.get(r["id"])} for r in rows]
        out[WHISPER][name] = whisper_rows(folder, name, manifests[name], progress)
    return out


# -- scores ------------------------------------------------------------------------------------------

def _pick(rows: list[dict], held: bool, speaker: str | None) -> list[dict]:
    return [r for r in rows if is_heldout_voice(r) == held and (speaker is None or r.get("speaker") == speaker)]


def _error_rates(rows: list[dict], counts: np.ndarray, language: str = LANG) -> dict:
    """WER/CER (dmlm's normalizer, the ASR task's scoring), their 95 % intervals (`ci95`: the WER's, `cer_ci95`) and,
    in English, both after Whisper's English normalizer."""
    refs, hyps = [r["ref"] for r in rows], [r["hyp"] for r in rows]
    ours = error_rates(refs, hyps)
    ci = {m: list(interval(m, utterance_stats(m, refs, hyps), counts)) for m in ("wer", "cer")}
    out = {"wer": ours["wer"], "cer": ours["cer"], "ci95": ci["wer"], "cer_ci95": ci["cer"]}
    if language == LANG:  # Whisper's normalizer knows English spellings and numbers only
        theirs = error_rates(refs, hyps, normalizer="whisper_english")
        out["whisper_english"] = {"wer": theirs["wer"], "cer": theirs["cer"]}
    return out


def score_test_set(systems: dict[str, list[dict]], draws: int = DRAWS, language: str = LANG) -> dict:
    """One test set's row: {"utterances", SYSTEM: {"wer", "cer", "ci95", "cer_ci95", "whisper_english" (English
    only)}, "dmlm_vs_whisper_base"} from each system's hypothesis rows, which must be of the same utterances (paired
    by id)."""
    ids = [r["id"] for r in systems[DMLM]]
    by_system = {}
    for name, rows in systems.items():
        by_id = {r["id"]: r for r in rows}
        if set(by_id) != set(ids):
            diff = sorted(set(by_id) ^ set(ids))
            raise UserError(f"{name} was scored on other clips than dmlm ({len(by_id)} against {len(ids)}; e.g. "
                            f"{diff[:3]}): the columns of a test set must hear the same clips")
        by_system[name] = [by_id[i] for i in ids]
    counts = resample_counts(len(ids), draws)
    out: dict = {"utterances": len(ids),
                 **{name: _error_rates(rows, counts, language) for name, rows in by_system.items()}}
    if WHISPER in by_system:
        stats = {n: utterance_stats("wer", [r["ref"] for r in by_system[n]], [r["hyp"] for r in by_system[n]])
                 for n in (DMLM, WHISPER)}
        out[f"{DMLM}_vs_{WHISPER}"] = paired_difference("wer", stats[DMLM], stats[WHISPER], counts)
    return out


def test_set_scores(rows: dict[str, dict[str, list[dict]]]) -> dict[str, dict]:
    """Every test set (`TEST_SETS`) the prepared corpus has clips for, scored for every system."""
    out = {}
    for name, (manifest, held, speaker) in TEST_SETS.items():
        picked = {system: _pick(by_manifest[manifest], held, speaker) for system, by_manifest in rows.items()
                  if manifest in by_manifest}
        if picked.get(DMLM):
            out[name] = {"manifest": manifest, **score_test_set(picked)}
    return out


def _bleu(rows: list[dict], spec: str, counts: np.ndarray | None = None) -> dict:
    task = get_task(parse_spec(spec)[0])
    scores = task.evaluate(rows)
    out = {"bleu": scores["bleu"], "chrf": scores["chrf"], "utterances": len(rows)}
    if counts is not None:
        stats = utterance_stats("bleu", [r["ref"] for r in rows], [r["hyp"] for r in rows])
        out["ci95"] = list(interval("bleu", stats, counts))
    return out


def s2tt_scores(cfg: DemoConfig, folder: RunFolder, test: Path, models: dict[str, Path]) -> dict:
    """S2TT on the held-out chapters (training voices; the held-out voice beside it): BLEU/chrF with the BLEU's
    95 % interval, the scratch model's on the same clips. {} when the mixture trains no translation."""
    specs = [s for s in cfg.run.data.tasks if _is_translation(s)]
    if not specs:
        return {}
    spec, limit = specs[0], cfg.eval_limit or None
    rows = read_jsonl(folder.eval_hyps(spec), missing_ok=True)
    seen = [r for r in rows if not is_heldout_voice(r)]
    if not seen:
        return {}
    out = {"spec": spec, "utterances": len(seen), DMLM: _bleu(seen, spec, resample_counts(len(seen), DRAWS)),
           WHISPER: None, "note": "Whisper translates into English only: no en→es column"}
    held = [r for r in rows if is_heldout_voice(r)]
    if held:
        out[DMLM][HELDOUT_VOICE] = _bleu(held, spec)
    if SCRATCH in models:
        key = f"{SCRATCH}_{spec}"
        evaluate_model(LazyModel(models[SCRATCH]), [spec], test, folder, folder.units, limit=lambda s: limit,
                       key=lambda s: key)
        theirs = {r["id"]: r for r in read_jsonl(folder.eval_hyps(key)) if not is_heldout_voice(r)}
        out[SCRATCH] = _bleu([theirs[r["id"]] for r in seen if r["id"] in theirs], spec)
    return out


def t2s_scores(cfg: DemoConfig, folder: RunFolder, tasks: dict) -> dict:
    """T2S judged by ear (units -> vocoder -> Whisper-base) on test sentences: WER/CER with the WER's interval
    (Whisper's normalizer, as the demo's T2S row), unit accuracy, and Whisper on the original recordings."""
    spec = next((s for s in cfg.run.data.tasks if uses_speech_out([s])), None)
    if spec is None:
        return {}
    row = tasks.get(spec, {})
    out = {"spec": spec, "judge": cfg.judge, "unit_accuracy": row.get("unit_accuracy"), "wer": row.get("wer"),
           "cer": row.get("cer"), "original_wer": row.get("original_wer")}
    rows = read_jsonl(folder.example_hyps(spec), missing_ok=True)
    if rows and row.get("wer") is not None:
        refs, hyps = [r["ref"] for r in rows], [r["hyp"] for r in rows]
        stats = utterance_stats("wer", refs, hyps, normalizer="whisper_english")
        out |= {"utterances": len(rows), "ci95": list(interval("wer", stats, resample_counts(len(rows), DRAWS)))}
    else:
        out["note"] = "not judged by ear (no vocoder)"
    return out


def check_targets(test_sets: dict[str, dict]) -> list[dict]:
    """Issue 30's targets on the sets there are: held-out chapters (each test voice group) at or below Whisper-base's
    WER and below 25 %; the held-out domain within 2x Whisper-base's WER."""
    rules: list[tuple[str, str, Callable[[float, float], bool]]] = [
        *[(n, f"WER <= Whisper-base's and < {TARGET_WER:g} %", lambda d, w: d <= w and d < TARGET_WER)
          for n in ("chapters", HELDOUT_VOICE, NEURAL_GROUP)],
        *[(n, f"WER <= {DOMAIN_FACTOR:g} x Whisper-base's", lambda d, w: d <= DOMAIN_FACTOR * w)
          for n in ("domain", f"domain_{HELDOUT_VOICE}")]]
    out = []
    for name, rule, holds in rules:
        row = test_sets.get(name)
        if row and WHISPER in row:
            d, w = row[DMLM]["wer"], row[WHISPER]["wer"]
            out.append({"test_set": name, "rule": rule, "dmlm_wer": d, "whisper_base_wer": w, "met": bool(holds(d, w))})
    return out


def _minutes(model: Path) -> float | None:
    from dmlm.training.state import read_progress

    progress = read_progress(model)
    return round(progress.elapsed / 60, 2) if progress is not None else None


def open_report(cfg: DemoConfig, folder: RunFolder, manifests: dict[str, Path], models: dict[str, Path],
                tasks: dict, progress: bool = True) -> dict:
    """report.json's open-vocabulary keys (`OPEN_KEYS`): every test set beside Whisper-base (and the scratch
    model), S2TT, T2S, the training minutes and the targets. `tasks`: the demo's summary rows."""
    test_sets = test_set_scores(_system_rows(cfg, folder, manifests, models, progress))
    out = {"test_sets": test_sets, "s2tt": s2tt_scores(cfg, folder, manifests[TEST_SPLIT], models),
           "t2s": t2s_scores(cfg, folder, tasks), "train_minutes": _minutes(folder.model()),
           "targets": check_targets(test_sets)}
    if SCRATCH in models:
        out["scratch_train_minutes"] = _minutes(models[SCRATCH])
    return out


# -- pages -------------------------------------------------------------------------------------------

def _f(x, nd: int = 1) -> str:
    return "–" if x is None else f"{x:.{nd}f}"


def _ci(row: dict | None) -> str:
    if not row:
        return "–"
    ci = row.get("ci95")
    return f"{_f(row['wer'])}" + (f" [{_f(ci[0])}, {_f(ci[1])}]" if ci else "")


def _test_set_table(test_sets: dict[str, dict]) -> list[str]:
    scratch = any(SCRATCH in r for r in test_sets.values())
    head = "| test set | utterances | dmlm WER [95 % CI] | dmlm CER | Whisper-base WER [95 % CI] | Whisper-base CER |"
    lines = [head + (" scratch WER | scratch CER |" if scratch else "") + " dmlm − Whisper WER [paired 95 % CI] |",
             "|---" * (6 + 2 * scratch + 1) + "|"]
    for name, r in test_sets.items():
        w, s, d = r.get(WHISPER), r.get(SCRATCH), r.get(f"{DMLM}_vs_{WHISPER}")
        cells = [name, str(r["utterances"]), _ci(r[DMLM]), _f(r[DMLM]["cer"]), _ci(w), _f(w and w["cer"])]
        cells += [_ci(s), _f(s and s["cer"])] if scratch else []
        cells.append(f"{d['delta']:+.1f} [{d['ci95'][0]:+.1f}, {d['ci95'][1]:+.1f}], {d['verdict']}" if d else "–")
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "After Whisper's English normalizer on both sides (digits, spellings):", "",
              "| test set | dmlm WER | Whisper-base WER |" + (" scratch WER |" if scratch else ""),
              "|---|---|---|" + ("---|" if scratch else "")]
    for name, r in test_sets.items():
        cols = [r.get(k) for k in (DMLM, WHISPER, *((SCRATCH,) if scratch else ()))]
        lines.append(f"| {name} | " + " | ".join(_f(c and c["whisper_english"]["wer"]) for c in cols) + " |")
    return lines


def _other_tasks(report: dict) -> list[str]:
    lines = []
    s2tt = report.get("s2tt") or {}
    if s2tt:
        d = s2tt[DMLM]
        held = d.get(HELDOUT_VOICE)
        lines += [f"- **{s2tt['spec']}** (held-out chapters, training voices, {s2tt['utterances']} clips): BLEU "
                  f"{_f(d['bleu'])} [{_f(d['ci95'][0])}, {_f(d['ci95'][1])}], chrF {_f(d['chrf'])}"
                  + (f"; held-out voice BLEU {_f(held['bleu'])}" if held else "")
                  + (f"; scratch BLEU {_f(s2tt[SCRATCH]['bleu'])}, chrF {_f(s2tt[SCRATCH]['chrf'])}"
                     if SCRATCH in s2tt else "")
                  + f". {s2tt['note']}."]
    t2s = report.get("t2s") or {}
    if t2s:
        ci = t2s.get("ci95")
        lines.append(f"- **T2S** ({t2s['spec']}, judged by {t2s['judge']}): WER {_f(t2s['wer'])}"
                     + (f" [{_f(ci[0])}, {_f(ci[1])}] over {t2s['utterances']} sentences" if ci else "")
                     + f", CER {_f(t2s['cer'])}; Whisper on the original recordings {_f(t2s['original_wer'])}; unit "
                     f"accuracy {_f(t2s['unit_accuracy'])} %" + (f" ({t2s['note']})" if t2s.get("note") else "") + ".")
    return lines


def _stage_minutes(report: dict) -> list[str]:
    a = report.get("all_invocations") or {}
    stages = a.get("stages_seconds") or report.get("stages_seconds") or {}
    total = sum(stages.values())
    return ["", f"Minutes per stage (wall, summed over {a.get('invocations', 1)} invocation(s)): "
            + ", ".join(f"{k} {v / 60:.1f}" for k, v in stages.items()) + f"; {total / 60:.1f} in all."]


def render_section(report: dict) -> list[str]:
    """report.md's open-vocabulary section (and docs/open/report.md's body), from report.json."""
    lines = ["", "## Open vocabulary: every test set beside Whisper-base", "",
             "WER and CER in % after dmlm's normalizer; 95 % bootstrap intervals over the test set's utterances. "
             "Whisper-base: greedy, English forced, no prompt, on exactly the same clips. `chapters`: held-out "
             "chapters in the training voices; `neural_voice`: those in the neural voice; `domain`: the held-out "
             "text domain (not scripture).", "", *_test_set_table(report["test_sets"]), "", *_other_tasks(report)]
    minutes = [f"the model {_f(report.get('train_minutes'))} min of training"]
    if report.get("scratch_train_minutes") is not None:
        minutes.append(f"the scratch model {_f(report['scratch_train_minutes'])}")
    lines += ["", "Training (the budget's clock, start-up excluded): " + ", ".join(minutes) + "."]
    lines += _stage_minutes(report)
    if report.get("targets"):
        lines += ["", "Targets (issue 30):", ""]
        lines += [f"- {t['test_set']}: {t['rule']}: dmlm {_f(t['dmlm_wer'])}, Whisper-base {_f(t['whisper_base_wer'])} "
                  f"— {'met' if t['met'] else 'missed'}" for t in report["targets"]]
    return lines


def render_page(report: dict, run: Path) -> str:
    """docs/open/report.md: the open-vocabulary model's report, from a finished run's report.json."""
    m = report["machine"]
    lines = ["# The open-vocabulary model: report", "",
             f"Generated by `dmlm report {run} --open` from `{run}/report.json` (a `make demo OPEN=1` run: "
             "`dmlm demo configs/open.yaml`); the numbers are also in `report.json` beside this page. Do not edit by "
             "hand.", "",
             f"- Machine: {m['cores']} cores, {m['cpu']}, GPU: {m['gpu']}; Python {m['python']}, torch {m['torch']}.",
             "- Records: " + ", ".join(f"{k} {v:,}" for k, v in (report.get("data") or {}).items()) + ".",
             *_models(report), *render_section(report)]
    return "\n".join(lines) + "\n"


def _models(report: dict) -> list[str]:
    """One line per trained model: what it is and how far it trained."""
    cfg = report.get("config") or {}

    def what(m: dict) -> str:
        if m.get("init") == "scratch":
            return f"from scratch, {m.get('layers')} layers of {m.get('hidden_size')}"
        return f"{m.get('llm')} ({m.get('init')}, adapter {m.get('adapter')}, keep_layers {m.get('keep_layers')})"

    models = {"mixture": cfg.get("run", {}).get("model", {}), SCRATCH: cfg.get(SCRATCH, {}).get("model", {})}
    lines = []
    for name, t in (report.get("train") or {}).items():
        lines.append(f"- {name} model: {what(models.get(name, {}))}; {t.get('steps')} steps, "
                     f"{_f(t.get('tokens_per_s'), 0)} tokens/s, "
                     f"loss {t.get('loss')}, tasks {t.get('tasks')}, final dev loss {_f(t.get('final_dev_loss'), 4)}.")
    return lines


def publish(run: str | Path, docs: str | Path = "docs/open") -> list[Path]:
    """DOCS/report.md and DOCS/report.json from a finished open run's report.json."""
    run, docs = Path(run), Path(docs)
    path = RunFolder(run).report_json
    if not path.is_file():
        raise UserError(f"{path}: no report.json in {run} (a finished `dmlm demo configs/open.yaml` run writes it)")
    report = json.loads(path.read_text())
    if "test_sets" not in report:
        raise UserError(f"{path}: not an open-vocabulary run (its config has open_report: false); see configs/open.yaml")
    keep = (*OPEN_KEYS, "machine", "minutes", "stages_seconds", "all_invocations", "train", "codebook", "data", "config")
    atomic_write_json(docs / "report.json", {k: report[k] for k in keep if k in report})
    atomic_write_text(docs / "report.md", render_page(report, run))
    return [docs / "report.md", docs / "report.json"]
