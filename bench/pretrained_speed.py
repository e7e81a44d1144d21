"""Training tokens/s of the ways to make a pretrained SmolLM2-135M start fit a CPU study.

Each variant is built the way `dmlm train` builds it (`dmlm.modeling.build_model` with the
variant's `ModelConfig`, the tokenizer from `dmlm.tokenizers.trim`), from the real SmolLM2-135M
weights, and timed on the same kind of step as bench/train_speed.py: `collate`, the
length-normalized loss (`dmlm.training.loop.compute_loss`), backward, gradient clipping and an
AdamW step with train.py's parameter groups. The baseline is the untrimmed, all-layer model in
fp32, measured in the same run, so `ratio` = variant tokens/s ÷ baseline tokens/s.

Data: ASR-shaped sequences of the init study: mini-world training sentences (the text the
vocabulary is trimmed to: English transcripts plus their es/de/fr translations, as
`training_texts` collects them), each tokenized by the variant's own tokenizer, after random
25 Hz speech units of the clip length (1.5–3.1 s) in a vocabulary of `--units` (the demo's
k=1000). Micro-batches are length-bucketed under `--batch-tokens` (train.py's order), the same
sequences for every variant (a trimmed tokenizer encodes them to the same pieces).

All variants are built first and then timed round-robin, one step of each in turn (`--warmup`
untimed rounds, then `--steps` timed ones): on the shared 2-core machine, load that comes and
goes slows every variant alike rather than whichever ran at the time. tokens/s = timed tokens ÷
timed seconds; each step's own rate is kept too (`tokens_per_s_by_step`).

Variants (`--variants`, comma-separated; default all):
  full          untrimmed vocabulary (49,152 + 256 specials + units), 30 layers, fp32 (baseline)
  trim          model.trim_vocab=true
  trim_l12      trim + model.keep_layers=12
  trim_l6       trim + model.keep_layers=6
  trim_bf16     trim, under bf16 autocast (torch.autocast on CPU; this CPU has no avx512_bf16/AMX)
  trim_l6_bf16  trim + keep_layers=6 under bf16 autocast
  lora16        trim + LoRA r=16 (peft) on every attention and MLP projection; the whole (trimmed,
                tied) embedding matrix, which holds the new speech rows, trained fully

    python -m bench.pretrained_speed [--steps N] [--batch-tokens N] [--variants a,b] [--quick]

`--quick` (CI smoke): a tiny stand-in LLM with a BPE trained on the texts, 1 step per variant.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

LOSS = "length_normalized"
UNIT_RATE = 25.0
CLIP_S = (1.5, 3.1)
VARIANTS = ("full", "trim", "trim_l12", "trim_l6", "trim_bf16", "trim_l6_bf16", "lora16")


@dataclass
class Variant:
    name: str
    trim: bool = False
    keep_layers: int = 0
    bf16: bool = False
    lora_rank: int = 0


SPECS = {
    "full": Variant("full"),
    "trim": Variant("trim", trim=True),
    "trim_l12": Variant("trim_l12", trim=True, keep_layers=12),
    "trim_l6": Variant("trim_l6", trim=True, keep_layers=6),
    "trim_bf16": Variant("trim_bf16", trim=True, bf16=True),
    "trim_l6_bf16": Variant("trim_l6_bf16", trim=True, keep_layers=6, bf16=True),
    "lora16": Variant("lora16", trim=True, lora_rank=16),
}


def study_texts(n_train: int) -> tuple[list[str], list[str]]:
    """mini-world training sentences: (English transcripts, every text `training_texts` would collect:
    transcripts and translations)."""
    from dmlm.data.miniworld import generate_splits

    train = generate_splits(n_train, 50, 50)["train"]
    english = [s.text for s in train]
    return english, english + [t for s in train for t in s.translations.values()]


def stand_in_llm(texts: list[str], folder: Path) -> str:
    """A tiny SmolLM2-shaped Llama and a byte-level BPE, for --quick (no assets needed)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from dmlm.tokenizers.text import TextTokenizer

    tok = TextTokenizer.train_bpe(texts, vocab_size=600)
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=tok.vocab_size, hidden_size=64, num_hidden_layers=12,
                                 num_attention_heads=4, num_key_value_heads=2, intermediate_size=128,
                                 tie_word_embeddings=True)).save_pretrained(folder)
    tok.save(folder)
    return str(folder)


def asr_items(english: list[str], text_tok, vocab, n: int, seed: int = 0) -> list:
    """`n` rendered ASR sequences: random units of a clip's length, then a real sentence's text ids."""
    from dmlm.tasks import Sample, get_task, render

    rng = np.random.default_rng(seed)
    task = get_task("asr")
    out = []
    for i in range(n):
        units = rng.integers(0, vocab.speech_size, round(UNIT_RATE * rng.uniform(*CLIP_S)))
        text = english[int(rng.integers(len(english)))]
        out.append(render(task, Sample(id=f"b{i}", units=units, text_ids=text_tok.encode(text)), vocab))
    return out


def build(variant: Variant, llm: str, texts: list[str], units: int):
    """(model, vocab, text tokenizer) as `dmlm train` builds them for this variant."""
    from dmlm.modeling import ModelConfig, build_model
    from dmlm.tokenizers.text import TextTokenizer
    from dmlm.tokenizers.trim import trim_tokenizer
    from dmlm.util.assets import llm_dir
    from dmlm.vocab import Vocab

    text = TextTokenizer.load(llm_dir(llm))
    if variant.trim:
        text = trim_tokenizer(text, texts)
    vocab = Vocab(text_size=text.vocab_size, speech_size=units, bos_id=text.bos_id, eos_id=text.eos_id)
    cfg = ModelConfig(init="pretrained", llm=llm, trim_vocab=variant.trim, keep_layers=variant.keep_layers)
    model = build_model(cfg, vocab, text_rows=text.source_ids)
    if variant.lora_rank:
        from peft import LoraConfig, get_peft_model

        targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
        model = get_peft_model(model, LoraConfig(r=variant.lora_rank, lora_alpha=2 * variant.lora_rank,
                                                 target_modules=targets, lora_dropout=0.0))
        model.get_input_embeddings().weight.requires_grad_(True)  # tied to the head: both train
    return model.train(), vocab, text


def step(model, opt, items: list, pad: int, bf16: bool, clip: float = 1.0) -> float:
    from dmlm.training.loss import loss_counts, loss_weights
    from dmlm.training.data_order import collate
    from dmlm.training.loop import compute_loss

    b = collate(items, pad)
    counts = loss_counts(LOSS, loss_weights(LOSS, b["attention_mask"], b["target"]), b["modality"][:, 1:])
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss = compute_loss(model, b, LOSS, counts, None)
    loss.backward()
    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], clip)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return float(loss.detach())


@dataclass
class Arm:
    """A built variant, its optimizer and its micro-batches, timed one step at a time."""

    variant: Variant
    model: torch.nn.Module
    vocab: object
    opt: torch.optim.Optimizer
    data: list[list]
    build_s: float
    step_s: list[float]
    tokens: list[int]
    losses: list[float]


def prepare(variant: Variant, llm: str, english: list[str], texts: list[str], units: int, batch_tokens: int,
            n_batches: int) -> Arm:
    from bench.train_speed import batches, make_optimizer

    t0 = time.perf_counter()
    model, vocab, text = build(variant, llm, texts, units)
    build_s = time.perf_counter() - t0
    opt = make_optimizer(torch.nn.ParameterList([p for p in model.parameters() if p.requires_grad]))
    n_seq = max(2048, 2 * n_batches * batch_tokens // 60)  # >= one bucketing chunk
    data = batches(asr_items(english, text, vocab, n_seq), batch_tokens, n_batches)
    return Arm(variant, model, vocab, opt, data, build_s, [], [], [])


def timed_step(arm: Arm, i: int) -> None:
    items = arm.data[i]
    t = time.perf_counter()
    arm.losses.append(step(arm.model, arm.opt, items, arm.vocab.pad, arm.variant.bf16))
    arm.step_s.append(time.perf_counter() - t)
    arm.tokens.append(sum(len(r.ids) for r in items))


def summary(arm: Arm, warmup: int) -> dict:
    """tokens/s over the timed steps (after `warmup`), and each step's own rate."""
    secs, toks = arm.step_s[warmup:], arm.tokens[warmup:]
    v, cfg = arm.variant, arm.model.config
    params = list(arm.model.parameters())
    return {"variant": v.name, "trim_vocab": v.trim, "precision": "bf16 autocast" if v.bf16 else "fp32",
            "lora_rank": v.lora_rank, "text_vocab": arm.vocab.text_size, "vocab": arm.vocab.size,
            "layers": cfg.num_hidden_layers, "params": sum(p.numel() for p in params),
            "trainable": sum(p.numel() for p in params if p.requires_grad), "steps": len(secs),
            "elapsed_s": sum(secs), "step_s": sum(secs) / len(secs), "tokens_per_s": sum(toks) / sum(secs),
            "tokens_per_s_by_step": [n / t for n, t in zip(toks, secs)], "mean_batch_tokens": sum(toks) / len(toks),
            "build_s": arm.build_s, "first_loss": arm.losses[0], "last_loss": arm.losses[-1]}


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main(argv: list[str] | None = None) -> dict:
    from bench.common import write_result

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--llm", default="smollm2-135m", help="LLM preset, hub id or folder")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of {', '.join(VARIANTS)}")
    p.add_argument("--steps", type=int, default=3, help="timed steps per variant")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first (AdamW state, allocator)")
    p.add_argument("--batch-tokens", type=int, default=1500, help="token budget per micro-batch")
    p.add_argument("--units", type=int, default=1000, help="speech units in the vocabulary")
    p.add_argument("--sentences", type=int, default=2000, help="mini-world training sentences trimmed to")
    p.add_argument("--recommend", default="trim_l6", help="the variant reported as `dmlm`")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--quick", action="store_true", help="tiny stand-in LLM, 1 step per variant (CI smoke)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown:
        p.error(f"unknown variants {unknown}; expected some of {', '.join(VARIANTS)}")
    if "full" not in names:
        names.insert(0, "full")  # the baseline is always measured in the same run
    if args.recommend not in names:
        p.error(f"--recommend {args.recommend} is not among the variants run")
    try:
        import peft  # noqa: F401
    except ImportError:
        if "lora16" in names:
            print("peft is not installed (pip install 'dmlm[lora]'): skipping lora16")
            names.remove("lora16")

    english, texts = study_texts(200 if args.quick else args.sentences)
    load_before = load_average()
    with tempfile.TemporaryDirectory() as tmp:
        llm = stand_in_llm(texts, Path(tmp) / "lm") if args.quick else args.llm
        steps, batch_tokens = (1, 300) if args.quick else (args.steps, args.batch_tokens)
        warmup = 1 if args.quick else args.warmup
        arms = [prepare(SPECS[n], llm, english, texts, 16 if args.quick else args.units, batch_tokens,
                        warmup + steps) for n in names]
        # round-robin, one step of each variant in turn: on a shared machine, load that comes and goes
        # then slows every variant alike instead of whichever happened to run at the time
        for i in range(warmup + steps):
            for arm in arms:
                timed_step(arm, i)
            print(f"round {i + 1}/{warmup + steps}: " + ", ".join(
                f"{a.variant.name} {a.step_s[-1]:.1f} s" for a in arms) + f" (load {load_average()})", flush=True)
        runs = [summary(a, warmup) for a in arms]
    base = next(r for r in runs if r["variant"] == "full")["tokens_per_s"]
    for r in runs:
        r["ratio"] = r["tokens_per_s"] / base
    best = next(r for r in runs if r["variant"] == args.recommend)
    res = write_result(
        "pretrained_speed", f"training tokens/s, SmolLM2-135M start ({args.recommend})", "tokens/s",
        best["tokens_per_s"], base, True, baseline_is="untrimmed 30-layer SmolLM2-135M, fp32, same run",
        llm="stand-in (quick)" if args.quick else args.llm, batch_tokens=batch_tokens, loss=LOSS,
        threads=torch.get_num_threads(), load_average_before=load_before, load_average_after=load_average(),
        quick=args.quick, variants=runs,
    )
    print(f"{'variant':13s}{'V_text':>7s}{'layers':>7s}{'precision':>15s}{'trainable':>11s}{'s/step':>8s}"
          f"{'tok/s':>8s}{'ratio':>7s}")
    for r in runs:
        print(f"{r['variant']:13s}{r['text_vocab']:7d}{r['layers']:7d}{r['precision']:>15s}"
              f"{r['trainable'] / 1e6:10.1f}M{r['step_s']:8.2f}{r['tokens_per_s']:8.0f}{r['ratio']:6.2f}×")
    print(f"load average before {load_before}, after {res['load_average_after']}; {res['machine']}")
    return res


if __name__ == "__main__":
    main()
