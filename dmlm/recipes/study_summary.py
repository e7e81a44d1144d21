"""A study's summary: per-arm means and seed spread, bootstrap intervals, paired comparisons, verdicts, plots.

Reads the rows of `OUT/runs.jsonl` and the per-utterance hypotheses each run's evaluation wrote,
and writes `OUT/NAME.json` (the schema below), `OUT/NAME.md`, `OUT/NAME_metrics.png` (each
metric per arm with its 95 % interval and the seeds as dots) and `OUT/NAME_dev_loss.png`
(dev loss per arm against steps, the mean over seeds with their range shaded). `dmlm study
report` collects the committed summaries into docs/studies.md.

Schema of NAME.json:
`{"study", "finding", "reference", "method", "arms": [{"name", "overrides", "runs": [{"seed",
"metrics", "steps", "tokens", "seconds", and where the row has them "examples", "speech_tokens_per_s"}], "mean", "std",
"ci95": {metric: [lo, hi]}}],
"comparisons": [{"arm", "reference", "metric", "delta", "ci95", "verdict", "expect"}], "verdict"}`, and with
`way_reference` set, `"way_comparisons": [{"arm", "way", "reference_way", "metric", "delta", "ci95", "verdict",
"utterances", "primary"}]`: per arm, each way of a per-way metric family (`metric` is the family, `TASK.KEY`;
the way's own metric is `TASK.WAY.KEY`) minus the reference way on the same utterances.
A tuning study (`choose` set) adds `"choose_rule"` and `"choices": [{"for", "chosen", "overrides", "rule",
"complete", "candidates": [{"arm", "overrides", "final_dev_loss", "final_dev_listening", "listens", "runs"}]}]`:
the setting its rule picks for each arm of the tuned study (`choose_settings`).

Method (`dmlm.metrics.bootstrap`): an arm's score is the corpus metric over its test utterances
pooled across seeds; its `ci95` and each comparison's come from a (paired) bootstrap over test
utterances, pooled across seeds; `std` is the standard deviation of the seeds' own scores.
"""

from __future__ import annotations

import json
import shutil
from collections import defaultdict
from pathlib import Path

import numpy as np

from dmlm.data.manifest import is_heldout_voice
from dmlm.metrics.bootstrap import LOWER_IS_BETTER, base_metric, interval, paired_difference, resample_counts, score
from dmlm.metrics.bootstrap import utterance_stats
from dmlm.recipes.study import metric_key, metric_task, metric_way
from dmlm.util.io import atomic_file, atomic_write_json, atomic_write_text, read_jsonl

METHOD = ("Per arm: the mean and standard deviation of the seeds' scores; a 95 % percentile interval from "
          "a bootstrap over test utterances pooled across seeds (each utterance's metric statistics summed over "
          "the seeds). Per comparison: arm minus reference on the pooled corpus metric, with a paired bootstrap "
          "over the same utterances (Koehn, 2004); 'better'/'worse' when the interval excludes zero.")

VERDICTS = {"reproduced", "not reproduced", "mixed", "no claim"}

RUN_FACTS = {"examples": ("examples (mean)", 0), "speech_tokens_per_s": ("speech tokens/s of training audio", 1),
             "final_dev_listening": ("final dev listening (mean)", 3)}
"""Facts of a run beside its scores (rows of runs.jsonl from before them lack them): the examples it trained on,
the speech tokens its model reads per second of training audio (after deduplication and unit merges) and its last
dev listening gap (`train.dev_mismatched`: dev loss with mismatched sources minus matched). Each is a column of
NAME.md, the arm's mean, where some run has it; {key: (column, digits)}."""


def _pooled_stats(runs: list[dict], metric: str) -> dict[str, np.ndarray]:
    """Utterance id -> the metric's statistics summed over the arm's seeds (ids every seed scored)."""
    task, key, way = metric_task(metric), metric_key(metric), metric_way(metric)
    per_seed = []
    for run in runs:
        path = run.get("hyps", {}).get(task)
        if not path or not Path(path).is_file():
            return {}
        rows = read_jsonl(path)
        heldout = key.endswith("_heldout_voice")
        rows = [r for r in rows if is_heldout_voice(r) == heldout and (way is None or r.get("way") == way)]
        if not rows:
            return {}
        stats = utterance_stats(key, [r["ref"] for r in rows], [r["hyp"] for r in rows])
        per_seed.append({r["id"]: s for r, s in zip(rows, stats)})
    common = set.intersection(*(set(d) for d in per_seed)) if per_seed else set()
    return {i: sum(d[i] for d in per_seed) for i in sorted(common)}


def summarize(study: str, finding: str, reference: str, arms: list, runs: list[dict], metrics: list[str],
              primary: str, draws: int, reference_of) -> dict:
    """The summary dict (module docstring) from runs.jsonl rows."""
    by_arm: dict[str, list[dict]] = defaultdict(list)
    for r in runs:
        by_arm[r["arm"]].append(r)
    pooled = {(a.name, m): _pooled_stats(sorted(by_arm[a.name], key=lambda r: r["seed"]), m)
              for a in arms for m in metrics}
    out_arms = []
    for a in arms:
        rs = sorted(by_arm[a.name], key=lambda r: r["seed"])
        entry = {"name": a.name, "overrides": list(a.overrides),
                 "runs": [{"seed": r["seed"], "metrics": r["metrics"], "steps": r["steps"], "tokens": r["tokens"],
                           "seconds": r["seconds"], "final_dev_loss": r.get("final_dev_loss"),
                           **{k: r[k] for k in RUN_FACTS if r.get(k) is not None}} for r in rs],
                 "mean": {}, "std": {}, "ci95": {}, "pooled": {}}
        for m in metrics:
            vals = [r["metrics"][m] for r in rs if m in r["metrics"]]
            if not vals:
                continue
            entry["mean"][m] = float(np.mean(vals))
            entry["std"][m] = float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0
            st = pooled[(a.name, m)]
            if st:
                mat = np.stack(list(st.values()))
                entry["pooled"][m] = score(base_metric(metric_key(m)), mat.sum(0))
                entry["ci95"][m] = list(interval(metric_key(m), mat, resample_counts(len(mat), draws, seed=1)))
        out_arms.append(entry)
    comparisons = []
    for a in arms:
        ref = reference_of(a)
        if ref is None:
            continue
        for m in metrics:
            sa, sr = pooled[(a.name, m)], pooled[(ref, m)]
            ids = sorted(set(sa) & set(sr))
            if not ids:
                continue
            counts = resample_counts(len(ids), draws, seed=2)
            key = metric_key(m)
            d = paired_difference(key, np.stack([sa[i] for i in ids]), np.stack([sr[i] for i in ids]), counts)
            comparisons.append({"arm": a.name, "reference": ref, "metric": m, **d, "utterances": len(ids),
                                "expect": a.expect or None, "primary": m == primary})
    return {"study": study, "finding": finding, "reference": reference, "method": METHOD, "primary": primary,
            "metrics": metrics, "arms": out_arms, "comparisons": comparisons,
            "verdict": finding_verdict(comparisons)}


def way_comparisons(cfg, runs: list[dict]) -> list[dict]:
    """Each way of each per-way metric family minus `cfg.way_reference`, per arm ([] when it is unset).

    The ways of a task are those its per-way metrics name; a family is a (task, key) some per-way metric names,
    and every way is compared on it, listed or not (a way's hypotheses hold every key). The pair is scored on
    the utterance ids both ways scored in every seed, their statistics summed over seeds, with one paired
    bootstrap draw (`paired_difference`), exactly as an arm against its reference.
    """
    if not cfg.way_reference:
        return []
    per_way = [m for m in cfg.metrics if metric_way(m)]
    ways = {metric_task(m): list(dict.fromkeys(metric_way(x) for x in per_way if metric_task(x) == metric_task(m)))
            for m in per_way}
    families = list(dict.fromkeys((metric_task(m), metric_key(m)) for m in per_way))
    primary = cfg.primary or cfg.metrics[0]
    out = []
    for a in cfg.arms:
        rs = sorted((r for r in runs if r["arm"] == a.name), key=lambda r: r["seed"])
        for task, key in families:
            ref = _pooled_stats(rs, f"{task}.{cfg.way_reference}.{key}")
            for way in ways[task]:
                st = _pooled_stats(rs, f"{task}.{way}.{key}") if way != cfg.way_reference else {}
                ids = sorted(set(st) & set(ref))
                if not ids:
                    continue
                d = paired_difference(key, np.stack([st[i] for i in ids]), np.stack([ref[i] for i in ids]),
                                      resample_counts(len(ids), cfg.bootstrap, seed=2))
                out.append({"arm": a.name, "way": way, "reference_way": cfg.way_reference, "metric": f"{task}.{key}",
                            **d, "utterances": len(ids),
                            "primary": (task, key) == (metric_task(primary), metric_key(primary))})
    return out


def render_ways(summary: dict) -> list[str]:
    """The way-against-way table of NAME.md ([] without `way_comparisons`)."""
    comps = summary.get("way_comparisons") or []
    if not comps:
        return []
    lines = ["", "## Ways compared", "", f"Each way minus the reference way `{comps[0]['reference_way']}` on the same "
             "test utterances pooled across seeds, with a paired bootstrap interval.", "",
             "| arm | way | against | metric | difference | 95 % interval | verdict | utterances |",
             "|---|---|---|---|---|---|---|---|"]
    for c in comps:
        lines.append(f"| {c['arm']} | {c['way']} | {c['reference_way']} | {c['metric']}"
                     f"{' (primary)' if c['primary'] else ''} | {c['delta']:+.2f} | [{c['ci95'][0]:+.2f}, {c['ci95'][1]:+.2f}] | {c['verdict']} | "
                     f"{c['utterances']} |")
    return lines


def _way_note(summary: dict, arm: str, metric: str) -> str:
    """The label over a per-way bar: its difference from the reference way [interval], or 'reference way'."""
    way, family = metric_way(metric), f"{metric_task(metric)}.{metric_key(metric)}"
    for c in summary.get("way_comparisons") or []:
        if (c["arm"], c["metric"]) == (arm, family):
            if c["way"] == way:
                return f"{c['delta']:+.1f} vs {c['reference_way']}\n[{c['ci95'][0]:+.1f}, {c['ci95'][1]:+.1f}]"
            if c["reference_way"] == way:
                return "reference way"
    return ""


def choose_settings(cfg, arms: list[dict]) -> list[dict]:
    """A tuning study's choice per candidate group (`cfg.choose`, arms' `candidate_for`; [] when unset).

    Each candidate is read by its final dev loss and final dev listening gap, each the mean over its seeds (the
    summary's arm entries). `dev_loss`: the lowest dev loss. `dev_loss_listening`: the lowest dev loss among
    the candidates whose gap exceeds `cfg.listening_min`; if none does, the largest gap (the setting closest to
    listening), and the entry says so. A candidate with no finished run is listed, not chosen.
    """
    if not cfg.choose:
        return []
    by_name = {a["name"]: a for a in arms}

    def mean(arm: dict, key: str) -> float | None:
        vals = [r[key] for r in arm["runs"] if r.get(key) is not None]
        return float(np.mean(vals)) if vals else None

    out = []
    for group in dict.fromkeys(a.candidate_for for a in cfg.arms):
        cands = []
        for a in (a for a in cfg.arms if a.candidate_for == group):
            entry = by_name.get(a.name, {"runs": []})
            loss, gap = mean(entry, "final_dev_loss"), mean(entry, "final_dev_listening")
            cands.append({"arm": a.name, "overrides": list(a.overrides), "final_dev_loss": loss,
                          "final_dev_listening": gap, "runs": len(entry["runs"]),
                          "listens": None if gap is None else gap > cfg.listening_min})
        scored = [c for c in cands if c["final_dev_loss"] is not None]
        rule = cfg.choose
        if cfg.choose == "dev_loss_listening":
            listening = [c for c in scored if c["listens"]]
            pick = (min(listening, key=lambda c: c["final_dev_loss"]) if listening else
                    max((c for c in scored if c["final_dev_listening"] is not None),
                        key=lambda c: c["final_dev_listening"], default=None))
            if not listening and pick:
                rule = "largest dev listening gap (no setting listens)"
        else:
            pick = min(scored, key=lambda c: c["final_dev_loss"], default=None)
        out.append({"for": group, "chosen": pick["arm"] if pick else None,
                    "overrides": pick["overrides"] if pick else [], "rule": rule,
                    "complete": all(c["runs"] for c in cands), "candidates": cands})
    return out


def render_choices(summary: dict) -> list[str]:
    """The "Chosen settings" section of a tuning study's NAME.md ([] without `choices`)."""
    choices = summary.get("choices") or []
    if not choices:
        return []
    from dmlm.recipes.study import CHOICE_RULES

    lines = ["", "## Chosen settings", "",
             f"Rule, fixed before the runs: {summary['choose_rule']}. Per candidate: final dev loss and dev listening gap "
             "(dev loss with mismatched inputs minus matched), means over seeds.", "",
             "| for | candidate | final dev loss | dev listening | listens | chosen |", "|---|---|---|---|---|---|"]
    for ch in choices:
        for c in ch["candidates"]:
            listens = "–" if c["listens"] is None else ("yes" if c["listens"] else "no")
            mark = "**chosen**" if c["arm"] == ch["chosen"] else ("not run" if not c["runs"] else "")
            lines.append(f"| {ch['for']} | {c['arm']} | {_fmt(c['final_dev_loss'], 3)} | "
                         f"{_fmt(c['final_dev_listening'], 3)} | {listens} | {mark} |")
    lines.append("")
    for ch in choices:
        how = CHOICE_RULES.get(ch["rule"], ch["rule"])
        state = "" if ch["complete"] else " (not every candidate has run: provisional)"
        lines.append(f"- **{ch['for']}**: {ch['chosen'] or 'none yet'}"
                     + (f" (`{'`, `'.join(ch['overrides'])}`), by {how}{state}" if ch["chosen"] else ""))
    return lines


def finding_verdict(comparisons: list[dict]) -> str:
    """The finding's verdict from the comparisons the paper makes a claim about (`expect`).

    reproduced: every claim goes its way on the primary metric and no claimed comparison goes the
    opposite way on any other metric; not reproduced: no claim goes its way on the primary metric;
    mixed: the rest (a claim met on the primary metric but contradicted on another, e.g. a loss
    that helps ASR and hurts the other tasks, or only some arms meeting it). 'no claim' when the
    study makes none. 'no difference' on a secondary metric does not contradict a claim.
    """
    claims = [c for c in comparisons if c.get("expect")]
    primary = [c for c in claims if c.get("primary")]
    if not primary:
        return "no claim"
    hits = sum(c["verdict"] == c["expect"] for c in primary)
    opposite = {"better": "worse", "worse": "better"}
    contradicted = any(c["verdict"] == opposite.get(c["expect"]) for c in claims if not c.get("primary"))
    if hits == 0:
        return "not reproduced"
    return "reproduced" if hits == len(primary) and not contradicted else "mixed"


def _fmt(x: float | None, digits: int = 2) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def _fact(arm: dict, key: str) -> str:
    """The arm's mean of a `RUN_FACTS` key over the runs that have it."""
    vals = [r[key] for r in arm["runs"] if r.get(key) is not None]
    return _fmt(float(np.mean(vals)) if vals else None, RUN_FACTS[key][1])


def render(summary: dict, command: str) -> str:
    metrics = summary["metrics"]
    facts = [k for k in RUN_FACTS if any(r.get(k) is not None for a in summary["arms"] for r in a["runs"])]
    lines = [f"# Study `{summary['study']}`", "", f"**Finding tested:** {summary['finding'] or '–'}", "",
             f"**Verdict:** {summary['verdict']} (primary metric `{summary['primary']}`, reference arm "
             f"`{summary['reference']}`)", "", f"Command: `{command}`", "", f"Method: {summary['method']}", "",
             "| arm | " + " | ".join(metrics) + " | steps | train s (mean) | final dev loss (mean) |"
             + "".join(f" {RUN_FACTS[k][0]} |" for k in facts), "|---|" + "---|" * (len(metrics) + 3 + len(facts))]
    for a in summary["arms"]:
        cells = []
        for m in metrics:
            if m not in a["mean"]:
                cells.append("–")
                continue
            ci = a["ci95"].get(m)
            cells.append(f"{_fmt(a['mean'][m])} ± {_fmt(a['std'][m])}" + (f" [{_fmt(ci[0])}, {_fmt(ci[1])}]" if ci else ""))
        steps = sorted({r["steps"] for r in a["runs"]})
        secs = np.mean([r["seconds"] for r in a["runs"]]) if a["runs"] else None
        dev = [r["final_dev_loss"] for r in a["runs"] if r.get("final_dev_loss") is not None]
        lines.append(f"| {a['name']} | " + " | ".join(cells) + f" | {','.join(map(str, steps))} | {_fmt(secs, 0)} | "
                     f"{_fmt(float(np.mean(dev)) if dev else None, 3)} |" + "".join(f" {_fact(a, k)} |" for k in facts))
    lines += ["", "Cells: mean ± standard deviation over seeds [95 % bootstrap interval of the pooled score]. "
              f"Seeds: {', '.join(str(r['seed']) for r in summary['arms'][0]['runs']) if summary['arms'] else '–'}.",
              "", "| arm | against | metric | difference | 95 % interval | verdict | paper expects |",
              "|---|---|---|---|---|---|---|"]
    for c in summary["comparisons"]:
        lines.append(f"| {c['arm']} | {c['reference']} | {c['metric']}{' (primary)' if c['primary'] else ''} | "
                     f"{c['delta']:+.2f} | [{c['ci95'][0]:+.2f}, {c['ci95'][1]:+.2f}] | {c['verdict']} | "
                     f"{c['expect'] or '–'} |")
    lines += render_ways(summary)
    lines += render_choices(summary)
    lines += ["", "Lower is better for WER, CER and unit error rate; higher for BLEU, chrF, CIDEr and unit accuracy. "
              "Plots: metrics with intervals, dev loss per arm.", "",
              f"![metrics]({summary['study']}_metrics.png)", "", f"![dev loss]({summary['study']}_dev_loss.png)", ""]
    return "\n".join(lines + render_curve(summary))


def plot_metrics(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [m for m in summary["metrics"] if any(m in a["mean"] for a in summary["arms"])]
    if not metrics:
        return
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.2 * len(metrics), 3.4), squeeze=False)
    names = [a["name"] for a in summary["arms"]]
    for ax, m in zip(axes[0], metrics):
        for i, a in enumerate(summary["arms"]):
            if m not in a["mean"]:
                continue
            y = a["pooled"].get(m, a["mean"][m])
            ci = a["ci95"].get(m, [y, y])
            ax.bar(i, y, color=f"C{i}", alpha=0.6)
            ax.errorbar(i, y, yerr=[[y - ci[0]], [ci[1] - y]], color="black", capsize=4)
            seeds = [r["metrics"][m] for r in a["runs"] if m in r["metrics"]]
            ax.plot([i] * len(seeds), seeds, "o", color="black", ms=3)
            note = _way_note(summary, a["name"], m)
            if note:
                ax.annotate(note, (i, ci[1]), ha="center", va="bottom", fontsize=6)
                ax.margins(y=0.3)  # room for the label above the interval
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
        arrow = "↓" if LOWER_IS_BETTER[base_metric(metric_key(m))] else "↑"
        ax.set_title(f"{m} {arrow}", fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(f"study {summary['study']}: pooled score, 95 % interval, seeds as dots", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_dev_loss(summary: dict, runs: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    for i, a in enumerate(summary["arms"]):
        curves = [r.get("dev_curve") or [] for r in runs if r["arm"] == a["name"]]
        steps = sorted(set.intersection(*(set(p["step"] for p in c) for c in curves))) if curves and all(curves) else []
        if not steps:
            continue
        ys = np.array([[next(p["dev_loss"] for p in c if p["step"] == s) for s in steps] for c in curves])
        ax.plot(steps, ys.mean(0), "-o", ms=3, color=f"C{i}", label=a["name"])
        ax.fill_between(steps, ys.min(0), ys.max(0), color=f"C{i}", alpha=0.2)
    _finish(fig, ax, path, "step", "dev loss (nats per target token)",
            f"study {summary['study']}: mean over seeds, range shaded")


def summarize_curve(cfg, runs: list[dict]) -> list[dict]:
    """The learning curve (`curve`; the end of training its last point): at each point, each arm's scores and
    the comparisons, computed as the summary's over the curve task's metrics. [] without a curve."""
    if not cfg.curve or not runs or any("curve" not in r for r in runs):
        return []
    metrics = [m for m in cfg.metrics if metric_task(m) == cfg.curve_task]
    primary = cfg.primary or metrics[0]
    points = []
    for i, fraction in enumerate([*sorted(cfg.curve), 1.0][: min(len(r["curve"]) for r in runs)]):
        at = [{**r, "metrics": r["curve"][i]["metrics"], "hyps": r["curve"][i]["hyps"]} for r in runs]
        s = summarize(cfg.name, cfg.finding, cfg.reference_arm, cfg.arms, at, metrics, primary, cfg.bootstrap,
                      cfg.reference_of)
        arms = {}
        for a in s["arms"]:
            mine = [r["curve"][i] for r in runs if r["arm"] == a["name"]]
            examples = [p["examples"] for p in mine if p.get("examples")]
            arms[a["name"]] = {"step": mine[0]["step"] if mine else None,
                               "examples": round(float(np.mean(examples))) if examples else None,
                               "seeds": [p["metrics"].get(primary) for p in mine],
                               **{k: a[k] for k in ("mean", "std", "ci95", "pooled")}}
        points.append({"fraction": fraction, "arms": arms, "comparisons": s["comparisons"]})
    return points


def render_curve(summary: dict) -> list[str]:
    """The learning-curve section of NAME.md: the primary metric per arm at each point, then each comparison."""
    curve, m = summary.get("curve") or [], summary["primary"]
    if not curve:
        return []
    lines = ["## Learning curve", "", f"`{m}` at each point of the training budget: pooled score [95 % interval] "
             "(examples trained on, mean over seeds).", "",
             "| arm | " + " | ".join(f"{p['fraction']:.0%} of the budget" for p in curve) + " |",
             "|---|" + "---|" * len(curve)]
    for name in curve[0]["arms"]:
        cells = []
        for p in curve:
            a = p["arms"][name]
            y, ci = a["pooled"].get(m), a["ci95"].get(m)
            cells.append(f"{_fmt(y)}" + (f" [{_fmt(ci[0])}, {_fmt(ci[1])}]" if ci else "") + f" ({a['examples'] or '–'})")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "| arm | against | " + " | ".join(f"{p['fraction']:.0%}" for p in curve) + " |",
              "|---|---|" + "---|" * len(curve)]
    pairs = dict.fromkeys((c["arm"], c["reference"]) for p in curve for c in p["comparisons"] if c["metric"] == m)
    for arm, ref in pairs:
        cells = []
        for p in curve:
            c = next((c for c in p["comparisons"] if (c["arm"], c["reference"], c["metric"]) == (arm, ref, m)), None)
            cells.append("–" if c is None else f"{c['delta']:+.2f} [{c['ci95'][0]:+.2f}, {c['ci95'][1]:+.2f}] {c['verdict']}")
        lines.append(f"| {arm} | {ref} | " + " | ".join(cells) + " |")
    return lines + ["", f"![learning curve]({summary['study']}_curve.png)", ""]


def plot_curve(summary: dict, path: Path) -> None:
    """The primary metric against examples trained on, per arm: pooled score with its interval, seeds as dots."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curve, m = summary.get("curve") or [], summary["primary"]
    if not curve:
        return
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for i, name in enumerate(curve[0]["arms"]):
        pts = [p["arms"][name] for p in curve if p["arms"][name]["pooled"].get(m) is not None]
        xs = [p["examples"] or p["step"] for p in pts]
        ys = [p["pooled"][m] for p in pts]
        lo = [y - p["ci95"].get(m, [y, y])[0] for y, p in zip(ys, pts)]
        hi = [p["ci95"].get(m, [y, y])[1] - y for y, p in zip(ys, pts)]
        ax.errorbar(xs, ys, yerr=[lo, hi], fmt="-o", ms=3, capsize=3, color=f"C{i}", label=name)
        for x, p in zip(xs, pts):
            seeds = [v for v in p["seeds"] if v is not None]
            ax.plot([x] * len(seeds), seeds, ".", color=f"C{i}", alpha=0.5)
    _finish(fig, ax, path, "examples trained on" if all(p["arms"][n]["examples"] for p in curve for n in p["arms"])
            else "step", m, f"study {summary['study']}: learning curve, 95 % interval, seeds as dots")


def _finish(fig, ax, path: Path, xlabel: str, ylabel: str, title: str) -> None:
    """Label, grid and legend a one-axis study plot, and write it to `path`."""
    import matplotlib.pyplot as plt

    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_summary(cfg, runs: list[dict]) -> dict:
    """NAME.json, NAME.md and the plots in the study's folder, copied to `cfg.docs`."""
    summary = summarize(cfg.name, cfg.finding, cfg.reference_arm, cfg.arms, runs, cfg.metrics,
                        cfg.primary or cfg.metrics[0], cfg.bootstrap, cfg.reference_of)
    summary["seeds"] = list(cfg.seeds)
    if cfg.way_reference:
        summary["way_comparisons"] = way_comparisons(cfg, runs)
    choices = choose_settings(cfg, summary["arms"])
    if choices:
        from dmlm.recipes.study import CHOICE_RULES

        summary["choices"] = choices
        summary["choose_rule"] = (CHOICE_RULES[cfg.choose] + (f" (gap above {cfg.listening_min} nats; if none "
                                  "listens, the largest gap)" if cfg.choose == "dev_loss_listening" else ""))
    curve = summarize_curve(cfg, runs)
    if curve:
        summary["curve"] = curve
    summary["base"] = {"prepare": runs[0]["config"]["prepare"] if runs else None,
                       "model": runs[0]["config"]["run"]["model"] if runs else None,
                       "train": runs[0]["config"]["run"]["train"] if runs else None,
                       "tasks": runs[0]["config"]["run"]["data"]["tasks"] if runs else None,
                       "machine": runs[0].get("machine") if runs else None}
    out = cfg.out_dir
    atomic_write_json(out / f"{cfg.name}.json", summary)
    atomic_write_text(out / f"{cfg.name}.md", render(summary, f"dmlm study configs/studies/{cfg.name}.yaml"))
    plot_metrics(summary, out / f"{cfg.name}_metrics.png")
    plot_dev_loss(summary, runs, out / f"{cfg.name}_dev_loss.png")
    plot_curve(summary, out / f"{cfg.name}_curve.png")
    if cfg.docs:
        docs = Path(cfg.docs)
        docs.mkdir(parents=True, exist_ok=True)
        for suffix in (".json", ".md", "_metrics.png", "_dev_loss.png", "_curve.png"):
            src = out / f"{cfg.name}{suffix}"
            if src.is_file():  # atomically: `write_studies_doc` reads these, never a half-copied one
                with atomic_file(docs / src.name) as tmp:
                    shutil.copyfile(src, tmp)
    return summary


FINDING_ORDER = ("loss", "init", "supervision", "supervision-pretrained", "codebook")


def write_studies_doc(docs: str | Path = "docs/studies", target: str | Path = "docs/studies.md") -> Path:
    """docs/studies.md from the committed summaries: each finding, its measured result and verdict.

    A `NAME.reading.md` beside a summary (written by whoever ran the study) is included as the reading.
    """
    docs = Path(docs)
    summaries = {p.stem: json.loads(p.read_text()) for p in sorted(docs.glob("*.json"))}
    order = [n for n in FINDING_ORDER if n in summaries] + sorted(set(summaries) - set(FINDING_ORDER))
    lines = ["# The paper's findings, measured", "",
             "Generated by `dmlm study report` from the summaries in [studies/](studies/); each study's page "
             "has its full table, every comparison and the plots. Method: " + METHOD, "",
             "| study | the paper's finding | verdict | primary metric: arm vs reference, difference [95 % interval] |",
             "|---|---|---|---|"]
    for n in order:
        s = summaries[n]
        prim = [c for c in s["comparisons"] if c["primary"]]
        prim += [{**c, "arm": c["way"] + (f" ({c['arm']})" if len(s["arms"]) > 1 else ""),
                  "reference": c["reference_way"]}  # a study of ways: way vs reference way
                 for c in s.get("way_comparisons") or [] if c["primary"]]
        cells = "; ".join(f"{c['arm']} vs {c['reference']}: {c['delta']:+.2f} [{c['ci95'][0]:+.2f}, {c['ci95'][1]:+.2f}]"
                          f" ({c['verdict']})" for c in prim) or "–"
        lines.append(f"| [{n}](studies/{n}.md) | {s['finding']} | **{s['verdict']}** | {s['primary']}: {cells} |")
    missing = [n for n in FINDING_ORDER if n not in summaries]
    if missing:
        lines += ["", "Not yet run to completion (no committed summary): " + ", ".join(f"`{n}`" for n in missing) + "."]
    for n in order:
        s = summaries[n]
        base = s.get("base") or {}
        lines += ["", f"## `{n}`", "", f"**Paper:** {s['finding']}", "", f"**Measured:** verdict *{s['verdict']}*. "
                  f"Seeds {s.get('seeds')}; corpus {((base.get('prepare') or {}).get('corpus'))}; "
                  f"{(base.get('train') or {}).get('steps')} steps per run. Table and plots: [studies/{n}.md](studies/{n}.md).", ""]
        reading = docs / f"{n}.reading.md"
        if reading.is_file():
            lines += [reading.read_text().strip(), ""]
    target = Path(target)
    atomic_write_text(target, "\n".join(lines).rstrip() + "\n")
    return target
