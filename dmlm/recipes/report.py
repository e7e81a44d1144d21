"""report.md of a demo run: one table row per task with its metrics, then examples per task.

Pure rendering: every number comes from `report.json` (built by `dmlm.recipes.demo`) and every example
from the evaluation's `eval/*.hyps.jsonl`, so the markdown can be re-rendered from a finished
run (`render_markdown(json.load(...), out)`).
"""

from __future__ import annotations

import json
from pathlib import Path


def _f(x, nd: int = 2) -> str:
    return "–" if x is None else f"{x:.{nd}f}" if isinstance(x, float) else str(x)


TASK_ROWS = [
    # key in report["tasks"], label, [(metric, header)], what "baseline" means
    ("asr", "ASR (mixture model)", [("wer", "WER %"), ("cer", "CER %"), ("wer_heldout_voice", "WER % held-out voice")]),
    ("asr_only", "ASR (ASR-only model)", [("wer", "WER %"), ("cer", "CER %"), ("wer_heldout_voice", "WER % held-out voice")]),
    ("s2tt", "S2TT en→es", [("bleu", "BLEU"), ("chrf", "chrF"), ("baseline_bleu", "baseline BLEU")]),
    ("i2t", "I2T captioning", [("cider", "CIDEr"), ("bleu", "BLEU"), ("baseline_cider", "baseline CIDEr")]),
    ("t2s", "T2S", [("unit_accuracy", "unit acc. %"), ("unit_error_rate", "unit error %"), ("wer", "Whisper WER %"),
                    ("greedy_wer", "Whisper WER %, greedy (no rerank)"),
                    ("original_wer", "Whisper WER % of the recordings"), ("asr_only_judge_wer", "ASR-only-model WER %"),
                    ("asr_only_judge_original_wer", "its WER % of the recordings")]),
    ("resynthesis", "Resynthesis (codebook + vocoder)", [("wer", "Whisper WER %"), ("original_wer", "Whisper WER % of the recordings"),
                                                         ("wer_vocoder_voice", "Whisper WER %, clips in the vocoder's voice"),
                                                         ("original_wer_vocoder_voice", "Whisper WER % of those recordings"),
                                                         ("asr_only_judge_wer", "ASR-only-model WER %"),
                                                         ("asr_only_judge_original_wer", "its WER % of the recordings")]),
]


def _all_runs(report: dict) -> str:
    a = report.get("all_invocations")
    if not a or a["invocations"] < 2:
        return ""
    return (f" Summed over the {a['invocations']} invocations on this folder (a re-run resumes): {a['minutes']:.1f} min "
            f"({', '.join(f'{k} {v:.0f} s' for k, v in a['stages_seconds'].items())}).")


def _rows(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()] if path.is_file() else []


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
        "| task | metric | value |", "|---|---|---|",
    ]
    for key, label, metrics in TASK_ROWS:
        if key not in tasks:
            continue
        vals = "; ".join(f"{h} {_f(tasks[key].get(k))}" for k, h in metrics if tasks[key].get(k) is not None)
        lines.append(f"| {label} | {', '.join(h for k, h in metrics if tasks[key].get(k) is not None)} | {vals} |")
    for key, rep in tasks.items():
        if key.endswith("_lm") or "_lm_" in key:
            lines.append(f"| {key} (unpaired) | perplexity | {_f(rep.get('perplexity'))} |")
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
        rows = [r for r in _rows(ev / f"{key}.hyps.jsonl") if not r.get("heldout_voice")][:n]
        if rows:
            lines += [f"## {title} examples", "", "| id | reference | hypothesis |", "|---|---|---|"]
            lines += [f"| {r['id']} | {r['ref']} | {r['hyp']} |" for r in rows]
            lines.append("")
    rows = _rows(ev / "i2t.hyps.jsonl")[:n]
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
