"""95 % bootstrap intervals of a demo run's headline scores, from the per-utterance outputs it kept.

    python -m dmlm.recipes.intervals runs/demo [--draws 2000]

Prints one row per headline score (the score recomputed from the kept hypotheses, which must equal
the run's report, and its 95 % percentile interval over test utterances resampled with
replacement, `dmlm.metrics.bootstrap`) and writes `RUN/intervals.json`.

Design decisions:
- The interval covers the test-set sampling of one trained model: how far the score could move
  on another draw of test sentences of the same kind. It does not cover training noise (seeds,
  the corpus's sampled voice, a wall-clock vocoder budget), which docs/experiments.md measures as
  run-to-run spread; two runs differ by at least this much before the difference says anything.
- Scores are recomputed from the files the evaluations wrote (eval/*.hyps.jsonl and the by-ear
  examples' hyps.jsonl, named by `RunFolder`) with the same normalizers, and checked against
  report.json, so an interval is always of the number the report shows.
- Which scores get one is asked of each task's row (decoded tasks, their first headline metric),
  so a run with `s2tt:de` gets "S2TT en→de BLEU".
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from dmlm.data.manifest import is_heldout_voice
from dmlm.evaluation.headline import headline_row, judged_alone, scoring_order
from dmlm.metrics import bootstrap
from dmlm.recipes.multilingual_report import is_s2st
from dmlm.recipes.report import short_label
from dmlm.recipes.run_folder import RunFolder
from dmlm.tasks import get_task, parse_spec
from dmlm.util.errors import UserError
from dmlm.util.io import atomic_write_json, read_jsonl


def _speakers(folder: RunFolder) -> dict[str, str]:
    from dmlm.data.manifest import read_manifest

    test = folder.manifest("test")
    return {r.id: r.speaker for r in read_manifest(test)} if test.is_file() else {}


def _tasks(tasks: dict) -> list[str]:
    """The decoded tasks' specs among a summary's keys, in report order."""
    specs = []
    for key in tasks:
        try:
            if get_task(parse_spec(key)[0]).decoded:
                specs.append(key)
        except UserError:  # asr_only, resynthesis: not task specs
            pass
    return scoring_order(specs)


def headline_samples(run: Path) -> list[dict]:
    """(name, metric, normalizer, refs, hyps, report value) of every headline score the run kept outputs for:
    each decoded task's first headline metric (a recognition task's also on the held-out voice; speech out
    by Whisper's ear) and resynthesis in the vocoder's voice."""
    folder = RunFolder(run)
    tasks = json.loads(folder.report_json.read_text())["tasks"]
    out: list[dict] = []

    def add(name, metric, rows, normalizer, reported):
        if rows and reported is not None:
            out.append({"name": name, "metric": metric, "normalizer": normalizer, "refs": [r["ref"] for r in rows],
                        "hyps": [r["hyp"] for r in rows], "reported": reported})

    for spec in _tasks(tasks):
        task, name, row = get_task(parse_spec(spec)[0]), short_label(spec), tasks[spec]
        headers = dict(headline_row(spec)[1])
        if is_s2st(spec):  # its own way's ASR-BLEU, the first way it kept (every way's: report.json's s2st_ways)
            rows = read_jsonl(folder.eval_dir(spec) / "hyps.jsonl", missing_ok=True)
            rows = [r for r in rows if not is_heldout_voice(r)]
            first = rows[0]["way"] if rows else None  # no transcripts kept: `add` skips the row
            add(f"{name} {headers['asr_bleu']}", "asr_bleu", [r for r in rows if r["way"] == first], "basic",
                row.get("asr_bleu"))
            continue
        if task.target == "speech":  # judged by ear: the T2S examples' transcripts
            add(f"{name} {headers['wer']}", "wer", read_jsonl(folder.example_hyps(spec), missing_ok=True),
                "whisper_english", row.get("wer"))
            continue
        metric = headline_row(spec)[1][0][0]
        rows = read_jsonl(folder.eval_hyps(spec), missing_ok=True)
        add(f"{name} {headers[metric]}", metric, [r for r in rows if not is_heldout_voice(r)], "basic", row.get(metric))
        if getattr(task, "target_text", None) == "text":  # recognition: what a new voice costs is a headline
            add(f"{name} {headers[metric]}, held-out voice", metric, [r for r in rows if is_heldout_voice(r)], "basic",
                row.get(f"{metric}_heldout_voice"))
    for key in (k for k in tasks if judged_alone(k)):
        out += _resynthesis_samples(folder, key, tasks[key])
    return out


def _resynthesis_samples(folder: RunFolder, key: str, row: dict) -> list[dict]:
    """Resynthesis in the vocoder's own voice, and the judge on the same recordings."""
    resyn = read_jsonl(folder.example_hyps(key), missing_ok=True)
    report = folder.eval_report(key)
    voice = json.loads(report.read_text()).get("vocoder_voice") if report.is_file() else None
    speakers = _speakers(folder) if voice else {}
    in_voice = [r for r in resyn if r.get("vocoder_voice_only")
                or (not is_heldout_voice(r) and speakers.get(r["id"]) == voice)]
    originals = [{"ref": r["ref"], "hyp": r["hyp_original"]} for r in in_voice if "hyp_original" in r]
    out = []
    for name, rows, reported in ((f"{key} Whisper WER %, the vocoder's voice", in_voice, row.get("wer_vocoder_voice")),
                                 ("the same recordings, Whisper WER %", originals, row.get("original_wer_vocoder_voice"))):
        if rows and reported is not None:
            out.append({"name": name, "metric": "wer", "normalizer": "whisper_english", "refs": [r["ref"] for r in rows],
                        "hyps": [r["hyp"] for r in rows], "reported": reported})
    return out


def headline_intervals(run: str | Path, draws: int = 2000, seed: int = 0) -> list[dict]:
    """Each headline score with its 95 % bootstrap interval over test utterances (written to RUN/intervals.json)."""
    run = Path(run)
    folder = RunFolder(run)
    if not folder.report_json.is_file():
        raise UserError(f"{run}: no report.json (expected a finished `dmlm demo` run folder)")
    rows = []
    for s in headline_samples(run):
        stats = bootstrap.utterance_stats(s["metric"], s["refs"], s["hyps"], normalizer=s["normalizer"])
        value = bootstrap.score(s["metric"], stats.sum(0))
        if not np.isclose(value, s["reported"], rtol=1e-6, atol=1e-6):
            raise UserError(f"{run}: {s['name']} recomputed from the kept outputs is {value:.4f}, the report says "
                            f"{s['reported']:.4f}; the outputs and report.json are of different evaluations")
        lo, hi = bootstrap.interval(s["metric"], stats, bootstrap.resample_counts(len(stats), draws, seed))
        rows.append({"score": s["name"], "value": value, "ci95": [lo, hi], "utterances": len(stats)})
    atomic_write_json(folder.intervals, {"draws": draws, "seed": seed, "scores": rows})
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="a finished demo run folder (report.json, eval/, examples/)")
    p.add_argument("--draws", type=int, default=2000, help="bootstrap resamples")
    args = p.parse_args(argv)
    try:
        rows = headline_intervals(args.run, args.draws)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print("| score | value | 95 % interval | utterances |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['score']} | {r['value']:.2f} | [{r['ci95'][0]:.2f}, {r['ci95'][1]:.2f}] | {r['utterances']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
