"""Greedy decoding speed (generated tokens/s): dmlm's lean loop vs. transformers `generate`.

Both run `dmlm.decoding.generate` on the same model, batch and prompts, differing only in
`DecodingOptions.engine`, and must return identical ids. The model has the demo's shape
(4-layer d=256 Llama, 2,304-id vocabulary: 1,000 BPE + specials + 1,000 speech units), randomly
initialized. Two workloads, each a batch of `--batch` prompts:

- asr: ASR prompts over 53-83 random units (60-90 tokens), `--asr-new` text tokens each (a
  demo transcript's length): the prompt's forward pass dominates;
- t2s: T2S prompts over 8-24 random text ids (14-30 tokens), `--t2s-new` speech units each:
  the per-token steps dominate.

The close tags' output rows are zeroed so that their logit (0) never beats a random model's
favourite id: every row generates exactly the requested number of tokens in both engines (no
early stop), which the bench checks. Each engine is warmed up; then every repeat times both
engines back to back (alternating which goes first) on the full generation and on a
prompt-only run (one new token), so load from other processes hits both alike. Each
workload reports the repeat with the median ratio (its dmlm and baseline rates, measured
together), the median ratio of CPU time (this process's, less sensitive to other processes
on a shared machine), the median prompt-pass ratio, median ms per step, and every repeat's
seconds. The
headline (top-level `dmlm`, `baseline`, `ratio`) is the asr workload, the decoding that
evaluation and the demo run most; `workloads` has both.

    python -m bench.decode_speed [--batch 32] [--asr-new 16] [--t2s-new 200] [--repeats 7] [--threads 1] [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import time

ENGINES = ("transformers", "dmlm")


def _prompts(task: str, n: int, vocab, seed: int = 0) -> list[list[int]]:
    import numpy as np

    from dmlm.tasks import Sample, get_task

    rng = np.random.default_rng(seed)
    if task == "asr":
        units = [rng.integers(0, vocab.speech_size, rng.integers(53, 84)) for _ in range(n)]
        return [get_task("asr").prompt(Sample(id=str(i), units=u), vocab) for i, u in enumerate(units)]
    text = [[int(x) for x in rng.integers(3, vocab.text_size, rng.integers(8, 25))] for _ in range(n)]
    return [get_task("t2s").prompt(Sample(id=str(i), text_ids=t, src_lang="en", tgt_lang="en"), vocab)
            for i, t in enumerate(text)]


def measure(model, vocab, prompts: list[list[int]], target: str, new: int, repeats: int, forced: bool) -> dict:
    """Time both engines on one workload, interleaved; check identical ids (and, if `forced`, full length)."""
    from dmlm.decoding import DecodingOptions, generate

    def run(engine: str, n: int) -> tuple[float, float, list[list[int]]]:
        """(wall seconds, this process's CPU seconds, ids)."""
        opts = DecodingOptions(engine=engine, max_new_tokens=n, batch_size=len(prompts))
        t, c = time.perf_counter(), time.process_time()
        out = generate(model, prompts, vocab, target, opts)
        return time.perf_counter() - t, time.process_time() - c, out

    outs = {e: run(e, new)[2] for e in ENGINES}  # warm-up
    if outs["dmlm"] != outs["transformers"]:
        raise AssertionError(f"dmlm's greedy ids differ from transformers generate's ({target} workload)")
    tokens = sum(len(o) for o in outs["dmlm"])
    if forced and tokens != new * len(prompts):
        raise AssertionError(f"a row stopped early ({tokens} of {new * len(prompts)} tokens): "
                             "the engines' work must not differ")
    full: dict[str, list[float]] = {e: [] for e in ENGINES}  # wall seconds per repeat
    cpu: dict[str, list[float]] = {e: [] for e in ENGINES}
    prompt: dict[str, list[float]] = {e: [] for e in ENGINES}
    for r in range(repeats):
        for e in ENGINES if r % 2 == 0 else ENGINES[::-1]:
            wall, used, _ = run(e, new)
            full[e].append(wall)
            cpu[e].append(used)
            prompt[e].append(run(e, 1)[0])
    ratios = [b / d for d, b in zip(full["dmlm"], full["transformers"])]
    mid = ratios.index(statistics.median_low(ratios))  # the repeat with the median ratio
    steps = min(max(len(o) for o in outs["dmlm"]) + (0 if forced else 1), new)  # + the close tag's step
    return {
        "dmlm": tokens / full["dmlm"][mid], "baseline": tokens / full["transformers"][mid], "ratio": ratios[mid],
        "batch": len(prompts), "prompt_tokens": [min(map(len, prompts)), max(map(len, prompts))],
        "new_tokens_per_row": new, "generated_tokens": tokens, "identical_ids": True,
        "seconds": {e: [round(x, 4) for x in full[e]] for e in ENGINES},
        "cpu_time_ratio": statistics.median(b / d for d, b in zip(cpu["dmlm"], cpu["transformers"])),
        "prompt_forward_seconds": {e: [round(x, 4) for x in prompt[e]] for e in ENGINES},
        "prompt_forward_ratio": statistics.median(b / d for d, b in zip(prompt["dmlm"], prompt["transformers"])),
        "step_ms": {e: round(statistics.median(1000 * (f - p) / max(steps - 1, 1)
                                               for f, p in zip(full[e], prompt[e])), 2) for e in ENGINES},
    }


def main(argv: list[str] | None = None) -> dict:
    import torch

    from bench.common import write_result
    from dmlm.model import ModelConfig, build_model, load_checkpoint
    from dmlm.vocab import Vocab

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--asr-new", type=int, default=16, help="text tokens generated per ASR row")
    p.add_argument("--t2s-new", type=int, default=200, help="speech units generated per T2S row")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (the project's machine has 2, shared)")
    p.add_argument("--checkpoint", default=None,
                   help="a trained dmlm checkpoint instead of the random model: rows stop at their own close tag, "
                        "the token counts are then only caps")
    p.add_argument("--quick", action="store_true", help="batch 4, 4 new tokens, 1 repeat (CI smoke)")
    args = p.parse_args(argv)
    batch, asr_new, t2s_new, repeats = (4, 4, 4, 1) if args.quick else (args.batch, args.asr_new, args.t2s_new,
                                                                         args.repeats)
    torch.set_num_threads(args.threads)

    if args.checkpoint:
        ck = load_checkpoint(args.checkpoint)
        model, vocab, name = ck.model, ck.vocab, str(args.checkpoint)
    else:
        vocab = Vocab(text_size=1000, speech_size=1000)
        model = build_model(ModelConfig(), vocab, seed=0).eval()
        with torch.no_grad():
            for modality in ("text", "speech"):
                model.get_output_embeddings().weight[vocab.close(modality)] = 0
        name = "llama 4x256, vocab 2304, random init"
    forced = not args.checkpoint
    work = {
        "asr": measure(model, vocab, _prompts("asr", batch, vocab), "text", asr_new, repeats, forced),
        "t2s": measure(model, vocab, _prompts("t2s", batch, vocab), "speech", t2s_new, repeats, forced),
    }
    head = work["asr"]
    res = write_result(
        "decode_speed", "greedy decoding speed, asr workload (long prompt, short output)", "generated tokens/s",
        head["dmlm"], head["baseline"], True,
        baseline_name="transformers generate (greedy), same model, batch and prompts",
        headline="asr", workloads=work, threads=args.threads, model=name, repeats=repeats,
        timing="per workload, the repeat with the median dmlm/baseline ratio (interleaved repeats, one warm-up each)",
    )
    print(f"{'workload':10s}{'engine':14s}{'tokens/s':>10s}{'ms/step':>10s}{'ratio':>8s}{'CPU time':>10s}"
          f"{'prompt pass':>13s}")
    for w, r in work.items():
        for e, rate in (("dmlm", r["dmlm"]), ("transformers", r["baseline"])):
            ratios = (r["ratio"], r["cpu_time_ratio"], r["prompt_forward_ratio"]) if e == "dmlm" else ()
            cols = "".join(f"{x:{n}.2f}x" for x, n in zip(ratios, (7, 9, 12)))
            print(f"{w:10s}{e:14s}{rate:10.0f}{r['step_ms'][e]:10.2f}{cols}")
    for w, r in work.items():
        print(f"{w}: {r['batch']} prompts of {r['prompt_tokens'][0]}-{r['prompt_tokens'][1]} tokens, "
              f"{r['generated_tokens'] / r['batch']:.1f} new tokens each, identical ids")
    print(f"{args.threads} thread(s), {repeats} repeats; {res['machine']}")
    return res


if __name__ == "__main__":
    main()
