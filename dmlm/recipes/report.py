"""`dmlm report RUN`: a run's report.md and the project's docs/results.md, from RUN/report.json.

Pure rendering: every number comes from `report.json` (built by `dmlm.recipes.demo`) and every
example from the evaluation's `eval/*.hyps.jsonl`, so both pages can be re-rendered from a
finished run. The rows and metrics are `dmlm.evaluation.headline.TASK_ROWS`, the same table the
CLI and the demo's summary read.
"""

from __future__ import annotations

import json
from pathlib import Path

from dmlm.evaluation.headline import TASK_ROWS
from dmlm.util.io import atomic_write_json, atomic_write_text, read_jsonl


def _f(x, nd: int = 2) -> str:
    return "–" if x is None else f"{x:.{nd}f}" if isinstance(x, float) else str(x)


def _all_runs(report: dict) -> str:
    a = report.get("all_invocations")
    if not a or a["invocations"] < 2:
        return ""
    return (f" Summed over the {a['invocations']} invocations on this folder (a re-run resumes): {a['minutes']:.1f} min "
            f"({', '.join(f'{k} {v:.0f} s' for k, v in a['stages_seconds'].items())}).")


def _stage_profile(report: dict) -> list[str]:
    """Where this invocation's time went: wall and CPU seconds per stage (CPU ÷ wall = cores kept busy)."""
    cpu = report.get("stages_cpu_seconds")
    if not cpu:
        return []
    cores = report["machine"].get("cores") or 1
    lines = ["", f"Time per stage, this invocation (CPU seconds of this process and its workers; {cores} cores):", "",
             "| stage | wall s | CPU s | cores busy |", "|---|---|---|---|"]
    for k, wall in report["stages_seconds"].items():
        c = cpu.get(k)
        lines.append(f"| {k} | {wall:.0f} | {'–' if c is None else f'{c:.0f}'} | "
                     f"{'–' if c is None or wall <= 0 else f'{c / wall:.2f}'} |")
    return lines


def _intervals(run: Path) -> list[str]:
    """The headline scores' 95 % bootstrap intervals (RUN/intervals.json, `dmlm.recipes.intervals`), if the run has them."""
    path = Path(run) / "intervals.json"
    if not path.is_file():
        return []
    rows = json.loads(path.read_text())["scores"]
    return ["", "95 % bootstrap intervals over test utterances (`intervals.json`: they cover the choice of test "
            "sentences, not training noise):", "", "| score | value | 95 % interval | utterances |", "|---|---|---|---|",
            *[f"| {r['score']} | {r['value']:.2f} | [{r['ci95'][0]:.2f}, {r['ci95'][1]:.2f}] | {r['utterances']} |"
              for r in rows]]


def render_markdown(report: dict, out: Path, n_examples: int = 6) -> str:
    out = Path(out)
    m = report["machine"]
    tasks = report["tasks"]
    lines = [
        f"# dmlm demo report ({report['config']['prepare']['corpus']})", "",
        f"Machine: {m['cores']} cores, {m['cpu']}, GPU: {m['gpu']}; this invocation {report['minutes']:.1f} min "
        f"({', '.join(f'{k} {v:.0f} s' for k, v in report['stages_seconds'].items())})." + _all_runs(report), "",
        "All scores on the held-out test split (sentences never seen in training; 40 % of them hold a colour–object "
        "pair never seen in training). Baselines predict the most frequent training target for every input.", "",
        *_table(tasks),
        *_intervals(out),
        *_stage_profile(report),
    ]
    lines.append("")
    tr = report["train"]
    for name, t in tr.items():
        ps = t.get("tokens_per_step") or {}
        share = ", ".join(f"{k} {100 * v:.0f} %" for k, v in (t.get("example_share") or {}).items())
        lines.append(f"- **{name} model**: {t['steps']} steps at {_f(t['tokens_per_s'], 0)} tokens/s, batch "
                     f"{t['batch_tokens']} tokens per rank" + (f", loss {t['loss']}" if t.get("loss") else "")
                     + f"; tasks {t['tasks']}" + (f" (examples: {share})" if share else "")
                     + f"; tokens per step: {ps.get('tokens', 0):,} (text {ps.get('text', 0):,}, speech "
                     f"{ps.get('speech', 0):,}, image {ps.get('image', 0):,}); final dev loss {_f(t['final_dev_loss'], 4)}.")
    cbk = report["codebook"]
    lines += ["", f"Speech codebook: {cbk['backend']} {cbk['model']} layer {cbk['layer']}, k={cbk['k']}, "
              f"{cbk['frame_rate']:g} Hz, dedup={cbk['dedup']}, fingerprint `{cbk['fingerprint']}`."]
    if report.get("image_codebook"):
        icb = report["image_codebook"]
        lines.append(f"Image codebook: patch k-means, k={icb['k']}, fingerprint `{icb['fingerprint']}`.")
    lines += ["", "![loss](loss.png)", ""]
    lines += _examples(out, n_examples)
    return "\n".join(lines) + "\n"


def _examples(out: Path, n: int) -> list[str]:
    ev = out / "eval"
    lines: list[str] = []
    for key, title in (("asr", "ASR"), ("s2tt_es", "S2TT en→es")):
        rows = [r for r in read_jsonl(ev / f"{key}.hyps.jsonl", missing_ok=True) if not r.get("heldout_voice")][:n]
        if rows:
            lines += [f"## {title} examples", "", "| id | reference | hypothesis |", "|---|---|---|"]
            lines += [f"| {r['id']} | {r['ref']} | {r['hyp']} |" for r in rows]
            lines.append("")
    rows = read_jsonl(ev / "i2t.hyps.jsonl", missing_ok=True)[:n]
    if rows:
        images = {r.id: r.image for r in _test_records(out)}
        lines += ["## I2T examples", "", "| image | reference | caption |", "|---|---|---|"]
        for r in rows:
            img = f"![{r['id']}](data/{images[r['id']]})" if images.get(r["id"]) else r["id"]
            lines.append(f"| {img} | {r['ref'][0] if isinstance(r['ref'], list) else r['ref']} | {r['hyp']} |")
        lines.append("")
    for name, title in (("t2s", "T2S"), ("resynthesis", "Resynthesis")):
        d = out / "examples" / name
        if d.is_dir():
            wavs = sorted(p.relative_to(out).as_posix() for p in d.rglob("*.wav"))
            lines += [f"## {title} examples", "", *[f"- [{Path(w).name}]({w})" for w in wavs]]
            if (d / "spectrograms.png").is_file():
                lines += ["", f"![{title} spectrograms](examples/{name}/spectrograms.png)"]
            lines.append("")
    return lines


def _test_records(out: Path):
    from dmlm.data.manifest import read_manifest

    p = out / "data" / "test.jsonl"
    return read_manifest(p) if p.is_file() else []


def _table(tasks: dict) -> list[str]:
    """One row per headline metric (`dmlm.evaluation.headline.TASK_ROWS`), the task named on its first row."""
    lines = ["| task | metric | value |", "|---|---|---|"]
    for key, label, metrics in TASK_ROWS:
        have = [(k, h) for k, h in metrics if tasks.get(key, {}).get(k) is not None]
        for i, (k, h) in enumerate(have):
            lines.append(f"| {label if i == 0 else ''} | {h} | {_f(tasks[key][k])} |")
    for key, rep in tasks.items():
        if key.endswith("_lm") or "_lm_" in key:
            lines.append(f"| {key} (unpaired) | perplexity | {_f(rep.get('perplexity'))} |")
    return lines


def render_results(report: dict, run: Path) -> str:
    """docs/results.md: the headline scores of one run, the machine, its time and how to reproduce it."""
    m = report["machine"]
    a = report.get("all_invocations") or {}
    minutes = a.get("minutes") if a.get("invocations", 1) > 1 else report["minutes"]
    cfg = report.get("config", {})
    stages = a.get("stages_seconds") if a.get("invocations", 1) > 1 else report["stages_seconds"]
    lines = [
        "# Results", "",
        f"Generated by `dmlm report {run}` from `{run}/report.json` (a `make demo` run: "
        f"`dmlm demo configs/demo.yaml`); the numbers are also in `results.json` beside this page. "
        "Do not edit by hand.", "",
        f"- Corpus: {cfg.get('prepare', {}).get('corpus', '?')}, test split; "
        + ", ".join(f"{k} {v:,}" for k, v in (report.get("data") or {}).items()) + " records.",
        f"- Machine: {m['cores']} cores, {m['cpu']}, GPU: {m['gpu']}; Python {m['python']}, torch {m['torch']}.",
        f"- Wall time: {minutes:.1f} min in all (" + ", ".join(f"{k} {v:.0f} s" for k, v in stages.items()) + ").",
        "", "All scores on held-out test sentences; baselines predict the most frequent training target for every input.",
        "", *_table(report["tasks"]), *_intervals(run), "",
    ]
    for name, t in (report.get("train") or {}).items():
        lines.append(f"- {name} model: {t['steps']} steps, {_f(t.get('tokens_per_s'), 0)} tokens/s, loss {t.get('loss')}, "
                     f"final dev loss {_f(t.get('final_dev_loss'), 4)}.")
    return "\n".join(lines) + "\n"


def write_reports(run: str | Path, results: str | Path | None = "docs/results.md") -> list[Path]:
    """Render RUN/report.md and (unless `results` is None) the results page, with the run's summary
    beside it as JSON (`results` with suffix .json), from RUN/report.json."""
    from dmlm.util.errors import MissingFileError

    run = Path(run)
    path = run / "report.json"
    if not path.is_file():
        raise MissingFileError(f"{path}: no report.json in {run} (a finished `dmlm demo` run writes it)")
    report = json.loads(path.read_text())
    atomic_write_text(run / "report.md", render_markdown(report, run, (report.get("config") or {}).get("examples", 6)))
    out = [run / "report.md"]
    if results is not None:
        results = Path(results)
        atomic_write_text(results, render_results(report, run))
        # the numbers beside the page, so it can be re-rendered and read by tools without the run
        summary = {k: report[k] for k in ("tasks", "machine", "minutes", "stages_seconds", "all_invocations", "train",
                                          "codebook", "image_codebook", "data", "config") if k in report}
        atomic_write_json(results.with_suffix(".json"), summary)
        out += [results, results.with_suffix(".json")]
    return out
