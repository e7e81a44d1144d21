"""The multilingual recipe's report (issue 31): ASR per language beside Whisper-base, and S2ST's three ways.

`dmlm demo configs/multilingual.yaml` sets `whisper_baseline: true`. After the demo's own evaluation this module
- runs Whisper-base (greedy, no prompt, its language forced: `dmlm.evaluation.whisper_baseline`) on exactly the
  clips each `asr:LANG` evaluation scored, and sets it beside dmlm per voice group (training voices, the held-out
  voice): report.json's `asr_languages`;
- lays out every S2ST evaluation's ways (direct, chained, cascade) with ASR-BLEU and chrF and their 95 % intervals,
  per voice group, and the ceiling (the judge on the target-language recordings of the same sentences):
  report.json's `s2st_ways`;
- renders both (`render_section`) for report.md and the results page (`dmlm report RUN --results PAGE`).

Design decisions:
- One scorer: a language's row is the open report's test-set row (`open_report.score_test_set`: WER and CER after
  the ASR task's normalizer, each with its 95 % bootstrap interval over the clips, for both systems, and dmlm's WER
  minus Whisper's with its paired interval), so the two recipes' side-by-sides are the same numbers; it refuses two
  systems that heard other clips. Whisper runs through the open report's `whisper_rows` (cached like every
  evaluation: keyed by the manifest, the language and the limit, so a re-run does not transcribe again).
- Same clips by construction: Whisper takes the same recordings (`takes` and the record's language) with the same
  per-voice-group limit as the `asr:LANG` evaluation (`DemoConfig.limit_of`), and the pairing check says so.
- Whisper's English normalizer is applied beside dmlm's for English only (`whisper_english`): it knows English
  spellings and numbers, and would garble Spanish, German or French.
- The ways table reads only what the S2ST evaluation kept (eval/s2st_LANG/hyps.jsonl, `ceiling.hyps.jsonl`): it is
  built whenever a scored spec is S2ST, switch or not, and recomputes each score from the transcripts, checked
  against the evaluation's report, so an interval is always of the number shown. A ceiling without its transcripts
  (an evaluation made before they were kept) is shown without an interval.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from dmlm.data.manifest import HELDOUT_VOICE, is_heldout_voice
from dmlm.evaluation.headline import headline_row
from dmlm.evaluation.s2st import CEILING_HYPS
from dmlm.metrics.bootstrap import interval, resample_counts, score, utterance_stats
from dmlm.recipes.open_report import BASELINE, DMLM, DRAWS, WHISPER, is_recognition, score_test_set, whisper_rows
from dmlm.recipes.run_folder import RunFolder
from dmlm.tasks import DEFAULT_LANG, parse_spec, scoring_for
from dmlm.util.config import ConfigError
from dmlm.util.errors import UserError
from dmlm.util.io import read_jsonl

if TYPE_CHECKING:
    from dmlm.recipes.demo import DemoConfig

SEEN = "training_voices"
"""The voice group of the training voices (the held-out voice's is `HELDOUT_VOICE`)."""
GROUPS = ((SEEN, False), (HELDOUT_VOICE, True))
SHOWN = {SEEN: "training voices", HELDOUT_VOICE: "held-out voice"}
"""How the pages name the voice groups."""
HEARD = ("asr_bleu", "asr_chrf")
"""What S2ST is scored by: BLEU and chrF of the judge's transcripts (`dmlm.evaluation.s2st.asr_bleu`)."""
CEILING = "ceiling"
KEYS = ("asr_languages", "s2st_ways")
"""What this module adds to report.json (and the results page's JSON keeps)."""


def is_s2st(spec: str) -> bool:
    """Whether `spec` translates speech into speech (judged by ear against the translation: ASR-BLEU)."""
    return scoring_for(spec).judged_against == "translation"


def recognition_languages(cfg: DemoConfig) -> dict[str, str]:
    """{spec: language} of each speech recognition the run scores (`cfg.scored_tasks`): `asr:LANG` in LANG, a bare
    `asr` in English (`check_whisper_baseline` refuses it on a corpus that speaks other languages too)."""
    return {s: parse_spec(s)[1] or DEFAULT_LANG for s in cfg.scored_tasks if is_recognition(s)}


def check_whisper_baseline(cfg: DemoConfig) -> None:
    """`whisper_baseline`'s settings no single field's type can check (`DemoConfig.validate`)."""
    if not cfg.whisper_baseline:
        return
    specs = [s for s in cfg.scored_tasks if is_recognition(s)]
    if not specs:
        raise ConfigError(f"whisper_baseline: the run scores no speech recognition to set Whisper-base beside "
                          f"(eval_tasks: {cfg.scored_tasks}); add asr:LANG for each language")
    bare = [s for s in specs if parse_spec(s)[1] is None]
    if bare and cfg.prepare.speech_langs:
        raise ConfigError(f"whisper_baseline: {bare[0]!r} scores every language's recordings at once, and Whisper "
                          f"is forced to one language; name each in eval_tasks instead (asr:en, "
                          + ", ".join(f"asr:{lang}" for lang in cfg.prepare.speech_langs) + ")")


# -- ASR per language beside Whisper-base ------------------------------------------------------------

def asr_beside_whisper(cfg: DemoConfig, folder: RunFolder, test: Path, progress: bool = True) -> dict[str, dict]:
    """report.json's `asr_languages`: {spec: {"language", "limit", "groups": {voice group: the test-set row of
    `score_test_set`}}} for each ASR the run scored (its hypotheses in eval/, made by the demo's evaluation) beside
    Whisper-base on the same clips (transcribed here, or reused)."""
    out = {}
    for spec, lang in recognition_languages(cfg).items():
        path = folder.eval_hyps(spec)
        if not path.is_file():
            raise UserError(f"{path}: no hypotheses of {spec} to set Whisper-base beside (the demo's evaluation "
                            "writes them; was it interrupted?)")
        ours, limit = read_jsonl(path), cfg.limit_of(spec)
        theirs = whisper_rows(folder, spec, test, progress, language=lang, limit=limit)
        groups = {}
        for group, held in GROUPS:
            picked = {DMLM: [r for r in ours if is_heldout_voice(r) == held],
                      WHISPER: [r for r in theirs if is_heldout_voice(r) == held]}
            if picked[DMLM] or picked[WHISPER]:  # one without the other is an error: they heard other clips
                groups[group] = score_test_set(picked, language=lang)
        out[spec] = {"language": lang, "limit": limit, "baseline": BASELINE, "groups": groups}
    return out


# -- S2ST: the three ways and the ceiling --------------------------------------------------------------

def _heard(rows: list[dict], reported: dict, suffix: str, what: str) -> dict:
    """One group's ASR-BLEU and chrF recomputed from its transcripts, with 95 % intervals; each must equal the S2ST
    report's `reported[metric + suffix]` (when it has one)."""
    refs, hyps = [r["ref"] for r in rows], [r["hyp"] for r in rows]
    counts = resample_counts(len(rows), DRAWS)
    out: dict = {"utterances": len(rows)}
    for m in HEARD:
        stats = utterance_stats(m, refs, hyps)
        value, want = score(m, stats.sum(0)), reported.get(m + suffix)
        if want is not None and not np.isclose(value, want, rtol=1e-6, atol=1e-6):
            raise UserError(f"{what}: {m}{suffix} recomputed from the kept transcripts is {value:.4f}, the report says "
                            f"{want:.4f}; the transcripts and the report are of different evaluations")
        out |= {m: value, f"{m}_ci95": list(interval(m, stats, counts))}
    return out


def _ceiling(folder: RunFolder, spec: str, rep: dict) -> dict:
    """The ceiling's training-voice group: from its transcripts when kept, else the report's numbers alone."""
    rows = read_jsonl(folder.eval_dir(spec) / CEILING_HYPS, missing_ok=True)
    ceiling = {m: rep[f"{CEILING}_{m}"] for m in HEARD if f"{CEILING}_{m}" in rep}
    if rows:
        return {SEEN: _heard(rows, ceiling, "", f"{spec} ceiling")}
    return {SEEN: {"utterances": None, **ceiling}} if ceiling else {}


def s2st_ways(folder: RunFolder, specs: list[str]) -> dict[str, dict]:
    """report.json's `s2st_ways`: {spec: {"language", "judge", "ways": {way: {voice group: {"utterances", "asr_bleu",
    "asr_bleu_ci95", "asr_chrf", "asr_chrf_ci95"}}}, "ceiling": {training voices: ...}}} of each S2ST spec among
    `specs` that was evaluated."""
    out = {}
    for spec in (s for s in specs if is_s2st(s) and folder.eval_report(s).is_file()):
        rep = json.loads(folder.eval_report(spec).read_text())
        rows = read_jsonl(folder.eval_dir(spec) / "hyps.jsonl", missing_ok=True)
        ways: dict[str, dict] = {}
        for way, reported in rep.get("ways", {}).items():
            groups = {}
            for group, held in GROUPS:
                picked = [r for r in rows if r["way"] == way and is_heldout_voice(r) == held]
                if picked:
                    groups[group] = _heard(picked, reported, f"_{HELDOUT_VOICE}" if held else "", f"{spec} {way}")
            ways[way] = groups or {SEEN: {"utterances": None, **{m: reported.get(m) for m in HEARD}}}
        out[spec] = {"language": rep.get("language"), "judge": rep.get("judge"), "ways": ways,
                     CEILING: _ceiling(folder, spec, rep)}
    return out


# -- pages -------------------------------------------------------------------------------------------

def _f(x, nd: int = 1) -> str:
    return "–" if x is None else f"{x:.{nd}f}"


def _ci(value, ci) -> str:
    return _f(value) + (f" [{_f(ci[0])}, {_f(ci[1])}]" if ci else "")


def _language_table(languages: dict[str, dict]) -> list[str]:
    lines = ["| ASR | voices | clips | dmlm WER [95 % CI] | dmlm CER [95 % CI] | Whisper-base WER [95 % CI] | "
             "Whisper-base CER [95 % CI] | dmlm − Whisper WER [paired 95 % CI] |", "|---" * 8 + "|"]
    english = []
    for spec, row in languages.items():
        for group, r in row["groups"].items():
            d, w, diff = r[DMLM], r.get(WHISPER), r.get(f"{DMLM}_vs_{WHISPER}")
            cells = [headline_row(spec)[0], SHOWN[group], str(r["utterances"]), _ci(d["wer"], d["ci95"]),
                     _ci(d["cer"], d.get("cer_ci95")), _ci(w and w["wer"], w and w["ci95"]),
                     _ci(w and w["cer"], w and w.get("cer_ci95")),
                     f"{diff['delta']:+.1f} [{diff['ci95'][0]:+.1f}, {diff['ci95'][1]:+.1f}], {diff['verdict']}"
                     if diff else "–"]
            lines.append("| " + " | ".join(cells) + " |")
            if "whisper_english" in d and w:
                english.append(f"{headline_row(spec)[0]}, {SHOWN[group]}: dmlm "
                               f"{_f(d['whisper_english']['wer'])}, Whisper-base {_f(w['whisper_english']['wer'])}")
    if english:
        lines += ["", "English WER after Whisper's English normalizer on both sides (its digits and spellings): "
                  + "; ".join(english) + "."]
    return lines


def _ways_table(ways: dict[str, dict]) -> list[str]:
    lines = ["| S2ST | way | voices | clips | ASR-BLEU [95 % CI] | ASR-chrF [95 % CI] |", "|---" * 6 + "|"]
    for spec, row in ways.items():
        named = list(row["ways"].items())
        named.append((f"{CEILING}: {row.get('judge')} on the {row.get('language')} recordings", row[CEILING]))
        for way, groups in named:
            for group, r in groups.items():
                clips = "–" if r["utterances"] is None else str(r["utterances"])
                cells = [f"`{spec}`", way, SHOWN[group], clips,
                         _ci(r.get("asr_bleu"), r.get("asr_bleu_ci95")), _ci(r.get("asr_chrf"), r.get("asr_chrf_ci95"))]
                lines.append("| " + " | ".join(cells) + " |")
    return lines


def render_section(report: dict) -> list[str]:
    """The sections of report.md and the results page for `asr_languages` and `s2st_ways` ([] without them)."""
    lines: list[str] = []
    if report.get("asr_languages"):
        limits = {r["limit"] for r in report["asr_languages"].values()}
        first = ", ".join("every clip" if n is None else f"the first {n}" for n in sorted(limits, key=str))
        lines += ["", "## ASR per language beside Whisper-base", "",
                  "WER and CER in % after the ASR task's normalizer, for both systems; 95 % bootstrap intervals over "
                  f"the clips. Whisper-base: greedy, no prompt, its language forced, on exactly the clips "
                  f"dmlm's `asr:LANG` evaluation scored ({first} of each voice group).", "",
                  *_language_table(report["asr_languages"])]
    if report.get("s2st_ways"):
        lines += ["", "## Speech-to-speech translation: the three ways and the ceiling", "",
                  "ASR-BLEU and ASR-chrF: the speech out is vocoded, Whisper-base (forced to the target language) "
                  "transcribes it, and BLEU/chrF score the transcripts against the reference translations (both "
                  "basic-normalized); 95 % bootstrap intervals over the clips. Direct: `s2st`; chained: the target "
                  "text, then its units, in one decode; cascade: S2TT, then T2S, two decodes of the same model. The "
                  "ceiling: the same judge on the target-language recordings of the training-voice clips' sentences.",
                  "", *_ways_table(report["s2st_ways"])]
    return lines
