"""Greedy decoding speed (generated tokens/s): dmlm's lean loop vs. transformers `generate`.

Both run `dmlm.decoding.generate` on the same model, batch and prompts, differing only in
`DecodingOptions.engine`, and must return identical ids. The model has the demo's shape
(4-layer d=256 Llama, 2,304-id vocabulary: 1,000 BPE + specials + 1,000 speech units), randomly
initialized; prompts are ASR prompts over 53-83 random units (60-90 tokens). The close tag's
output row is zeroed so that its logit (0) never beats a random model's favourite text id:
every row generates exactly `--new-tokens` tokens, the length of a demo transcript, and both
engines do the same work. Each engine is warmed up, then timed best of `--repeats`, the two
interleaved so that load from other processes hits both alike. A prompt-only run (one new
token) splits each time into the prompt forward and the per-token steps.

    python -m bench.decode_speed [--batch 32] [--new-tokens 16] [--threads 1] [--quick]
"""

from __future__ import annotations

import argparse
import time


def main(argv: list[str] | None = None) -> dict:
    import numpy as np
    import torch

    from bench.common import write_result
    from dmlm.decoding import DecodingOptions, generate
    from dmlm.model import ModelConfig, build_model, load_checkpoint
    from dmlm.tasks import Sample, get_task
    from dmlm.vocab import Vocab

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=16, help="tokens generated per row")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (the project's machine has 2, shared)")
    p.add_argument("--checkpoint", default=None,
                   help="a trained dmlm checkpoint instead of the random model: rows stop at their own close tag, "
                        "--new-tokens is then only the cap")
    p.add_argument("--quick", action="store_true", help="batch 4, 4 new tokens (CI smoke)")
    args = p.parse_args(argv)
    batch, new = (4, 4) if args.quick else (args.batch, args.new_tokens)
    torch.set_num_threads(args.threads)

    if args.checkpoint:
        ck = load_checkpoint(args.checkpoint)
        model, vocab, name = ck.model, ck.vocab, str(args.checkpoint)
    else:
        vocab = Vocab(text_size=1000, speech_size=1000)
        model = build_model(ModelConfig(), vocab, seed=0).eval()
        with torch.no_grad():
            model.get_output_embeddings().weight[vocab.close("text")] = 0
        name = "llama 4x256, vocab 2304, random init"
    rng = np.random.default_rng(0)
    task = get_task("asr")
    prompts = [task.prompt(Sample(id=str(i), units=rng.integers(0, vocab.speech_size, rng.integers(53, 84))), vocab)
               for i in range(batch)]

    def run(engine: str, n: int) -> tuple[float, list[list[int]]]:
        opts = DecodingOptions(engine=engine, max_new_tokens=n, batch_size=batch)
        t = time.perf_counter()
        out = generate(model, prompts, vocab, "text", opts)
        return time.perf_counter() - t, out

    engines = ("transformers", "dmlm")
    outs = {e: run(e, new)[1] for e in engines}  # warm-up
    if outs["dmlm"] != outs["transformers"]:
        raise AssertionError("dmlm's greedy ids differ from transformers generate's")
    tokens = sum(len(o) for o in outs["dmlm"])
    best = {(e, n): float("inf") for e in engines for n in (1, new)}
    for _ in range(args.repeats):
        for e in engines:
            for n in (new, 1):
                best[e, n] = min(best[e, n], run(e, n)[0])
    steps = max(len(o) for o in outs["dmlm"]) + 1 if args.checkpoint else new  # with the close tag
    step_ms = {e: 1000 * (best[e, new] - best[e, 1]) / max(steps - 1, 1) for e in engines}
    res = write_result(
        "decode_speed", "greedy decoding speed", "tokens/s", tokens / best["dmlm", new],
        tokens / best["transformers", new], True,
        batch=batch, max_new_tokens=new, generated_tokens=tokens,
        prompt_tokens=[min(map(len, prompts)), max(map(len, prompts))], threads=args.threads,
        model=name, identical_ids=True, repeats=args.repeats,
        seconds={e: round(best[e, new], 4) for e in engines},
        prompt_forward_seconds={e: round(best[e, 1], 4) for e in engines},
        step_ms={e: round(step_ms[e], 2) for e in engines},
    )
    print(f"{'':14s}{'tokens/s':>10s}{'seconds':>10s}{'prompt s':>10s}{'ms/step':>10s}")
    for e, rate in (("dmlm", res["dmlm"]), ("transformers", res["baseline"])):
        print(f"{e:14s}{rate:10.0f}{best[e, new]:10.3f}{best[e, 1]:10.3f}{step_ms[e]:10.2f}")
    print(f"ratio {res['ratio']:.2f}x  ({batch} prompts of {res['prompt_tokens'][0]}-{res['prompt_tokens'][1]} tokens, "
          f"{tokens / batch:.1f} new tokens each, {args.threads} thread(s), identical ids; {res['machine']})")
    return res


if __name__ == "__main__":
    main()
