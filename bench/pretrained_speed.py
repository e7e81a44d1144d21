"""Training speed of the whole SmolLM2-135M (all 30 layers) under each cheap recipe of issue 29.

Every recipe trains the full-depth pretrained LLM the way `dmlm train` builds and steps it:
`build_model` (trimmed text vocabulary, dmlm's specials and the speech rows added, `model.adapter`),
`Trainable` (`train.stages`: what trains), `compute_loss` (`train.loss`, `train.logits_at_targets`),
backward, the per-row rates, clipping and train's AdamW. The recipes, each adding one thing:

  fp32        full fine-tune in fp32, length-normalized loss over the whole sequence: the baseline
  bf16        + bf16 autocast (`train.precision=bf16`)
  lora        + LoRA r=16 on every linear layer of the body (`model.adapter=lora`), the embedding trained
  targets     + the loss on the transcript only and the output layer run only there
              (`train.loss=target_length_normalized`, `train.logits_at_targets=true`)
  bpe         + 1,000 byte-pair merges over the speech units (`dmlm codebook bpe`)
  dedup_bpe   + units deduplicated before the merges (`codebook.dedup=true`)
  new_rows    dedup_bpe's model and data, in a `new_rows` stage (body and adapters frozen; `train.stages`)
  staged      (derived, not timed) `--staged-share` of the steps in new_rows, the rest in dedup_bpe
  compiled, compiled_new_rows, staged_compiled: the same with the decoder layers compiled (`train.compile`;
              their FLOPs are their uncompiled twins', which FlopCounterMode can count)

The recipes from `lora` on run in bf16 autocast where the CPU has native bf16 (AVX512-BF16), else in
fp32, as `train.precision: auto` would train them (`--cheap-precision` pins either): on an AVX2-only
CPU bf16 autocast is slower than fp32, and the ratio that matters there is the cheap recipe in fp32.

Data: ASR examples of real speech units. Mini-world sentences are spoken by drawn espeak-ng voices
and encoded by Whisper-base; a k=1000 codebook (the demo's: 25 Hz) and the merges are fitted on
the first `--fit-clips` clips only; the timed utterances are other clips. Every recipe trains on
the same utterances in the same micro-batches of `--batch-utts` (grouped by length): the BPE
recipes see the same speech, rendered as merged pieces, so they get shorter sequences of the
same utterances. That is why utterances/s is the headline: tokens/s would reward longer sequences.

Timing: all recipes are built first, then run round-robin, one step each per round, the order
rotated each round (`--warmup` untimed rounds, then `--rounds` timed ones); a bf16 and an fp32
2048² matmul are timed in every round too. Each recipe's rate is the median over rounds, and its
`ratio` the median over rounds of its utterances/s ÷ the baseline's in the same round: load that
comes and goes on the shared machine slows every recipe alike. FLOPs per step are counted by
torch's FlopCounterMode on the first warmup round (the matmuls, forward and backward, actually
executed); MFU = FLOPs/s ÷ the matmul's FLOP/s, against the bf16 and the fp32 matmul.

`--paired STEPS`: a short paired training, the baseline against `--recommend` (staged: its
schedule), from the same start on the same utterance order, with the dev loss (per transcript
token, fp32) of held-out clips every `--paired-every` steps against utterances seen.

    python -m bench.pretrained_speed [--rounds 5] [--batch-utts 16] [--recommend staged] [--paired 60]

`--quick` (CI smoke): a tiny stand-in LLM, synthetic units with runs (k=32, 16 merges), seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import random
import statistics
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from bench.unit_bpe import CachedFrames

BASELINE = "fp32"
DERIVED = "staged"
DERIVED_COMPILED = "staged_compiled"
MATMUL_N = 2048


@dataclass(frozen=True)
class Recipe:
    name: str
    what: str
    bf16: bool = False
    lora_rank: int = 0
    at_targets: bool = False  # the loss on the transcript, the output layer there only
    units: str = "units"  # units | bpe | dedup_bpe: how the speech is rendered
    stage: str = ""  # "": one stage (all, or adapters with LoRA); new_rows: body and adapters frozen
    compiled: bool = False  # the decoder layers compiled (`train.compile`)
    twin: str = ""  # the same recipe uncompiled: its counted FLOPs are this one's (compiled kernels are not counted)


_LORA = dict(bf16=True, lora_rank=16)
RECIPES = {r.name: r for r in [
    Recipe("fp32", "full fine-tune, fp32 (baseline)"),
    Recipe("bf16", "full fine-tune, bf16 autocast", bf16=True),
    Recipe("lora", "LoRA r=16, bf16", **_LORA),
    Recipe("targets", "LoRA r=16, bf16, loss and logits at the transcript", **_LORA, at_targets=True),
    Recipe("bpe", "… + unit merges (--merges)", **_LORA, at_targets=True, units="bpe"),
    Recipe("dedup_bpe", "… + units deduplicated, then the merges", **_LORA, at_targets=True, units="dedup_bpe"),
    Recipe("new_rows", "dedup_bpe in a new_rows stage (body and adapters frozen)", **_LORA, at_targets=True,
           units="dedup_bpe", stage="new_rows"),
    Recipe("compiled", "dedup_bpe with the decoder layers compiled", **_LORA, at_targets=True, units="dedup_bpe",
           compiled=True, twin="dedup_bpe"),
    Recipe("compiled_new_rows", "new_rows with the decoder layers compiled", **_LORA, at_targets=True,
           units="dedup_bpe", stage="new_rows", compiled=True, twin="new_rows"),
]}


# -- data: utterances as units, and as merged pieces ------------------------------------------

@dataclass
class Speech:
    """Utterances (text, and speech units in each rendering) and the merges each rendering uses."""

    texts: list[str]
    seconds: list[float]
    units: dict[str, list[np.ndarray]]  # rendering -> units per utterance (deduplicated for dedup_bpe)
    bpe: dict[str, object]  # rendering -> its UnitBPE (None for plain units)
    k: int
    source: str  # how the units were made


def spoken_clips(n: int, seed: int = 1) -> tuple[list[str], list[np.ndarray]]:
    """`n` mini-world training sentences spoken by drawn espeak-ng voices: (texts, 16 kHz clips)."""
    from dmlm.data import miniworld
    from dmlm.data.synth import draw_voice, synthesize

    rng = random.Random(seed)
    sentences = miniworld.generate_splits(n, 0, 0, seed=seed)["train"]
    return [s.text for s in sentences], [synthesize(s.text, draw_voice(rng)) for s in sentences]


def real_speech(n_fit: int, n_use: int, k: int, merges: int, model: str) -> Speech:
    """Whisper units of `n_fit + n_use` clips; codebook and merges fitted on the first `n_fit` only."""
    from dmlm.tokenizers.features import WhisperCT2Features
    from dmlm.tokenizers.speech import Codebook, CodebookSettings, fit_codebook, fit_unit_bpe
    from dmlm.util.audio import SAMPLE_RATE

    texts, wavs = spoken_clips(n_fit + n_use)
    feats = WhisperCT2Features(model)
    frames = [f for s in range(0, len(wavs), 64) for f in feats(wavs[s : s + 64])]
    settings = CodebookSettings(model=model, k=k)  # the demo's: 25 Hz, no dedup
    cb = fit_codebook(wavs[:n_fit], settings, features=CachedFrames(feats.frame_rate, wavs, frames))
    units, bpe = {}, {}
    for name, dedup, n_merges in (("units", False, 0), ("bpe", False, merges), ("dedup_bpe", True, merges)):
        view = Codebook(cb.centroids, replace(cb.settings, dedup=dedup))
        all_units = [view.frames_to_units(f) for f in frames]
        bpe[name] = fit_unit_bpe(view, all_units[:n_fit], n_merges).bpe if n_merges else None
        units[name] = all_units[n_fit:]
    return Speech(texts[n_fit:], [len(w) / SAMPLE_RATE for w in wavs[n_fit:]], units, bpe, k,
                  f"{model} k={k} codebook and {merges} merges fitted on {n_fit} espeak-ng clips; "
                  f"{n_use} other clips used")


def synthetic_speech(texts: list[str], k: int, merges: int, seed: int = 0) -> Speech:
    """For --quick: units drawn from a small-order chain, each held 1–3 frames (as 25 Hz units are)."""
    from dmlm.tokenizers.speech import dedup
    from dmlm.tokenizers.unit_bpe import UnitBPE

    rng = np.random.default_rng(seed)
    follow = rng.integers(0, k, (k, 2))  # each unit is followed by one of two: merges find pairs
    seqs = []
    for _ in texts:
        u = [int(rng.integers(k))]
        while len(u) < int(rng.integers(30, 60)):
            u.append(int(follow[u[-1], rng.integers(2)]))
        seqs.append(np.repeat(np.array(u), rng.integers(1, 4, len(u))))
    half = len(seqs) // 2
    units = {"units": seqs, "bpe": seqs, "dedup_bpe": [dedup(s) for s in seqs]}
    bpe = {"units": None, **{n: UnitBPE.fit(units[n][:half], k, merges) for n in ("bpe", "dedup_bpe")}}
    return Speech(texts[half:], [len(s) / 25.0 for s in seqs[half:]], {n: v[half:] for n, v in units.items()},
                  bpe, k, f"synthetic (quick): k={k}, {merges} merges fitted on {half} sequences")


def micro_batches(speech: Speech, n_utts: int, n_batches: int, seed: int = 0) -> list[list[int]]:
    """`n_batches` groups of `n_utts` utterance indices, each of similar length (bucketing), in random order."""
    order = np.argsort([len(u) for u in speech.units["units"]], kind="stable")
    groups = [order[i : i + n_utts].tolist() for i in range(0, len(order) - n_utts + 1, n_utts)]
    if len(groups) < n_batches:
        raise ValueError(f"{len(order)} utterances make {len(groups)} batches of {n_utts}, {n_batches} needed")
    random.Random(seed).shuffle(groups)
    return groups[:n_batches]


# -- one recipe: its model, vocabulary and step, as `dmlm train` makes them -----------------------

def run_config(recipe: Recipe, llm: str, lr: float = 2e-3, lr_new_rows: float = 1.0, stages: list | None = None):
    """The `RunConfig` fields this recipe sets (data paths are not needed to build and step)."""
    from dmlm.modeling import ModelConfig
    from dmlm.training.config import RunConfig, Stage, TrainConfig

    model = ModelConfig(init="pretrained", llm=llm, trim_vocab=True, adapter="lora" if recipe.lora_rank else "none",
                        lora_rank=recipe.lora_rank or 16, lora_alpha=2.0 * (recipe.lora_rank or 16))
    if stages is None:
        stages = [Stage(train="new_rows")] if recipe.stage else []
    train = TrainConfig(loss="target_length_normalized" if recipe.at_targets else "length_normalized",
                        logits_at_targets=recipe.at_targets, precision="bf16" if recipe.bf16 else "fp32", lr=lr,
                        lr_new_rows=lr_new_rows, stages=stages)
    return RunConfig(model=model, train=train)


@dataclass
class Arm:
    """A built recipe: model, optimizer, what trains, its rendered utterances; and its timings."""

    recipe: Recipe
    cfg: object  # RunConfig
    model: torch.nn.Module
    vocab: object
    opt: torch.optim.Optimizer
    trainable: object
    rendered: list  # one `Rendered` ASR example per utterance
    step: int = 0
    seconds: list[float] = field(default_factory=list)
    utts: list[int] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    flops_per_utt: float = 0.0


def render_asr(speech: Speech, rendering: str, text, vocab) -> list:
    from dmlm.tasks import Sample, get_task, render

    task = get_task("asr")
    return [render(task, Sample(id=f"u{i}", units=u, text_ids=text.encode(t)), vocab)
            for i, (u, t) in enumerate(zip(speech.units[rendering], speech.texts))]


def build_arm(recipe: Recipe, cfg, text, speech: Speech, seed: int = 0) -> Arm:
    """Model, vocabulary, optimizer and what trains, for `cfg` (from `run_config`) and this recipe's rendering."""
    from dmlm.modeling import build_model
    from dmlm.training.loop import check_logits_at_targets, compile_layers
    from dmlm.training.trainable import Trainable
    from dmlm.vocab import Vocab

    bpe = speech.bpe[recipe.units]
    vocab = Vocab(text_size=text.vocab_size, speech_size=bpe.vocab_size if bpe else speech.k, bos_id=text.bos_id,
                  eos_id=text.eos_id, fingerprints={"speech_bpe": bpe.fingerprint} if bpe else {},
                  speech_bpe=bpe.to_dict() if bpe else {})
    cfg.model.validate()
    model = build_model(cfg.model, vocab, seed=seed, text_rows=text.source_ids).train()
    if recipe.at_targets:
        check_logits_at_targets(model)
    if recipe.compiled:
        compile_layers(model)
    trainable = Trainable.of(cfg, model, vocab.text_size, 1)
    params = [p for _, p in trainable.optimized()]
    opt = torch.optim.AdamW([{"params": [p for p in params if p.ndim >= 2], "weight_decay": cfg.train.weight_decay},
                             {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}],
                            lr=cfg.train.lr, betas=(0.9, 0.95))
    return Arm(recipe, cfg, model, vocab, opt, trainable, render_asr(speech, recipe.units, text, vocab))


def train_step(arm: Arm, batch: list[int], lr: float) -> float:
    """One optimizer step on utterances `batch`, in the order of `dmlm.training.loop.train_step`."""
    from dmlm.training.data_order import collate
    from dmlm.training.loop import compute_loss
    from dmlm.training.loss import loss_counts, loss_weights

    t = arm.cfg.train
    b = collate([arm.rendered[i] for i in batch], arm.vocab.pad)
    for g in arm.opt.param_groups:
        g["lr"] = lr
    arm.trainable.enter(arm.step)
    counts = loss_counts(t.loss, loss_weights(t.loss, b["attention_mask"], b["target"]), b["modality"][:, 1:])
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=t.precision == "bf16"):
        loss = compute_loss(arm.model, b, t.loss, counts, torch.tensor(t.lambdas), at_targets=t.logits_at_targets)
    loss.backward()
    held = arm.trainable.before_update()
    torch.nn.utils.clip_grad_norm_([p for p in arm.model.parameters() if p.grad is not None], t.clip)
    arm.opt.step()
    arm.trainable.after_update(held)
    arm.opt.zero_grad(set_to_none=True)
    arm.step += 1
    return float(loss.detach())


# -- timing: round-robin, with the matmul that MFU is measured against ------------------------------

def matmul_flops(dtype: torch.dtype, n: int = MATMUL_N, reps: int = 3) -> float:
    """FLOP/s of an n×n by n×n matmul in `dtype` (the best of `reps`, after one untimed)."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def timed_step(arm: Arm, batch: list[int], count_flops: bool = False) -> None:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False) if count_flops else None
    t = time.perf_counter()
    with counter if counter is not None else contextlib.nullcontext():
        arm.losses.append(train_step(arm, batch, arm.cfg.train.lr))
    arm.seconds.append(time.perf_counter() - t)
    arm.utts.append(len(batch))
    arm.tokens.append(sum(len(arm.rendered[i].ids) for i in batch))
    if counter is not None:
        arm.flops_per_utt = counter.get_total_flops() / len(batch)


def round_robin(arms: list[Arm], batches: list[list[int]], warmup: int, matmul_n: int) -> dict:
    """One step of every arm per round, the order rotated each round; the matmul probes each round.
    FLOPs are counted in the first (untimed) round. Returns the probes' FLOP/s per timed round."""
    probes: dict[str, list[float]] = {"bf16": [], "fp32": []}
    for r, batch in enumerate(batches):
        k = r % len(arms)
        for arm in arms[k:] + arms[:k]:
            timed_step(arm, batch, count_flops=r == 0 and not arm.recipe.compiled)
        if r >= warmup:
            probes["bf16"].append(matmul_flops(torch.bfloat16, matmul_n))
            probes["fp32"].append(matmul_flops(torch.float32, matmul_n))
        print(f"round {r + 1}/{len(batches)}{' (warmup)' if r < warmup else ''}: "
              + ", ".join(f"{a.recipe.name} {a.seconds[-1]:.2f} s" for a in arms) + f" (load {load_average()})",
              flush=True)
    return probes


def summary(arm: Arm, base: Arm, warmup: int, peak: dict[str, float]) -> dict:
    """Medians over the timed rounds; `ratio`: the median of utt/s ÷ the baseline's in the same round."""
    s, u, n = arm.seconds[warmup:], arm.utts[warmup:], arm.tokens[warmup:]
    utt_s = [a / b for a, b in zip(u, s)]
    base_utt_s = [a / b for a, b in zip(base.utts[warmup:], base.seconds[warmup:])]
    params = list(arm.model.parameters())
    speech = [len(arm.rendered[i].ids) for i in range(len(arm.rendered))]
    r = arm.recipe
    flops_s = arm.flops_per_utt * statistics.median(utt_s)
    return {"recipe": r.name, "what": r.what, "precision": "bf16 autocast" if r.bf16 else "fp32",
            "lora_rank": r.lora_rank, "loss": arm.cfg.train.loss, "logits_at_targets": r.at_targets,
            "speech": r.units, "stage": r.stage or ("adapters" if r.lora_rank else "all"),
            "layers": arm.model.config.num_hidden_layers, "vocab": arm.vocab.size, "params": sum(p.numel() for p in params),
            "trainable": sum(p.numel() for p in params if p.requires_grad),
            "tokens_per_utt": statistics.mean(speech), "rounds": len(s),
            "utt_per_s": statistics.median(utt_s), "tokens_per_s": statistics.median([a / b for a, b in zip(n, s)]),
            "s_per_step": statistics.median(s), "utt_per_s_by_round": utt_s,
            "ratio": statistics.median([a / b for a, b in zip(utt_s, base_utt_s)]),
            "gflops_per_utt": arm.flops_per_utt / 1e9, "mfu_bf16": flops_s / peak["bf16"], "mfu_fp32": flops_s / peak["fp32"],
            "first_loss": arm.losses[0], "last_loss": arm.losses[-1]}


def staged_row(first: dict, then: dict, share: float, name: str = "staged") -> dict:
    """A schedule of `share` of the steps in `first`'s stage, then `then`: utt/s = utterances ÷ time."""
    def per_utt(key: str) -> float:
        return share / first[key] + (1 - share) / then[key]

    return {"recipe": name, "what": f"{share:.0%} of steps as {first['recipe']}, then {then['recipe']} (derived)",
            "derived_from": [first["recipe"], then["recipe"]], "share": share, "utt_per_s": 1 / per_utt("utt_per_s"),
            "ratio": 1 / per_utt("ratio"), "speech": then["speech"], "tokens_per_utt": then["tokens_per_utt"]}


def load_average() -> str:
    """/proc/loadavg's 1, 5 and 15 minute load averages."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


# -- the paired run: dev loss against utterances seen -----------------------------------------------

def subset(speech: Speech, idx: list[int]) -> Speech:
    return replace(speech, texts=[speech.texts[i] for i in idx], seconds=[speech.seconds[i] for i in idx],
                   units={n: [u[i] for i in idx] for n, u in speech.units.items()})


def paired_arm(name: str, args, llm: str, lr: float):
    """(recipe, config) of one side of the paired run: a recipe, or `staged` as its real schedule."""
    from dmlm.training.config import Stage

    if name not in (DERIVED, DERIVED_COMPILED):
        return args.table[name], run_config(args.table[name], llm, lr, args.lr_new_rows)
    first = max(1, round(args.staged_share * args.paired))
    stages = [Stage(steps=first, train="new_rows"), Stage(train="adapters")]
    recipe = args.table["compiled" if name == DERIVED_COMPILED else "dedup_bpe"]
    return recipe, run_config(recipe, llm, lr, args.lr_new_rows, stages)


def paired_run(args, llm: str, text, train: Speech, dev: Speech) -> dict:
    """The baseline and `args.recommend`, `args.paired` steps each on the same utterance order, from the same start."""
    from dmlm.training.loop import dev_loss
    from dmlm.util.schedule import warmup_cosine

    per_epoch = len(train.texts) // args.batch_utts
    order = [b for e in range(-(-args.paired // per_epoch)) for b in micro_batches(train, args.batch_utts, per_epoch, e)]
    out = {"steps": args.paired, "batch_utts": args.batch_utts, "train_utterances": len(train.texts),
           "dev_utterances": len(dev.texts), "dev_loss": "per transcript token, fp32 forward", "arms": {}}
    for name, lr in ((BASELINE, args.lr_baseline), (args.recommend, args.lr)):
        recipe, cfg = paired_arm(name, args, llm, lr)
        arm = build_arm(recipe, cfg, text, train)
        dev_rendered = render_asr(dev, recipe.units, text, arm.vocab)
        curve, t0 = [], time.perf_counter()
        for step in range(args.paired + 1):
            if step % args.paired_every == 0 or step == args.paired:
                loss = dev_loss(arm.model, dev_rendered, cfg, arm.vocab.pad, "cpu")["all"]
                curve.append({"step": step, "utterances": step * args.batch_utts, "dev_loss": loss,
                              "train_seconds": round(sum(arm.seconds), 1)})
                print(f"paired {name}: step {step}, dev loss {loss:.3f}", flush=True)
            if step < args.paired:
                progress = step / args.paired
                t = time.perf_counter()
                arm.losses.append(train_step(arm, order[step], lr * warmup_cosine(progress, 0.1, 0.05)))
                arm.seconds.append(time.perf_counter() - t)
        out["arms"][name] = {"lr": lr, "lr_new_rows": args.lr_new_rows, "loss": cfg.train.loss,
                             "stages": [f"{s.train}:{s.steps or 'rest'}" for s in cfg.train.stages],
                             "curve": curve, "wall_s": round(time.perf_counter() - t0, 1)}
        del arm
    return out


# -- main ----------------------------------------------------------------------------------------------

def cpu_facts() -> dict:
    """lscpu's model name and whether the CPU has AVX512-BF16 (native bf16 matmuls)."""
    import subprocess

    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    except OSError:
        lscpu = ""
    model = next((line[line.index(":") + 1 :].strip() for line in lscpu.splitlines() if line.startswith("Model name")), "")
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    return {"lscpu_model": model, "avx512_bf16": " avx512_bf16" in flags, "amx_bf16": " amx_bf16" in flags}


def stand_in_llm(texts: list[str], folder: Path) -> str:
    """A tiny SmolLM2-shaped Llama and a byte-level BPE, for --quick (no assets needed)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from dmlm.tokenizers.text import TextTokenizer

    tok = TextTokenizer.train_bpe(texts, vocab_size=600)
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=tok.vocab_size, hidden_size=64, num_hidden_layers=4,
                                 num_attention_heads=4, num_key_value_heads=2, intermediate_size=128,
                                 tie_word_embeddings=True, bos_token_id=tok.bos_id,
                                 eos_token_id=tok.eos_id)).save_pretrained(folder)
    tok.save(folder)
    return str(folder)


def recipes_in(precision: str) -> dict[str, Recipe]:
    """The recipes with the cheap ones (LoRA onwards) in `precision`: bf16 as listed, or fp32 (what
    `train.precision: auto` trains in on a CPU without native bf16, where bf16 autocast is slow). The
    `bf16` recipe stays bf16 either way: it measures autocast itself."""
    if precision == "bf16":
        return dict(RECIPES)
    return {n: replace(r, bf16=False, what=r.what.replace(", bf16", ", fp32")) if r.lora_rank else r
            for n, r in RECIPES.items()}


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--llm", default="smollm2-135m", help="LLM preset, hub id or folder")
    p.add_argument("--recipes", default=",".join(RECIPES), help=f"comma-separated, of {', '.join(RECIPES)}")
    p.add_argument("--recommend", default="", help="the recipe reported as `dmlm`: a recipe, staged or staged_compiled (default: staged_compiled when its recipes run, else staged)")
    p.add_argument("--rounds", type=int, default=5, help="timed rounds (one step of each recipe per round)")
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds first (FLOPs counted in the first)")
    p.add_argument("--batch-utts", type=int, default=16, help="utterances per step (the same ones for every recipe)")
    p.add_argument("--fit-clips", type=int, default=200, help="clips the codebook and the merges are fitted on")
    p.add_argument("--k", type=int, default=1000, help="codebook size (the demo's)")
    p.add_argument("--merges", type=int, default=1000, help="unit merges of the bpe recipes")
    p.add_argument("--whisper", default="whisper-base", help="speech encoder of the codebook")
    p.add_argument("--staged-share", type=float, default=0.2, help="share of steps in the new_rows stage (staged)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--matmul-n", type=int, default=MATMUL_N, help="size of the square matmul MFU is against")
    p.add_argument("--paired", type=int, default=0, help="steps of the paired run (0: none)")
    p.add_argument("--paired-only", action="store_true", help="only the paired run (pretrained_speed_paired.json)")
    p.add_argument("--paired-every", type=int, default=20, help="dev loss every N steps of the paired run")
    p.add_argument("--paired-train", type=int, default=320, help="training utterances of the paired run (cycled)")
    p.add_argument("--paired-dev", type=int, default=40, help="held-out utterances of the paired run's dev loss")
    p.add_argument("--lr-baseline", type=float, default=1e-4, help="paired run: the baseline's learning rate")
    p.add_argument("--lr", type=float, default=1e-3, help="paired run: the recommended recipe's learning rate")
    p.add_argument("--lr-new-rows", type=float, default=10.0, help="paired run: train.lr_new_rows of both")
    p.add_argument("--cheap-precision", choices=("auto", "bf16", "fp32"), default="auto",
                   help="precision of the LoRA recipes: auto (bf16 where the CPU has native bf16, as "
                        "train.precision: auto trains; else fp32), bf16 or fp32")
    p.add_argument("--quick", action="store_true", help="tiny stand-in LLM and synthetic units (CI smoke)")
    args = p.parse_args(argv)
    if args.cheap_precision == "auto":
        from dmlm.util.precision import native_bf16

        args.cheap_precision = "bf16" if native_bf16() else "fp32"
    args.table = recipes_in(args.cheap_precision)
    names = [n.strip() for n in args.recipes.split(",") if n.strip()]
    unknown = sorted(set(names) - set(RECIPES))
    if unknown:
        p.error(f"--recipes: unknown {unknown}; expected some of {', '.join(RECIPES)}")
    args.names = [BASELINE] + [n for n in names if n != BASELINE]  # the baseline always runs, first
    if not args.recommend:  # the compiled schedule where its recipes run, else the eager one
        args.recommend = DERIVED_COMPILED if {"compiled_new_rows", "compiled"} <= set(args.names) else DERIVED
    for derived, parts in ((DERIVED, {"new_rows", "dedup_bpe"}), (DERIVED_COMPILED, {"compiled_new_rows", "compiled"})):
        if args.recommend == derived and not parts <= set(args.names):
            p.error(f"--recommend {derived} needs the recipes {' and '.join(sorted(parts))}")
    if args.recommend not in (DERIVED, DERIVED_COMPILED) and args.recommend not in args.names:
        p.error(f"--recommend {args.recommend} is not among the recipes run ({', '.join(args.names)})")
    if not (args.rounds >= 1 and args.warmup >= 1 and args.batch_utts >= 1 and 0 < args.staged_share < 1):
        p.error("--rounds, --warmup and --batch-utts must be >= 1 and --staged-share in (0, 1)")
    if args.paired_only and not args.paired:
        p.error("--paired-only needs --paired STEPS")
    if args.quick:
        args.rounds, args.batch_utts, args.k, args.merges, args.matmul_n = 2, 4, 32, 16, 256
        args.paired_train, args.paired_dev, args.paired_every = 8, 4, 1
    return args


def speech_rates(speech: Speech) -> dict[str, float]:
    """Speech tokens per second of audio in each rendering (merged pieces counted as one)."""
    audio = sum(speech.seconds)
    out = {}
    for name, units in speech.units.items():
        bpe = speech.bpe[name]
        out[name] = round(sum(map(len, bpe.encode_batch(units) if bpe else units)) / audio, 2)
    return out


def prepare_data(args, tmp: Path) -> tuple[str, object, Speech, Speech | None]:
    """(LLM, its tokenizer trimmed to the texts, the utterances to train on, the paired run's dev utterances)."""
    from dmlm.data import miniworld
    from dmlm.tokenizers.text import TextTokenizer
    from dmlm.tokenizers.trim import trim_tokenizer
    from dmlm.util.assets import llm_dir

    n_use = max((args.warmup + args.rounds) * args.batch_utts, args.paired_train if args.paired else 0)
    n_dev = args.paired_dev if args.paired else 0
    study = miniworld.generate_splits(200 if args.quick else 2000, 0, 0)["train"]
    texts = [s.text for s in study] + [t for s in study for t in s.translations.values()]
    if args.quick:
        spoken = [s.text for s in miniworld.generate_splits(2 * (n_use + n_dev), 0, 0, seed=1)["train"]]
        speech, llm = synthetic_speech(spoken, args.k, args.merges), stand_in_llm(texts, tmp / "lm")
    else:
        speech, llm = real_speech(args.fit_clips, n_use + n_dev, args.k, args.merges, args.whisper), args.llm
    train = subset(speech, list(range(n_use)))
    dev = subset(speech, list(range(n_use, n_use + n_dev))) if n_dev else None
    text = trim_tokenizer(TextTokenizer.load(llm_dir(llm)), texts + train.texts)
    return llm, text, train, dev


def main(argv: list[str] | None = None) -> dict:
    from bench.common import write_result

    args = parse(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    load_before, t0 = load_average(), time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        llm, text, speech, dev = prepare_data(args, Path(tmp))
        data_s = time.perf_counter() - t0
        if args.paired_only:
            return paired_only(args, llm, text, speech, dev, load_before)
        batches = micro_batches(speech, args.batch_utts, args.warmup + args.rounds)
        arms = [build_arm(args.table[n], run_config(args.table[n], llm), text, speech) for n in args.names]
        probes = round_robin(arms, batches, args.warmup, args.matmul_n)
        twins = {a.recipe.name: a for a in arms}
        for a in arms:
            if a.recipe.twin in twins:
                a.flops_per_utt = twins[a.recipe.twin].flops_per_utt
        peak = {k: statistics.median(v) for k, v in probes.items()}
        rows = [summary(a, arms[0], args.warmup, peak) for a in arms]
        del arms
        by_name = {r["recipe"]: r for r in rows}
        for first, then, name in (("new_rows", "dedup_bpe", DERIVED), ("compiled_new_rows", "compiled", DERIVED_COMPILED)):
            if {first, then} <= by_name.keys():
                rows.append(staged_row(by_name[first], by_name[then], args.staged_share, name))
        timing_s = time.perf_counter() - t0 - data_s
        paired = paired_run(args, llm, text, speech, dev) if args.paired else None
    best = next(r for r in rows if r["recipe"] == args.recommend)
    res = write_result(
        "pretrained_speed", f"training utterances/s, SmolLM2-135M all 30 layers ({args.recommend})", "utterances/s",
        best["utt_per_s"], rows[0]["utt_per_s"], True, recommend=args.recommend,
        baseline_is="full fine-tune in fp32 (trimmed vocabulary, 30 layers, length-normalized loss), same run",
        llm="stand-in (quick)" if args.quick else args.llm, **cpu_facts(), threads=torch.get_num_threads(),
        cheap_precision=args.cheap_precision,
        load_average_before=load_before, load_average_after=load_average(), speech=speech.source,
        speech_tokens_per_audio_second=speech_rates(speech), batch_utts=args.batch_utts, rounds=args.rounds,
        warmup=args.warmup, matmul={"n": args.matmul_n, "gflops_bf16": peak["bf16"] / 1e9,
                                    "gflops_fp32": peak["fp32"] / 1e9},
        seconds={"data": round(data_s, 1), "timing": round(timing_s, 1)}, quick=args.quick, recipes=rows,
        paired=paired)
    print_table(res)
    return res


def paired_only(args, llm: str, text, speech: Speech, dev: Speech, load_before: str) -> dict:
    """--paired-only: the paired run alone, in its own result file (the timing table stays as it is)."""
    from bench.common import write_result

    paired = paired_run(args, llm, text, speech, dev)
    final = {name: arm["curve"][-1]["dev_loss"] for name, arm in paired["arms"].items()}
    return write_result(
        "pretrained_speed_paired", f"dev loss after {args.paired * args.batch_utts} utterances ({args.recommend})",
        "nats per transcript token", final[args.recommend], final[BASELINE], False, recommend=args.recommend,
        llm="stand-in (quick)" if args.quick else args.llm, **cpu_facts(), threads=torch.get_num_threads(),
        cheap_precision=args.cheap_precision,
        load_average_before=load_before, load_average_after=load_average(), speech=speech.source, quick=args.quick,
        paired=paired)


def print_table(res: dict) -> None:
    print(f"{'recipe':11s}{'tok/utt':>8s}{'trainable':>11s}{'s/step':>8s}{'utt/s':>7s}{'tok/s':>7s}"
          f"{'GF/utt':>8s}{'MFU bf16':>9s}{'ratio':>7s}")
    for r in res["recipes"]:
        if "derived_from" in r:
            print(f"{r['recipe']:11s}{r['tokens_per_utt']:8.1f}{'':27s}{r['utt_per_s']:7.2f}{'':23s}{r['ratio']:6.2f}×")
            continue
        print(f"{r['recipe']:11s}{r['tokens_per_utt']:8.1f}{r['trainable'] / 1e6:10.1f}M{r['s_per_step']:8.2f}"
              f"{r['utt_per_s']:7.2f}{r['tokens_per_s']:7.0f}{r['gflops_per_utt']:8.1f}{r['mfu_bf16']:9.1%}"
              f"{r['ratio']:6.2f}×")
    print(f"matmul {res['matmul']['gflops_bf16']:.0f} GFLOP/s bf16, {res['matmul']['gflops_fp32']:.0f} fp32; "
          f"{res['lscpu_model']}, avx512_bf16 {res['avx512_bf16']}; load {res['load_average_before']} before, "
          f"{res['load_average_after']} after; {res['machine']}")


if __name__ == "__main__":
    main()
