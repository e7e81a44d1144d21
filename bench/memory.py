"""Peak memory of a training step and of speech tokenization, and how their time grows.

Memory: each case runs in a fresh subprocess (`--child`), so high-water marks never mix. A
child imports everything and prepares its inputs, reads its current RSS, does the work, then
reads `getrusage(RUSAGE_SELF).ru_maxrss`. The headline is the **increment**, peak RSS minus
the RSS just before the work (torch's own ~300 MB would otherwise drown every difference);
absolute peaks, tracemalloc's Python-heap peak (which does not see torch or CTranslate2
buffers, hence not the headline) and, on GPU, `torch.cuda.max_memory_allocated` are recorded
beside it.

(a) `memory_train`: two optimizer steps (`bench.train_speed.train_step`: collate, forward,
    length-normalized loss, backward, clip, AdamW; the first step allocates AdamW's state) of
    the demo config at its per-rank `train.batch_tokens` (what one of the demo's training
    processes holds). Baseline: the same step with batch_tokens doubled, a scaling reference
    rather than a competing method: the ratio says how much of the step's memory is batch-bound.
    On GPU the headline is the CUDA peak (weights included).
(b) `memory_tokenize`: Whisper-base features (CTranslate2, int8) + k-means units
    (`Codebook.frames_to_units`, random centroids) of N espeak-ng clips from mini-world
    sentences, as `bench.tokenize_speed` does, loading the encoder included. Baseline: the same
    clips padded to 30 s (`WhisperCT2Features(pad_quantum=30.0)`), the usual way to run Whisper.

How time grows (in this process): tokenization time for corpus sizes (8, 16, 32, 64 clips,
own-length encoding) and the time of one demo training step for sequence lengths 64…512 at a
fixed token budget (batch = budget / length, no padding), where only the attention term
12·L·d·T grows. Written to `scaling.json` and plotted in `scaling.png` (two panels).

    python -m bench.memory [--clips N] [--threads N] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from dmlm.util.audio import SAMPLE_RATE

MiB = 2**20
SEQ_LENS = (64, 128, 256, 512)
CORPUS_SIZES = (8, 16, 32, 64)
SCALING_BUDGET = 2048  # tokens per training step in the sequence-length sweep


def rss_bytes() -> int:
    """Current resident set size."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def synth_clips(n: int, seed: int = 0) -> list[np.ndarray]:
    """`n` espeak-ng clips (16 kHz) of mini-world training sentences, random training voices."""
    import random

    from dmlm.data import miniworld
    from dmlm.data.synth import draw_voice, synthesize

    rng = random.Random(seed)
    return [synthesize(s.text, draw_voice(rng)) for s in miniworld.generate_splits(n, 0, 0, seed=1)["train"]]


def random_codebook(dim: int, model: str):
    from dmlm.tokenizers.speech import Codebook, CodebookSettings

    settings = CodebookSettings(model=model)  # default k and pooling; the centroids don't change the cost
    return Codebook(np.random.default_rng(0).standard_normal((settings.k, dim)).astype(np.float32), settings)


# -- children: one measurement each, in a fresh process -------------------------------------------

def child_train(batch_tokens: int) -> dict:
    import tracemalloc

    import torch

    from bench.train_speed import batches, demo_vocab_and_model, make_optimizer, synthetic_asr, train_step

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    vocab, model, _ = demo_vocab_and_model()
    model = model.to(device).train()
    opt = make_optimizer(model)
    data = batches(synthetic_asr(2048, vocab), batch_tokens, 2)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    before, peak_before = rss_bytes(), peak_rss_bytes()
    tracemalloc.start()
    for items in data:
        train_step(model, opt, items, vocab.pad, device)
    py_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    out = {"rss_before": before, "peak_rss_before": peak_before, "peak_rss": peak_rss_bytes(), "python_heap_peak": py_peak,
           "batch_tokens": batch_tokens, "tokens": [sum(len(r.ids) for r in items) for items in data],
           "device": str(device), "threads": torch.get_num_threads()}
    if device.type == "cuda":
        out["cuda_peak"] = torch.cuda.max_memory_allocated()
    return out


def child_tokenize(clips_file: str, pad_quantum: float, model: str) -> dict:
    import tracemalloc

    import torch

    from dmlm.tokenizers.features import WhisperCT2Features

    wavs = list(np.load(clips_file).values())
    before, peak_before = rss_bytes(), peak_rss_bytes()
    tracemalloc.start()
    feats = WhisperCT2Features(model, pad_quantum=pad_quantum)
    peak_after_load = peak_rss_bytes()  # loading the encoder alone, to tell it from the clips' share
    frames = feats(wavs)
    cb = random_codebook(frames[0].shape[1], model)
    units = [cb.frames_to_units(f) for f in frames]
    py_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return {"rss_before": before, "peak_rss_before": peak_before, "peak_rss_after_load": peak_after_load,
            "peak_rss": peak_rss_bytes(), "python_heap_peak": py_peak, "clips": len(wavs),
            "audio_seconds": sum(len(w) for w in wavs) / SAMPLE_RATE, "pad_quantum": pad_quantum,
            "units": int(sum(len(u) for u in units)), "threads": torch.get_num_threads()}


def measure(args: list[str], threads: int) -> dict:
    """Run one child (`python -m bench.memory --child …`) and return its JSON line."""
    cmd = [sys.executable, "-m", "bench.memory", "--threads", str(threads), *args]
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{p.stderr[-3000:]}")
    res = json.loads(p.stdout.strip().splitlines()[-1])
    res["increment"] = res["peak_rss"] - res["rss_before"]
    # ru_maxrss is a lifetime high-water mark: if the work never rose above an earlier peak, this is an upper bound
    res["increment_is_upper_bound"] = res["peak_rss"] <= res["peak_rss_before"]
    return res


# -- how time grows ------------------------------------------------------------------------------

def time_tokenization(wavs: list[np.ndarray], sizes: list[int], model: str) -> list[dict]:
    from dmlm.tokenizers.features import WhisperCT2Features

    feats = WhisperCT2Features(model)
    cb = random_codebook(feats(wavs[:4])[0].shape[1], model)  # also the warm-up
    rows = []
    for n in sizes:
        best = np.inf
        for _ in range(2):
            t = time.perf_counter()
            for f in feats(wavs[:n]):
                cb.frames_to_units(f)
            best = min(best, time.perf_counter() - t)
        audio = sum(len(w) for w in wavs[:n]) / SAMPLE_RATE
        rows.append({"clips": n, "audio_seconds": audio, "seconds": best, "x_real_time": audio / best})
    return rows


def time_train_steps(lengths: list[int], budget: int, steps: int = 3) -> list[dict]:
    import torch

    from bench.train_speed import demo_vocab_and_model, fixed_length_asr, make_optimizer, train_step

    vocab, model, _ = demo_vocab_and_model()
    model.train()
    opt = make_optimizer(model)
    cpu = torch.device("cpu")  # CPU: the demo's device; a GPU would time kernel launches at this size
    rows = []
    for T in lengths:
        items = fixed_length_asr(max(1, budget // T), T, vocab)
        train_step(model, opt, items, vocab.pad, cpu)  # warm-up at this shape
        times = []
        for _ in range(steps):
            t = time.perf_counter()
            train_step(model, opt, items, vocab.pad, cpu)
            times.append(time.perf_counter() - t)
        tokens = len(items) * T
        rows.append({"seq_len": T, "batch": len(items), "tokens": tokens, "step_seconds": float(np.median(times)),
                     "tokens_per_s": tokens / float(np.median(times))})
    return rows


def plot(tok: list[dict], train: list[dict], budget: int, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.5))
    x = [r["clips"] for r in tok]
    a.plot(x, [r["seconds"] for r in tok], "o-", label="measured")
    a.plot(x, [tok[0]["seconds"] * n / x[0] for n in x], "--", color="gray", lw=1, label="linear from smallest")
    a.set_xscale("log", base=2)
    a.set_xticks(x, [str(n) for n in x])
    a.set_yscale("log")
    a.set_xlabel("clips (~2.3 s each)")
    a.set_ylabel("seconds")
    a.set_title("speech tokenization (own-length Whisper + units)")
    a.legend()
    a.grid(alpha=0.3)
    x = [r["seq_len"] for r in train]
    b.plot(x, [r["step_seconds"] for r in train], "o-")
    for r in train:
        b.annotate(f"{r['tokens_per_s']:.0f} tok/s", (r["seq_len"], r["step_seconds"]), textcoords="offset points",
                   xytext=(0, 6), ha="center", fontsize=8)
    b.set_xscale("log", base=2)
    b.set_xticks(x, [str(n) for n in x])
    b.set_ylim(0, max(r["step_seconds"] for r in train) * 1.3)
    b.set_xlabel("sequence length (tokens)")
    b.set_ylabel("seconds per step")
    b.set_title(f"demo training step, {budget} tokens per batch")
    b.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


# -- main ----------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clips", type=int, default=32, help="clips tokenized in the memory measurement")
    p.add_argument("--model", default="whisper-base")
    p.add_argument("--threads", type=int, default=0, help="torch threads, here and in the children (0: torch's default)")
    p.add_argument("--quick", action="store_true", help="4 clips, smallest sizes only, no plot (CI smoke)")
    p.add_argument("--child", choices=("train", "tokenize"), help=argparse.SUPPRESS)
    p.add_argument("--batch-tokens", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--clips-file", help=argparse.SUPPRESS)
    p.add_argument("--pad-quantum", type=float, default=0.5, help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        res = child_train(args.batch_tokens) if args.child == "train" else \
            child_tokenize(args.clips_file, args.pad_quantum, args.model)
        print(json.dumps(res))
        return res

    from bench.common import RESULTS, machine, write_result
    from dmlm.recipes.demo import load_demo_config

    from bench.train_speed import DEMO_YAML

    threads = torch.get_num_threads()
    n_clips = 4 if args.quick else args.clips
    sizes = [CORPUS_SIZES[0]] if args.quick else list(CORPUS_SIZES)
    lengths = [SEQ_LENS[0]] if args.quick else list(SEQ_LENS)
    wavs = synth_clips(max(n_clips, max(sizes)))

    # (a) training step
    bt = load_demo_config(str(DEMO_YAML), []).run.train.batch_tokens
    tr, tr2 = measure(["--child", "train", "--batch-tokens", str(bt)], threads), \
        measure(["--child", "train", "--batch-tokens", str(2 * bt)], threads)
    key = "cuda_peak" if "cuda_peak" in tr else "increment"
    res_train = write_result(
        "memory_train", "peak memory of a demo training step" + (" (CUDA)" if key == "cuda_peak" else " (RSS increment)"),
        "MiB", tr[key] / MiB, tr2[key] / MiB, False, baseline_is=f"the same step at batch_tokens={2 * bt} (doubled)",
        measured=("torch.cuda.max_memory_allocated" if key == "cuda_peak" else "ru_maxrss - RSS before the steps"),
        dmlm_run=tr, baseline_run=tr2, quick=args.quick,
    )

    # (b) tokenization, the same clips own-length vs padded to 30 s
    with tempfile.TemporaryDirectory() as tmp:
        clips_file = str(Path(tmp) / "clips.npz")
        np.savez(clips_file, *wavs[:n_clips])
        common = ["--child", "tokenize", "--clips-file", clips_file, "--model", args.model]
        tk = measure([*common, "--pad-quantum", "0.5"], threads)
        tk30 = measure([*common, "--pad-quantum", "30"], threads)
    res_tok = write_result(
        "memory_tokenize", "peak memory of speech tokenization (RSS increment)", "MiB", tk["increment"] / MiB,
        tk30["increment"] / MiB, False, baseline_is="the same clips padded to 30 s (pad_quantum=30)",
        measured="ru_maxrss - RSS before loading the encoder", clips=n_clips,
        audio_seconds=round(tk["audio_seconds"], 1), dmlm_run=tk, baseline_run=tk30, quick=args.quick,
    )

    # how time grows
    tok_rows = time_tokenization(wavs, sizes, args.model)
    train_rows = time_train_steps(lengths, SCALING_BUDGET)
    scaling = {"tokenization": tok_rows, "train_step": train_rows, "train_token_budget": SCALING_BUDGET,
               "model": args.model, "threads": threads, "quick": args.quick, "machine": machine()}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "scaling.json").write_text(json.dumps(scaling, indent=1))
    if not args.quick:
        plot(tok_rows, train_rows, SCALING_BUDGET, RESULTS / "scaling.png")

    print(f"{'peak memory (MiB)':34s}{'dmlm':>10s}{'baseline':>10s}{'ratio':>8s}")
    for name, r in (("train step, RSS increment" if key == "increment" else "train step, CUDA peak", res_train),
                    ("tokenize, RSS increment", res_tok)):
        print(f"{name:34s}{r['dmlm']:10.1f}{r['baseline']:10.1f}{r['ratio']:8.2f}")
    print(f"  train: batch_tokens {bt} vs {2 * bt}; "
          f"absolute peak RSS {tr['peak_rss'] / MiB:.0f} vs {tr2['peak_rss'] / MiB:.0f} MiB")
    print(f"  tokenize: {n_clips} clips ({tk['audio_seconds']:.0f} s), own length vs padded to 30 s; "
          f"absolute peak RSS {tk['peak_rss'] / MiB:.0f} vs {tk30['peak_rss'] / MiB:.0f} MiB, "
          f"of which loading the encoder {(tk['peak_rss_after_load'] - tk['rss_before']) / MiB:.0f} MiB")
    print(f"\n{'clips':>6s}{'audio s':>9s}{'seconds':>9s}{'x RT':>8s}   "
          f"{'seq len':>8s}{'batch':>6s}{'step s':>8s}{'tok/s':>8s}")
    for i in range(max(len(tok_rows), len(train_rows))):
        a = tok_rows[i] if i < len(tok_rows) else None
        b = train_rows[i] if i < len(train_rows) else None
        left = (f"{a['clips']:6d}{a['audio_seconds']:9.1f}{a['seconds']:9.2f}{a['x_real_time']:8.0f}"
                if a else " " * 32)
        right = (f"   {b['seq_len']:8d}{b['batch']:6d}{b['step_seconds']:8.3f}{b['tokens_per_s']:8.0f}"
                 if b else "")
        print(left + right)
    print(f"({threads} threads; {res_tok['machine']})")
    return {"train": res_train, "tokenize": res_tok, "scaling": scaling}


if __name__ == "__main__":
    main()
