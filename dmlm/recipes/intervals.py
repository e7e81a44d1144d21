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
  examples' hyps.jsonl) with the same normalizers, and checked against report.json, so an interval
  is always of the number the report shows.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from dmlm.metrics import bootstrap
from dmlm.util.errors import UserError
from dmlm.util.io import atomic_write_json, read_jsonl


def _speakers(run: Path) -> dict[str, str]:
    from dmlm.data.manifest import read_manifest

    test = run / "data" / "test.jsonl"
    return {r.id: r.speaker for r in read_manifest(test)} if test.is_file() else {}


def headline_samples(run: Path) -> list[dict]:
    """(name, metric, normalizer, refs, hyps, report value) of every headline score the run kept outputs for."""
    report = json.loads((run / "report.json").read_text())
    tasks = report["tasks"]
    ev, ex = run / "eval", run / "examples"
    out: list[dict] = []

    def add(name, metric, rows, normalizer, reported):
        if rows and reported is not None:
            out.append({"name": name, "metric": metric, "normalizer": normalizer, "refs": [r["ref"] for r in rows],
                        "hyps": [r["hyp"] for r in rows], "reported": reported})

    asr = read_jsonl(ev / "asr.hyps.jsonl", missing_ok=True)
    add("ASR WER %", "wer", [r for r in asr if not r.get("heldout_voice")], "basic", tasks.get("asr", {}).get("wer"))
    add("ASR WER %, held-out voice", "wer", [r for r in asr if r.get("heldout_voice")], "basic",
        tasks.get("asr", {}).get("wer_heldout_voice"))
    s2tt = read_jsonl(ev / "s2tt_es.hyps.jsonl", missing_ok=True)
    add("S2TT en→es BLEU", "bleu", [r for r in s2tt if not r.get("heldout_voice")], "basic",
        tasks.get("s2tt", {}).get("bleu"))
    add("I2T CIDEr", "cider", read_jsonl(ev / "i2t.hyps.jsonl", missing_ok=True), "basic",
        tasks.get("i2t", {}).get("cider"))
    add("T2S Whisper WER %", "wer", read_jsonl(ex / "t2s" / "hyps.jsonl", missing_ok=True), "whisper_english",
        tasks.get("t2s", {}).get("wer"))
    resyn = read_jsonl(ex / "resynthesis" / "hyps.jsonl", missing_ok=True)
    voice = (json.loads((ev / "resynthesis.json").read_text()).get("vocoder_voice")
             if (ev / "resynthesis.json").is_file() else None)
    speakers = _speakers(run) if voice else {}
    in_voice = [r for r in resyn if r.get("vocoder_voice_only")
                or (not r.get("heldout_voice") and speakers.get(r["id"]) == voice)]
    add("resynthesis Whisper WER %, the vocoder's voice", "wer", in_voice, "whisper_english",
        tasks.get("resynthesis", {}).get("wer_vocoder_voice"))
    originals = [{"ref": r["ref"], "hyp": r["hyp_original"]} for r in in_voice if "hyp_original" in r]
    add("the same recordings, Whisper WER %", "wer", originals, "whisper_english",
        tasks.get("resynthesis", {}).get("original_wer_vocoder_voice"))
    return out


def headline_intervals(run: str | Path, draws: int = 2000, seed: int = 0) -> list[dict]:
    """Each headline score with its 95 % bootstrap interval over test utterances (written to RUN/intervals.json)."""
    run = Path(run)
    if not (run / "report.json").is_file():
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
    atomic_write_json(run / "intervals.json", {"draws": draws, "seed": seed, "scores": rows})
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
