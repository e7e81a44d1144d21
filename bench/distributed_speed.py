"""Training throughput of one CPU process with 2 threads against 2 single-thread ranks (DDP) and 2
single-thread FSDP2 ranks, on the demo model, with the same global batch (2 micro-batches per step).

What is timed is dmlm's step under each: `dmlm.training.loop.compute_loss` (forward + the
length-normalized loss with global counts), backward inside `dmlm.training.distributed.no_sync`
for the first micro-batch, `clip_grad_norm` and AdamW; the model is wrapped as `dmlm train` wraps
it (`Accelerator` + `prepare_model` for DDP, `shard` for FSDP2, gloo on the loopback interface).
Batches are bench.train_speed's synthetic ASR batches (demo model: Llama, 4 layers, d=256). The
one-process run accumulates both micro-batches; rank r of the 2-rank runs takes micro-batch r.
Each mode runs in its own process(es) (torchrun), 2 warm-up steps then the timed ones.

    python -m bench.distributed_speed [--steps N] [--batch-tokens N] [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

MODES = {"1proc-2threads": (1, 2, "ddp"), "2ranks-ddp": (2, 1, "ddp"), "2ranks-fsdp2": (2, 1, "fsdp")}
WARMUP = 2


def worker(parallel: str, steps: int, batch_tokens: int, out: Path) -> None:
    """One rank (or the one process): time `steps` optimizer steps of 2 global micro-batches."""
    from bench.train_speed import LOSS, batches, demo_vocab_and_model, make_optimizer, synthetic_asr
    from dmlm.training.config import RunConfig
    from dmlm.training.data_order import collate
    from dmlm.training.distributed import clip_grad_norm, no_sync, prepare_model, shard
    from dmlm.training.loop import accelerator, compute_loss
    from dmlm.training.loss import loss_counts, loss_weights

    cfg = RunConfig()
    cfg.train.parallel, cfg.train.precision = parallel, "fp32"
    acc = accelerator(cfg)
    vocab, model, _ = demo_vocab_and_model()
    model = shard(cfg, acc, model.train())
    opt = make_optimizer(model)
    model, opt = prepare_model(acc, model, opt)
    data = batches(synthetic_asr(max(512, 2 * (WARMUP + steps) * batch_tokens // 40), vocab), batch_tokens,
                   2 * (WARMUP + steps))
    world, rank = acc.num_processes, acc.process_index
    tokens, t0 = 0, 0.0
    lambdas = torch.ones(3)
    for step in range(WARMUP + steps):
        if step == WARMUP:
            acc.wait_for_everyone()
            t0 = time.perf_counter()
        micro = [collate(items, vocab.pad) for items in data[2 * step: 2 * step + 2][rank::world]]
        counts = sum(loss_counts(LOSS, loss_weights(LOSS, b["attention_mask"], b["target"]), b["modality"][:, 1:])
                     for b in micro)
        counts = acc.reduce(counts, reduction="sum")
        for i, b in enumerate(micro):
            ctx = no_sync(acc, model) if i < len(micro) - 1 else contextlib.nullcontext()
            with ctx:
                acc.backward(compute_loss(model, b, LOSS, counts, lambdas) * world)
        clip_grad_norm(acc, model, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step >= WARMUP:
            tokens += sum(len(x.ids) for items in data[2 * step: 2 * step + 2] for x in items)  # not padding
    acc.wait_for_everyone()
    seconds = time.perf_counter() - t0
    if acc.is_main_process:
        out.write_text(json.dumps({"tokens_per_s": tokens / seconds, "seconds": seconds, "tokens": tokens}))


def run_mode(name: str, steps: int, batch_tokens: int) -> dict:
    processes, threads, parallel = MODES[name]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "GLOO_SOCKET_IFNAME": "lo"}
        args = ["--worker", parallel, "--steps", str(steps), "--batch-tokens", str(batch_tokens), "--out", str(out)]
        if processes == 1:
            cmd = [sys.executable, "-m", "bench.distributed_speed", *args]
        else:
            cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={processes}",
                   "--master_addr=127.0.0.1", "--master_port=29671", "-m", "bench.distributed_speed", *args]
        subprocess.run(cmd, env=env, check=True, cwd=Path(__file__).resolve().parents[1])
        return json.loads(out.read_text())


def main(argv: list[str] | None = None) -> dict:
    from bench.common import write_result

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=10)  # ≤ 3 min on the 2-core machine under load
    p.add_argument("--batch-tokens", type=int, default=2000)
    p.add_argument("--quick", action="store_true", help="1 step of 400 tokens (a check that it runs, not a measurement)")
    p.add_argument("--worker", choices=["ddp", "fsdp"], help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.batch_tokens = 1, 400
    if args.worker:
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
        worker(args.worker, args.steps, args.batch_tokens, args.out)
        return {}
    r = {name: run_mode(name, args.steps, args.batch_tokens) for name in MODES}
    base = r["1proc-2threads"]["tokens_per_s"]
    res = write_result("distributed_speed", "training tokens/s, 2 ranks x 1 thread (DDP) vs 1 process x 2 threads",
                       "tokens/s", r["2ranks-ddp"]["tokens_per_s"], base, True,
                       fsdp2_tokens_per_s=r["2ranks-fsdp2"]["tokens_per_s"],
                       fsdp2_ratio=r["2ranks-fsdp2"]["tokens_per_s"] / base,
                       modes=r, steps=args.steps, batch_tokens=args.batch_tokens)
    print(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main()
