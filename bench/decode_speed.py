"""Greedy decoding speed (generated tokens/s): dmlm's lean loop vs. transformers `generate`.

All engines run `dmlm.decoding.generate` on the same fp32 model, batch and prompts, differing
only in `DecodingOptions`: `transformers` (`generate`, the baseline), `dmlm` (compute_type
float32: must return identical ids) and `dmlm-bf16` (compute_type bfloat16: matmuls and the
cache in bf16; the share of its ids equal to `generate`'s is reported, not required). A
fourth engine, `generate` on a copy of the model cast to bf16, is the fair speed reference
for `dmlm-bf16` (`ratio_vs_generate_bf16`). The model has the demo's shape
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
prompt-only run (one new token), so load from other processes hits all alike. Each
workload and dmlm engine reports the repeat with the median ratio (its dmlm and baseline
rates, measured together), the median ratio of CPU time (this process's, less sensitive to
other processes on a shared machine), the median prompt-pass ratio, median ms per step, and
every repeat's seconds. The headline (top-level `dmlm`, `baseline`, `ratio`) is the exact
engine (float32) on the asr workload, the decoding that evaluation and the demo run most;
`workloads` has both workloads and both engines.

    python -m bench.decode_speed [--batch 32] [--asr-new 16] [--t2s-new 200] [--repeats 7] [--threads 1] [--quick]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

ENGINES = {  # name -> DecodingOptions fields
    "transformers": {"engine": "transformers"},
    "dmlm": {"engine": "dmlm", "compute_type": "float32"},
    "dmlm-bf16": {"engine": "dmlm", "compute_type": "bfloat16"},
    "transformers-bf16": {"engine": "transformers"},  # `generate` on a bf16 copy of the model
}
FAST = ("dmlm", "dmlm-bf16")


def _prompts(task: str, n: int, vocab, seed: int = 0) -> list[list[int]]:
    import numpy as np

    from dmlm.tasks import Sample, get_task

    rng = np.random.default_rng(seed)
    t = get_task(task)
    if t.source == "speech":  # speech in (ASR): 53-84 random units, ~2-3 s
        units = [rng.integers(0, vocab.speech_size, rng.integers(53, 84)) for _ in range(n)]
        return [t.prompt(Sample(id=str(i), units=u), vocab) for i, u in enumerate(units)]
    text = [[int(x) for x in rng.integers(3, vocab.text_size, rng.integers(8, 25))] for _ in range(n)]
    return [t.prompt(Sample(id=str(i), text_ids=x, src_lang="en", tgt_lang="en"), vocab) for i, x in enumerate(text)]


def _agreement(ids: list[list[int]], ref: list[list[int]]) -> dict:
    """How far `ids` follow the reference: rows identical, and positions equal before each row's first difference."""
    same = sum(a == b for a, b in zip(ids, ref))
    prefix = 0
    for a, b in zip(ids, ref):
        prefix += next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    return {"rows_identical": same / len(ref), "tokens_before_first_difference": prefix / sum(map(len, ref))}


def measure(model, vocab, prompts: list[list[int]], target: str, new: int, repeats: int, forced: bool) -> dict:
    """Time every engine on one workload, interleaved; check the float32 engine's ids are `generate`'s
    (and, if `forced`, full length); report how far the bf16 engine's follow them."""
    from dmlm.decoding import DecodingOptions, generate

    import torch

    bf16_model = copy.deepcopy(model).to(torch.bfloat16)

    def run(engine: str, n: int) -> tuple[float, float, list[list[int]]]:
        """(wall seconds, this process's CPU seconds, ids)."""
        opts = DecodingOptions(max_new_tokens=n, batch_size=len(prompts), **ENGINES[engine])
        t, c = time.perf_counter(), time.process_time()
        out = generate(bf16_model if engine == "transformers-bf16" else model, prompts, vocab, target, opts)
        return time.perf_counter() - t, time.process_time() - c, out

    outs = {e: run(e, new)[2] for e in ENGINES}  # warm-up
    if outs["dmlm"] != outs["transformers"]:
        raise AssertionError(f"dmlm's greedy ids differ from transformers generate's ({target} workload)")
    tokens = {e: sum(len(o) for o in outs[e]) for e in ENGINES}
    if forced and any(n != new * len(prompts) for n in tokens.values()):
        raise AssertionError(f"a row stopped early ({tokens} of {new * len(prompts)} tokens): "
                             "the engines' work must not differ")
    full: dict[str, list[float]] = {e: [] for e in ENGINES}  # wall seconds per repeat
    cpu: dict[str, list[float]] = {e: [] for e in ENGINES}
    prompt: dict[str, list[float]] = {e: [] for e in ENGINES}
    order = list(ENGINES)
    for r in range(repeats):
        for e in order[r % len(order):] + order[: r % len(order)]:  # each engine leads in turn
            wall, used, _ = run(e, new)
            full[e].append(wall)
            cpu[e].append(used)
            prompt[e].append(run(e, 1)[0])
    steps = min(max(len(o) for o in outs["dmlm"]) + (0 if forced else 1), new)  # + the close tag's step

    def step_ms(e: str) -> float:
        return round(statistics.median(1000 * (f - p) / max(steps - 1, 1) for f, p in zip(full[e], prompt[e])), 2)

    base = full["transformers"]
    engines = {}
    for e in FAST:
        ratios = [b * tokens[e] / tokens["transformers"] / d for d, b in zip(full[e], base)]
        mid = ratios.index(statistics.median_low(ratios))  # the repeat with the median ratio
        engines[e] = {
            "options": ENGINES[e], "tokens_per_s": tokens[e] / full[e][mid], "ratio": ratios[mid],
            "baseline_tokens_per_s": tokens["transformers"] / base[mid],
            "cpu_time_ratio": statistics.median(b / d for d, b in zip(cpu[e], cpu["transformers"])),
            "prompt_forward_ratio": statistics.median(b / d for d, b in zip(prompt[e], prompt["transformers"])),
            "step_ms": step_ms(e), "agreement_with_generate": _agreement(outs[e], outs["transformers"]),
        }
    # the bf16 engine against `generate` run in bf16 as well (the whole model cast: a cruder
    # bf16, but the fair speed reference for it)
    low = [b * tokens["dmlm-bf16"] / tokens["transformers-bf16"] / d
           for d, b in zip(full["dmlm-bf16"], full["transformers-bf16"])]
    engines["dmlm-bf16"]["ratio_vs_generate_bf16"] = statistics.median(low)
    engines["dmlm-bf16"]["generate_bf16_tokens_per_s"] = tokens["transformers-bf16"] / statistics.median(
        full["transformers-bf16"])
    return {
        "dmlm": engines["dmlm"]["tokens_per_s"], "baseline": engines["dmlm"]["baseline_tokens_per_s"],
        "ratio": engines["dmlm"]["ratio"], "engines": engines,
        "batch": len(prompts), "prompt_tokens": [min(map(len, prompts)), max(map(len, prompts))],
        "new_tokens_per_row": new, "generated_tokens": tokens["transformers"], "identical_ids": True,
        "seconds": {e: [round(x, 4) for x in full[e]] for e in ENGINES},
        "prompt_forward_seconds": {e: [round(x, 4) for x in prompt[e]] for e in ENGINES},
        "baseline_step_ms": step_ms("transformers"),
    }


def main(argv: list[str] | None = None) -> dict:
    import torch

    from bench.common import write_result
    from dmlm.modeling import ModelConfig, build_model, load_checkpoint
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
        "decode_speed", "greedy decoding speed, asr workload (long prompt, short output), compute_type float32",
        "generated tokens/s", head["dmlm"], head["baseline"], True,
        baseline_name="transformers generate (greedy), same model, batch and prompts",
        headline="asr, dmlm float32", workloads=work, threads=args.threads, model=name, repeats=repeats,
        timing="per workload and engine, the repeat with the median engine/baseline ratio "
               "(interleaved repeats, one warm-up each)",
    )
    print(f"{'workload':10s}{'engine':14s}{'tokens/s':>10s}{'ms/step':>10s}{'ratio':>8s}{'CPU time':>10s}"
          f"{'prompt pass':>13s}{'ids = generate':>16s}")
    for w, r in work.items():
        base = statistics.median(r["engines"][e]["baseline_tokens_per_s"] for e in FAST)
        print(f"{w:10s}{'transformers':14s}{base:10.0f}{r['baseline_step_ms']:10.2f}")
        for e, x in r["engines"].items():
            agree = x["agreement_with_generate"]
            print(f"{w:10s}{e:14s}{x['tokens_per_s']:10.0f}{x['step_ms']:10.2f}{x['ratio']:7.2f}x"
                  f"{x['cpu_time_ratio']:9.2f}x{x['prompt_forward_ratio']:12.2f}x"
                  f"{100 * agree['tokens_before_first_difference']:15.1f}%")
        x = r["engines"]["dmlm-bf16"]
        print(f"{w:10s}{'(gen. bf16)':14s}{x['generate_bf16_tokens_per_s']:10.0f}{'':10s}"
              f"   dmlm-bf16 / generate on a bf16 model: {x['ratio_vs_generate_bf16']:.2f}x")
    for w, r in work.items():
        print(f"{w}: {r['batch']} prompts of {r['prompt_tokens'][0]}-{r['prompt_tokens'][1]} tokens, "
              f"{r['generated_tokens'] / r['batch']:.1f} new tokens each")
    print("ids = generate: the share of generated tokens before each row's first difference from generate's "
          "(float32: identical, checked)")
    print(f"{args.threads} thread(s), {repeats} repeats; {res['machine']}")
    return res


if __name__ == "__main__":
    main()
