"""How each stage's wall time grows with its work, so that a bigger run can be predicted.

- prepare: `dmlm prepare` of mini-world with the demo's voice mix (half the clips in the neural voice,
  images drawn), against the number of utterances;
- tokenize: the same corpora through the demo's codebook (Whisper-base, CTranslate2; fitted once,
  untimed, on the smallest corpus), against the number of utterances;
- train: the demo's model and batch trained as `make demo` trains it (torchrun, 2 ranks on CPU),
  against optimizer steps, start-up included.

Each stage is fitted by least squares, seconds = a + b · work: `a` is the fixed cost (start-up, model
building), `b` the cost per utterance or per step. The result's `ratio` checks linearity: the largest
run's measured time over the time the fit through the other points predicts for it (1.0 is linear,
above 1 grows faster than linear). Writes `bench/results/stage_scaling.json` (the `ratio` of the
stage with the worst linearity at the top level; each stage's rows and fit under `stages`) and
`bench/results/stage_scaling.png` (one panel per stage, points and fit).

    python -m bench.stage_scaling [--sizes 1000,2000,4000,8000] [--steps 50,100,200,400] [--quick]

Run it alone: another busy process on a 2-core machine changes every time it measures.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import RESULTS, machine, write_result


def fit_line(work: list[float], seconds: list[float]) -> dict:
    """Least-squares seconds = a + b·work, and the linearity check of the largest point."""
    x, y = np.asarray(work, float), np.asarray(seconds, float)
    b, a = np.polyfit(x, y, 1)
    order = np.argsort(x)
    rest, last = order[:-1], order[-1]
    if len(rest) >= 2:
        b_r, a_r = np.polyfit(x[rest], y[rest], 1)
    else:  # one other point: proportional through it
        a_r, b_r = 0.0, y[rest[0]] / x[rest[0]]
    predicted = a_r + b_r * x[last]
    return {"fixed_s": float(a), "per_unit_s": float(b), "largest": float(x[last]), "largest_s": float(y[last]),
            "predicted_largest_s": float(predicted), "linearity": float(y[last] / predicted)}


def _demo_config(quick: bool, out: Path, n_train: int):
    from dmlm.recipes.demo import load_demo_config

    held = 5 if quick else 20  # dev and test clips: a constant beside the training clips measured
    over = [f"out={out}", f"prepare.n_train={n_train}", f"prepare.n_dev={held}", f"prepare.n_test={held}",
            "prepare.n_unpaired=0", "prepare.neural_extra=0",
            # the paired tasks in the demo's shares (its LM tasks read unpaired data this corpus has not)
            "run.data.tasks=[asr, 's2tt:es', t2s, i2t]", "run.data.weights=[0.35, 0.12, 0.3, 0.08]"]
    if quick:  # seconds, not minutes: espeak-ng voices, log-mel units, a tiny model in this process
        over += ["prepare.neural_share=0", "codebook.backend=mel", "codebook.k=16", "codebook.pooling=1",
                 "codebook_fit_utts=20", "image_codebook.k=16", "image_codebook_fit_images=20", "processes=1",
                 "run.data.tasks=[asr, i2t]", "run.data.weights=[1, 1]", "run.data.speakers={}",
                 "run.data.bpe_vocab_size=300",
                 "run.model.hidden_size=32", "run.model.layers=1", "run.model.heads=2",
                 "run.model.intermediate_size=64", "run.train.batch_tokens=800", "run.train.warmup_steps=1"]
    return load_demo_config(str(Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"), over)


def measure(sizes: list[int], steps: list[int], quick: bool, work: Path) -> dict:
    from dmlm.recipes.run_folder import RunFolder
    from dmlm.recipes.stages import fit_codebooks, point_run_at, prepare_data, train_model
    from dmlm.tokenizers.tokenize import tokenize_images, tokenize_manifest

    rows: dict[str, list[dict]] = {"prepare": [], "tokenize": [], "train": []}
    cb = icb = None
    corpora = {}
    for n in sorted(sizes):
        cfg = _demo_config(quick, work / f"corpus{n}", n)
        folder = RunFolder(cfg.out)
        t = time.perf_counter()
        manifests = prepare_data(cfg.prepare, folder.data)
        rows["prepare"].append({"utterances": n, "seconds": time.perf_counter() - t})
        if cb is None:  # one codebook for every size, fitted on the smallest corpus (not timed)
            cb, icb = fit_codebooks(manifests["train"], cfg.codebook, cfg.codebook_fit_utts, work / "codebook.safetensors",
                                    cfg.image_codebook, cfg.image_codebook_fit_images, work / "image_codebook.safetensors")
        t = time.perf_counter()
        tokenize_manifest(cb, manifests["train"], folder.units)
        rows["tokenize"].append({"utterances": n, "seconds": time.perf_counter() - t})
        for split in ("dev", "test"):  # the training run below needs its dev store (untimed)
            tokenize_manifest(cb, manifests[split], folder.units)
        for split in ("train", "dev", "test"):
            tokenize_images(icb, manifests[split], folder.units)
        corpora[n] = (cfg, manifests)
        print(f"{n} utterances: prepare {rows['prepare'][-1]['seconds']:.1f} s, "
              f"tokenize {rows['tokenize'][-1]['seconds']:.1f} s", flush=True)
    cfg, manifests = corpora[min(corpora)]
    for s in sorted(steps):
        run = cfg.run
        point_run_at(run, manifests, RunFolder(cfg.out).units, work / "codebook.safetensors",
                     work / "image_codebook.safetensors", work / f"model{s}")
        run.data.unpaired = []
        run.train.steps = s
        run.train.eval_every = run.train.save_every = s  # one dev pass and one save, as at a run's end
        t = time.perf_counter()
        train_model(run, work / f"train{s}.yaml", cfg.processes, resume=False)
        rows["train"].append({"steps": s, "seconds": time.perf_counter() - t})
        print(f"{s} steps: train {rows['train'][-1]['seconds']:.1f} s", flush=True)
    return rows


def plot(stages: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(stages), figsize=(4.2 * len(stages), 3.6))
    for ax, (name, st) in zip(np.atleast_1d(axes), stages.items()):
        key = "steps" if name == "train" else "utterances"
        x = [r[key] for r in st["rows"]]
        y = [r["seconds"] for r in st["rows"]]
        f = st["fit"]
        xs = np.linspace(0, max(x) * 1.05, 50)
        ax.plot(x, y, "o", label="measured")
        ax.plot(xs, f["fixed_s"] + f["per_unit_s"] * xs, "-", alpha=0.7,
                label=f"{f['fixed_s']:.0f} s + {f['per_unit_s']:.3g} s/{key[:-1]}")
        ax.set_xlabel(key)
        ax.set_ylabel("wall seconds")
        ax.set_title(f"{name} (largest: {f['linearity']:.2f}x the line)")
        ax.set_xlim(left=0)
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="1000,2000,4000,8000", help="corpus sizes (training utterances)")
    ap.add_argument("--steps", default="50,100,200,400", help="training runs' optimizer steps")
    ap.add_argument("--quick", action="store_true", help="seconds-long smoke run (tests): tiny sizes and model")
    args = ap.parse_args(argv)
    sizes = [40, 60, 80] if args.quick else [int(x) for x in args.sizes.split(",")]
    steps = [2, 4, 6] if args.quick else [int(x) for x in args.steps.split(",")]
    if len(sizes) < 2 or len(steps) < 2:
        raise SystemExit("need at least two sizes and two step counts to fit a line")
    with tempfile.TemporaryDirectory(prefix="dmlm-scaling-") as tmp:
        rows = measure(sizes, steps, args.quick, Path(tmp))
    stages = {}
    for name, rs in rows.items():
        key = "steps" if name == "train" else "utterances"
        stages[name] = {"rows": rs, "fit": fit_line([r[key] for r in rs], [r["seconds"] for r in rs])}
    worst = max(stages, key=lambda k: stages[k]["fit"]["linearity"])
    f = stages[worst]["fit"]
    res = write_result("stage_scaling", f"{worst}: largest run's wall time vs. the line through the others",
                       "s", f["largest_s"], f["predicted_largest_s"], higher_is_better=False,
                       stages=stages, quick=args.quick)
    plot(stages, RESULTS / "stage_scaling.png")
    for name, st in stages.items():
        g = st["fit"]
        print(f"{name}: {g['fixed_s']:.1f} s + {g['per_unit_s']:.4g} s per "
              f"{'step' if name == 'train' else 'utterance'}; largest {g['linearity']:.2f}x the line")
    print(json.dumps({k: res[k] for k in ("metric", "ratio")}), "|", machine())
    return res


if __name__ == "__main__":
    main()
