"""Training throughput (tokens/s) and model-FLOP utilization (MFU) of the real dmlm step.

What is timed is one optimizer step as `dmlm.training.train.train` runs it: `collate` (right padding),
`dmlm.training.loop.compute_loss` (forward + `multimodal_loss`, length-normalized, global counts),
backward, gradient clipping and an AdamW step with `dmlm.training.loop.prepare`'s parameter groups, under bf16
autocast on GPU and fp32 on CPU; on CPU the demo model is also timed under `train.precision: auto`
(bf16 autocast where the CPU has native bf16) against fp32: `train_precision.json`. Batches are ASR-shaped: random 25 Hz units for clips of
1.5–3.1 s (~58 units) plus 4–10 random text ids (mini-world's transcript length), rendered by
`dmlm.tasks.render` and bucketed under a token budget by `dmlm.training.data_order.bucket_batches`. Data
loading from token stores, accelerate and logging are not timed.

Model FLOPs per (non-pad) token, forward + backward (Kaplan et al. 2020; PaLM, app. B):

    F = 6·N + 6·d·V + 12·L·d·T_ctx

N: non-embedding parameters (all parameters minus the input and output embedding matrices;
norm weights included, they are negligible); 6·d·V: the output layer (d: hidden size, V: padded
vocabulary; counted even when tied to the input embeddings, the lookup itself is free);
12·L·d·T_ctx: attention scores and weighted values (L layers, T_ctx the sequence's own,
unpadded length, so padding is never counted as useful work; no causal halving, as in PaLM).
With grouped-query attention the scores still cost d per query, so the term is unchanged.

MFU = achieved model FLOP/s ÷ peak FLOP/s, where the peak is measured *in the same run* on the
same threads and device: the best of repeated square matmuls (fp32 2048³ on CPU, bf16 8192³ on
GPU), taken before and after the training steps (the larger of the two counts). Units: GFLOP/s
on CPU, TFLOP/s on GPU (the `unit` field says which).

Configs: `demo` (configs/demo.yaml's model: Llama, 4 layers, d=256; vocab = the demo's BPE size +
256 specials + k speech units, padded to 64) and `smollm2-135m` (SmolLM2-135M's shape: d=576,
30 layers, 9 heads, 3 kv heads, MLP 1536; vocab 49152 + 256 + 1000 padded), randomly
initialized so no weights are needed. On CPU the 135M model gets a small batch and few steps.

    python -m bench.train_speed [--config demo|smollm2-135m|all] [--steps N] [--batch-tokens N]
                                [--threads N] [--quick] [--precision-only]
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

DEMO_YAML = Path(__file__).resolve().parent.parent / "configs" / "demo.yaml"
LOSS = "length_normalized"
UNIT_RATE = 25.0  # speech units per second (the demo codebook: 50 Hz Whisper frames pooled by 2)
CLIP_S = (1.5, 3.1)  # clip durations, mean 2.3 s -> ~58 units
TEXT_IDS = (4, 10)  # transcript length in BPE ids (mini-world sentences)
CONFIGS = ("demo", "smollm2-135m")


@dataclass
class Bench:
    """A model to time and the batch budget it gets on this device."""

    name: str
    model: torch.nn.Module
    vocab: object  # dmlm.vocab.Vocab
    batch_tokens: int
    steps: int


def demo_vocab_and_model(seed: int = 0):
    """configs/demo.yaml's ModelConfig and a vocabulary of the demo's size, via `build_model`."""
    from dmlm.recipes.demo import load_demo_config
    from dmlm.modeling import build_model
    from dmlm.vocab import Vocab

    cfg = load_demo_config(str(DEMO_YAML), [])
    # the BPE is trained with bpe_vocab_size as its cap (mini-world's reaches ~860); the cap is the upper bound
    vocab = Vocab(text_size=cfg.run.data.bpe_vocab_size, speech_size=cfg.codebook.k)
    return vocab, build_model(cfg.run.model, vocab, seed=seed), cfg


def smollm2_vocab_and_model(seed: int = 0):
    """SmolLM2-135M's architecture, random init; `ModelConfig` cannot express its 3 kv heads."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    from dmlm.vocab import Vocab

    vocab = Vocab(text_size=49152, speech_size=1000)
    cfg = LlamaConfig(
        vocab_size=vocab.size, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
        num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192, rope_theta=100000.0,
        rms_norm_eps=1e-5, tie_word_embeddings=True, bos_token_id=vocab.bos, eos_token_id=vocab.eos,
        pad_token_id=vocab.pad,
    )
    torch.manual_seed(seed)
    return vocab, AutoModelForCausalLM.from_config(cfg)


def synthetic_asr(n: int, vocab, seed: int = 0) -> list:
    """`n` rendered ASR sequences from random units and text ids, shaped like the demo's data."""
    from dmlm.tasks import Sample, get_task, render

    rng = np.random.default_rng(seed)
    task = get_task("asr")
    out = []
    for i in range(n):
        n_units = round(UNIT_RATE * rng.uniform(*CLIP_S))
        s = Sample(id=f"synth-{i}", units=rng.integers(0, vocab.speech_size, n_units),
                   text_ids=rng.integers(0, vocab.text_size, int(rng.integers(TEXT_IDS[0], TEXT_IDS[1] + 1))).tolist())
        out.append(render(task, s, vocab))
    return out


def fixed_length_asr(n: int, length: int, vocab, seed: int = 0) -> list:
    """`n` rendered ASR sequences of exactly `length` tokens (8 text ids, the rest units)."""
    from dmlm.tasks import Sample, get_task, render

    rng = np.random.default_rng(seed)
    task, n_text = get_task("asr"), 8
    n_units = length - n_text - 9  # 9 = bos, task, lang, open, close | lang, open | close, eos
    if n_units < 1:
        raise ValueError(f"sequence length {length} leaves no room for speech units")
    return [render(task, Sample(id=f"fixed-{i}", units=rng.integers(0, vocab.speech_size, n_units),
                                text_ids=rng.integers(0, vocab.text_size, n_text).tolist()), vocab)
            for i in range(n)]


def batches(rendered: list, batch_tokens: int, n: int, seed: int = 0) -> list[list]:
    """`n` micro-batches in train.py's order: length-bucketed under a padded-token budget."""
    from dmlm.training.data_order import bucket_batches

    order = bucket_batches(np.array([len(r.ids) for r in rendered]), batch_tokens, seed, 0)
    if len(order) < n:
        raise ValueError(f"{len(rendered)} sequences make {len(order)} batches, {n} needed")
    return [[rendered[i] for i in idx] for idx in order[:n]]


def make_optimizer(model: torch.nn.Module, lr: float = 2e-3, weight_decay: float = 0.1) -> torch.optim.Optimizer:
    """train.py's AdamW: decay on matrices only, betas (0.9, 0.95)."""
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.95))


def train_step(model, opt, items: list, pad: int, device: torch.device, clip: float = 1.0, bf16: bool | None = None) -> float:
    """One optimizer step over one micro-batch, as dmlm.training.train.train does it; returns the loss.
    `bf16`: under bf16 autocast (None: on GPU only)."""
    from dmlm.training.loss import loss_counts, loss_weights
    from dmlm.training.data_order import collate
    from dmlm.training.loop import compute_loss

    b = {k: v.to(device) for k, v in collate(items, pad).items()}
    counts = loss_counts(LOSS, loss_weights(LOSS, b["attention_mask"], b["target"]), b["modality"][:, 1:])
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda" if bf16 is None else bf16):
        loss = compute_loss(model, b, LOSS, counts, None)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return float(loss.detach())  # a host sync, as train.py's logging does


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_peak(n: int, dtype: torch.dtype, device: torch.device, repeats: int, inner: int = 1) -> float:
    """Best FLOP/s of an (n, n) @ (n, n) matmul over `repeats` timings of `inner` products."""
    g = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(n, n, generator=g).to(device, dtype)
    b = torch.randn(n, n, generator=g).to(device, dtype)
    c = torch.mm(a, b)  # warm-up: allocations, kernel selection
    best = math.inf
    for _ in range(repeats):
        sync(device)
        t = time.perf_counter()
        for _ in range(inner):
            torch.mm(a, b, out=c)
        sync(device)
        best = min(best, (time.perf_counter() - t) / inner)
    return 2 * n**3 / best


def flop_terms(model) -> dict:
    """The per-token constants of F = 6·N + 6·d·V + 12·L·d·T_ctx (see the module docstring)."""
    emb = model.get_input_embeddings().weight
    head = model.get_output_embeddings().weight
    n_emb = emb.numel() + (head.numel() if head is not emb else 0)
    n_total = sum(p.numel() for p in model.parameters())  # tied weights counted once
    c = model.config
    return {"params": n_total, "N": n_total - n_emb, "d": c.hidden_size, "V": head.shape[0], "L": c.num_hidden_layers}


def batch_flops(terms: dict, items: list) -> float:
    """Model FLOPs of one training step over `items` (each sequence at its own length)."""
    lengths = np.array([len(r.ids) for r in items], dtype=np.float64)
    per_token = 6 * terms["N"] + 6 * terms["d"] * terms["V"]
    return per_token * lengths.sum() + 12 * terms["L"] * terms["d"] * (lengths**2).sum()


def build(name: str, device: torch.device, quick: bool, steps: int | None, batch_tokens: int | None) -> Bench:
    gpu = device.type == "cuda"
    if name == "demo":
        vocab, model, _ = demo_vocab_and_model()
        default_tokens, default_steps = 2000, (3 if quick else 20 if not gpu else 50)
    elif name == "smollm2-135m":
        vocab, model = smollm2_vocab_and_model()
        # ~0.8 GFLOP per token: a 2,000-token step would take about a minute on 2 CPU cores
        default_tokens, default_steps = (16384, 20) if gpu else (320, 3)
        default_steps = 3 if quick else default_steps
    else:
        raise ValueError(f"unknown config {name!r}; expected one of {CONFIGS}")
    return Bench(name, model.to(device).train(), vocab, batch_tokens or default_tokens, steps or default_steps)


def run_one(bench: Bench, device: torch.device, warmup: int, bf16: bool | None = None) -> dict:
    n_seq = max(2048, 2 * (bench.steps + warmup) * bench.batch_tokens // 60)  # ≥ one bucketing chunk
    data = batches(synthetic_asr(n_seq, bench.vocab), bench.batch_tokens, warmup + bench.steps)
    model, opt, terms = bench.model, make_optimizer(bench.model), flop_terms(bench.model)
    for items in data[:warmup]:  # first steps allocate AdamW state and warm the allocator
        train_step(model, opt, items, bench.vocab.pad, device, bf16=bf16)
    timed = data[warmup:]
    sync(device)
    t = time.perf_counter()
    for items in timed:
        train_step(model, opt, items, bench.vocab.pad, device, bf16=bf16)
    sync(device)
    elapsed = time.perf_counter() - t
    real = sum(len(r.ids) for items in timed for r in items)
    padded = sum(len(items) * max(len(r.ids) for r in items) for items in timed)
    flops = sum(batch_flops(terms, items) for items in timed)
    return {"config": bench.name, "elapsed_s": elapsed, "steps": len(timed), "step_s": elapsed / len(timed),
            "tokens_per_s": real / elapsed, "padded_tokens_per_s": padded / elapsed,
            "padding_fraction": 1 - real / padded, "model_flops_per_s": flops / elapsed,
            "flops_per_token": flops / real, "batch_tokens": bench.batch_tokens,
            "mean_batch_tokens": real / len(timed), "mean_sequences": sum(len(i) for i in timed) / len(timed),
            "mean_seq_len": real / sum(len(i) for i in timed), **{k: terms[k] for k in ("params", "N", "d", "V", "L")}}


def main(argv: list[str] | None = None) -> list[dict]:
    from bench.common import write_result

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", choices=(*CONFIGS, "all"), default="all")
    p.add_argument("--steps", type=int, default=None, help="timed steps (default: per config and device)")
    p.add_argument("--batch-tokens", type=int, default=None, help="token budget per step (default: per config and device)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--quick", action="store_true", help="demo config, 3 steps, tiny matmul (CI smoke)")
    p.add_argument("--precision-only", action="store_true",
                   help="only the demo model under precision auto against fp32 (train_precision.json)")
    args = p.parse_args(argv)
    if args.precision_only:
        if args.threads:
            torch.set_num_threads(args.threads)
        return [precision_on_cpu(args.quick, args.steps, args.batch_tokens, args.warmup)]

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    gpu = device.type == "cuda"
    names = ["demo"] if args.quick else list(CONFIGS) if args.config == "all" else [args.config]
    dtype = torch.bfloat16 if gpu else torch.float32
    n_mm = 512 if args.quick else 8192 if gpu else 2048

    def peak() -> float:
        return matmul_peak(n_mm, dtype, device, repeats=3 if args.quick else 5, inner=10 if gpu else 1)

    scale, unit = (1e12, "TFLOP/s") if gpu else (1e9, "GFLOP/s")

    peak_before = peak()
    runs = [run_one(build(n, device, args.quick, args.steps, args.batch_tokens), device, args.warmup) for n in names]
    peak_after = peak()
    best = max(peak_before, peak_after)

    results = []
    for r in runs:
        results.append(write_result(
            f"train_speed_{r['config']}", f"training model FLOP/s ({r['config']})", unit, r["model_flops_per_s"] / scale,
            best / scale, True, baseline_is=f"measured {str(dtype).removeprefix('torch.')} matmul peak ({n_mm}³)",
            ratio_is="MFU", device=str(device), threads=torch.get_num_threads(),
            matmul_peak_before=peak_before / scale, matmul_peak_after=peak_after / scale,
            precision="bf16 autocast" if gpu else "fp32", loss=LOSS, quick=args.quick, **r,
        ))
    print(f"{'config':14s}{'params':>9s}{'batch tok':>10s}{'step s':>8s}{'tok/s':>9s}{'F/tok':>8s}{unit:>10s}{'MFU':>7s}")
    for r in results:
        print(f"{r['config']:14s}{r['params'] / 1e6:8.1f}M{r['mean_batch_tokens']:10.0f}{r['step_s']:8.3f}"
              f"{r['tokens_per_s']:9.0f}{r['flops_per_token'] / 1e6:7.1f}M{r['dmlm']:10.2f}{r['ratio']:7.1%}")
    print(f"matmul peak {best / scale:.2f} {unit} (before {peak_before / scale:.2f}, after {peak_after / scale:.2f}; "
          f"{n_mm}³ {str(dtype).removeprefix('torch.')}, {torch.get_num_threads()} threads); {results[0]['machine']}")
    if not gpu:
        results.append(precision_on_cpu(args.quick, args.steps, args.batch_tokens, args.warmup))
    return results


def precision_on_cpu(quick: bool, steps: int | None, batch_tokens: int | None, warmup: int) -> dict:
    """The demo model's tokens/s under `train.precision: auto` (bf16 autocast where the CPU has native
    bf16, `dmlm.util.precision`) against fp32, each on a fresh model with the same batches, twice
    in alternation (the better of each): train_precision.json."""
    from bench.common import write_result
    from dmlm.util.precision import native_bf16

    cpu, auto_bf16 = torch.device("cpu"), native_bf16("cpu")
    best: dict[bool, dict] = {}
    for _ in range(1 if quick else 2):
        for bf16 in sorted({False, auto_bf16}):
            r = run_one(build("demo", cpu, quick, steps, batch_tokens), cpu, warmup, bf16=bf16)
            if bf16 not in best or r["tokens_per_s"] > best[bf16]["tokens_per_s"]:
                best[bf16] = r
    res = write_result("train_precision", "demo model training tokens/s, precision auto vs fp32", "tokens/s",
                       best[auto_bf16]["tokens_per_s"], best[False]["tokens_per_s"], True,
                       auto_is="bf16 autocast" if auto_bf16 else "fp32 (no native bf16 on this CPU)",
                       threads=torch.get_num_threads(), steps=best[False]["steps"], quick=quick)
    print(f"precision auto ({res['auto_is']}): {res['dmlm']:.0f} tokens/s, fp32 {res['baseline']:.0f}: {res['ratio']:.2f}x")
    return res


if __name__ == "__main__":
    main()
