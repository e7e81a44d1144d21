"""`dmlm report RUN`: a run's report.md and the project's docs/results.md, from RUN/report.json.

Pure rendering: every number comes from `report.json` (built by `dmlm.recipes.demo`) and every
example from the evaluation's `eval/*.hyps.jsonl`, so both pages can be re-rendered from a
finished run. Rows are keyed by task spec: each row's label and metrics are the task's own
(`dmlm.evaluation.headline.headline_row`), so a run with `s2tt:de` shows "S2TT en→de"; the
comparison model's row (report.json's `comparison`) is labelled with the model it scores.
Every file is named by `RunFolder`.
"""

from __future__ import annotations

import json
from pathlib import Path

from dmlm.data.manifest import is_heldout_voice, read_manifest
from dmlm.evaluation.headline import headline_row, judged_alone, scoring_order
from dmlm.recipes.multilingual_report import KEYS as MULTILINGUAL_KEYS
from dmlm.recipes.multilingual_report import render_section as multilingual_section
from dmlm.recipes.open_report import render_section
from dmlm.recipes.run_folder import RunFolder
from dmlm.tasks import DEFAULT_LANG, get_task, parse_spec, scoring_for
from dmlm.util.errors import UserError
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
    path = RunFolder(run).intervals
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
        f"Machine: {m['cores']} cores, {m['cpu']}{_bf16(m)}, GPU: {m['gpu']}; this invocation {report['minutes']:.1f} min "
        f"({', '.join(f'{k} {v:.0f} s' for k, v in report['stages_seconds'].items())})." + _all_runs(report), "",
        "All scores on the held-out test split (sentences never seen in training; 40 % of them hold a colour–object "
        "pair never seen in training). Baselines predict the most frequent training target for every input.", "",
        *_table(report),
        *_intervals(out),
        *_stage_profile(report),
        *(render_section(report) if "test_sets" in report else []),  # an open-vocabulary run (configs/open.yaml)
        *multilingual_section(report),  # ASR per language beside Whisper-base, S2ST's ways (configs/multilingual.yaml)
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
    lines += ["", f"![loss]({RunFolder(out).loss_plot().name})", ""]
    lines += _examples(out, n_examples, tasks)
    return "\n".join(lines) + "\n"


def _bf16(machine: dict) -> str:
    """Whether the CPU has native bf16 (AVX512-BF16 or AMX), where the report records it: the same CPU name covers
    models with and without it (reports made before the field say nothing)."""
    if "native_bf16" not in machine:
        return ""
    return " (CPU with native bf16)" if machine["native_bf16"] else " (CPU without native bf16)"


def short_label(spec: str, src_lang: str = DEFAULT_LANG) -> str:
    """`spec`'s headline label, "ASR", "ASR es", "S2TT en→es", "S2TT *→en" (`Scoring.row_label`), for example
    headings and interval names."""
    return scoring_for(spec).row_label(spec, src_lang)


def _is_task(key: str) -> bool:
    """A summary key that names a task spec (not a model's or an evaluation's own name)."""
    try:
        parse_spec(key)
        return True
    except UserError:
        return False


def _examples(out: Path, n: int, tasks: dict) -> list[str]:
    """Example tables of the decoded text-out tasks (images beside I2T's captions), then links to
    the wavs of the by-ear evaluations."""
    folder = RunFolder(out)
    specs = scoring_order(k for k in tasks if _is_task(k) and get_task(parse_spec(k)[0]).decoded)
    lines: list[str] = []
    for spec in (s for s in specs if get_task(parse_spec(s)[0]).target == "text"):
        rows = [r for r in read_jsonl(folder.eval_hyps(spec), missing_ok=True) if not is_heldout_voice(r)][:n]
        if not rows:
            continue
        title = short_label(spec)
        if get_task(parse_spec(spec)[0]).source == "image":
            lines += _image_examples(folder, title, rows)
            continue
        lines += [f"## {title} examples", "", "| id | reference | hypothesis |", "|---|---|---|"]
        lines += [f"| {r['id']} | {r['ref']} | {r['hyp']} |" for r in rows]
        lines.append("")
    heard = [(s, short_label(s)) for s in specs if get_task(parse_spec(s)[0]).target == "speech"]
    heard += [(k, k.capitalize()) for k in tasks if not _is_task(k) and judged_alone(k)]
    for name, title in heard:
        d = folder.example_dir(name)
        if d.is_dir():
            wavs = sorted(p.relative_to(out).as_posix() for p in d.rglob("*.wav"))
            lines += [f"## {title} examples", "", *[f"- [{Path(w).name}]({w})" for w in wavs]]
            if (d / "spectrograms.png").is_file():
                lines += ["", f"![{title} spectrograms]({(d / 'spectrograms.png').relative_to(out).as_posix()})"]
            lines.append("")
    return lines


def _image_examples(folder: RunFolder, title: str, rows: list[dict]) -> list[str]:
    """Captions beside their images (relative to the run folder, as report.md sits in it)."""
    test = folder.manifest("test")
    images = {r.id: r.image for r in (read_manifest(test) if test.is_file() else [])}
    data = folder.data.relative_to(folder.out).as_posix()
    lines = [f"## {title} examples", "", "| image | reference | caption |", "|---|---|---|"]
    for r in rows:
        img = f"![{r['id']}]({data}/{images[r['id']]})" if images.get(r["id"]) else r["id"]
        lines.append(f"| {img} | {r['ref'][0] if isinstance(r['ref'], list) else r['ref']} | {r['hyp']} |")
    lines.append("")
    return lines


def _rows(report: dict) -> list[tuple[str, str, list[tuple[str, str]]]]:
    """(summary key, label, metrics) of every headline row, in report order; the comparison model's row
    follows the mixture's row of its task, both labelled with their model."""
    tasks = report["tasks"]
    comp = report.get("comparison") or {}
    by_spec = {k: k for k in tasks if _is_task(k) or _scorable(k)}
    if comp.get("key") in tasks:
        by_spec.setdefault(comp["task"], comp["task"])
    rows = []
    for spec in scoring_order(by_spec):
        if spec == comp.get("task"):
            short = headline_row(spec)[0]
            if spec in tasks:
                rows.append((spec, *headline_row(spec, model="mixture model")))
            if comp["key"] in tasks:
                rows.append((comp["key"], *headline_row(spec, model=f"{short}-only model")))
        else:
            rows.append((spec, *headline_row(spec)))
    return rows


def _scorable(key: str) -> bool:
    try:
        scoring_for(key)
        return True
    except UserError:
        return False


def _table(report: dict) -> list[str]:
    """One row per headline metric (`dmlm.evaluation.headline.headline_row`), the task named on its first row."""
    tasks = report["tasks"]
    lines = ["| task | metric | value |", "|---|---|---|"]
    for key, label, metrics in _rows(report):
        have = [(k, h) for k, h in metrics if tasks.get(key, {}).get(k) is not None]
        for i, (k, h) in enumerate(have):
            lines.append(f"| {label if i == 0 else ''} | {h} | {_f(tasks[key][k])} |")
    return lines


def _made_by(recipe: str | None) -> str:
    """How the run was made, for the results page: `make demo` for the demo's own config."""
    recipe = recipe or "configs/demo.yaml"  # a report.json from before runs recorded their config file
    command = f"`dmlm demo {recipe}`"
    return f"a `make demo` run: {command}" if recipe == "configs/demo.yaml" else f"a {command} run"


def render_results(report: dict, run: Path, results_json: str = "results.json") -> str:
    """docs/results.md: the headline scores of one run, the machine, its time and how to reproduce it;
    `results_json` names the JSON written beside it."""
    m = report["machine"]
    a = report.get("all_invocations") or {}
    minutes = a.get("minutes") if a.get("invocations", 1) > 1 else report["minutes"]
    cfg = report.get("config", {})
    stages = a.get("stages_seconds") if a.get("invocations", 1) > 1 else report["stages_seconds"]
    lines = [
        "# Results" + (f" of `{cfg['recipe']}`" if cfg.get("recipe") not in (None, "configs/demo.yaml") else ""), "",
        f"Generated by `dmlm report {run}` from `{run}/report.json` ({_made_by(cfg.get('recipe'))}); the numbers "
        f"are also in `{results_json}` beside this page. "
        "Do not edit by hand.", "",
        f"- Corpus: {cfg.get('prepare', {}).get('corpus', '?')}, test split; "
        + ", ".join(f"{k} {v:,}" for k, v in (report.get("data") or {}).items()) + " records.",
        f"- Machine: {m['cores']} cores, {m['cpu']}{_bf16(m)}, GPU: {m['gpu']}; Python {m['python']}, torch {m['torch']}.",
        f"- Wall time: {minutes:.1f} min in all (" + ", ".join(f"{k} {v:.0f} s" for k, v in stages.items()) + ").",
        "", "All scores on held-out test sentences; baselines predict the most frequent training target for every input.",
        "", *_table(report), *_intervals(run), *multilingual_section(report), "",
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
    folder = RunFolder(run)
    path = folder.report_json
    if not path.is_file():
        raise MissingFileError(f"{path}: no report.json in {run} (a finished `dmlm demo` run writes it)")
    report = json.loads(path.read_text())
    atomic_write_text(folder.report_md, render_markdown(report, run, (report.get("config") or {}).get("examples", 6)))
    out = [folder.report_md]
    if results is not None:
        results = Path(results)
        atomic_write_text(results, render_results(report, run, results.with_suffix(".json").name))
        # the numbers beside the page, so it can be re-rendered and read by tools without the run
        summary = {k: report[k] for k in ("tasks", "machine", "minutes", "stages_seconds", "all_invocations", "train",
                                          "codebook", "image_codebook", "data", "comparison", "config",
                                          *MULTILINGUAL_KEYS) if k in report}
        atomic_write_json(results.with_suffix(".json"), summary)
        out += [results, results.with_suffix(".json")]
    return out
