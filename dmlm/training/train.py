"""`dmlm train`: the training loop (accelerate), checkpoints, exact resume, logs.

Design decisions:
- `accelerate` owns devices, DDP/FSDP/DeepSpeed and mixed precision; dmlm owns the data
  order and the loss. The loss denominators of a step are summed over its micro-batches and
  all-reduced over ranks *before* the forward passes (they depend only on masks), so the
  length-normalized loss is exact under accumulation and data parallelism (see `dmlm.training.loss`).
- Data order is a pure function of (seed, epoch): length-bucketed batches under a token
  budget, shuffled, or with `train.packing` rows of several examples (`dmlm.training.packing`).
  The position in that order is training state, so `--resume` continues exactly where a
  killed run stopped (same batches, same losses).
- The LR schedule (linear warmup, cosine to `min_lr_ratio`) runs on a progress fraction,
  which is step/steps, or, with a time budget, the larger of that and elapsed/max_minutes:
  the demo anneals fully within its budget on any machine.
- Checkpoint = Hugging Face model dir (`dmlm.modeling.save_checkpoint`) with the training state
  (optimizer, RNG, data position, config) in its `training_state/`: one temp folder, checksummed
  and renamed into place, so a kill -9 anywhere in a save resumes from the previous or the new
  step, never from a mix. Resume verifies the checksums and that the parts name one step, and cuts
  the log back to that step, so a resumed run is bitwise the uninterrupted one. What the state
  holds and how it is read: `dmlm.training.state`.
- One writer per run folder: `OUT.lock` (flock; the OS drops it when the holder dies however it
  dies, so a killed run's lock never blocks a rerun) refuses a second `dmlm train` naming its pid.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from dmlm.data.manifest import read_manifest
from dmlm.data.mixture import Mixture
from dmlm.data.shards import TokenStore, exclusive_lock
from dmlm.data.split import Split
from dmlm.modeling import (
    CheckpointFiles,
    build_model,
    fault_point,
    load_checkpoint,
    model_positions,
    model_summary,
    recover_interrupted_save,
    save_checkpoint,
)
from dmlm.tasks import Rendered, Sample, Sources, get_task, parse_spec, render
from dmlm.tokenizers.speech import Codebook
from dmlm.tokenizers.text import TextTokenizer, unified_hf_tokenizer
from dmlm.training.config import RunConfig
from dmlm.training.loss import loss_counts, loss_weights, multimodal_loss
from dmlm.training.packing import (
    check_packing,
    collate_packed,
    packed_attention_mask,
    packed_batches,
    packed_padding_share,
    row_length,
)
from dmlm.training.state import (
    RNG_FILE,
    cut_log,
    lock_path,
    restore_rng_state,
    rng_state,
    save_optimizer_state,
    state_dir_of,
)
from dmlm.util.config import dump_config
from dmlm.util.errors import UserError
from dmlm.util.progress import tqdm
from dmlm.vocab import Vocab

log = logging.getLogger(__name__)


# -- data ---------------------------------------------------------------------------------

def asr_samples(manifest: str | Path, store: TokenStore, text: TextTokenizer, codebook: Codebook | None) -> list[Sample]:
    """ASR samples of a manifest whose units are in `store`; the store must match the codebook."""
    if codebook is not None:
        codebook.check(store.fingerprint, f"token store {store.prefix}")
    return task_samples("asr", Sources(manifest, text, speech=store))


def task_samples(spec: str, sources: Sources, speakers: list[str] | None = None) -> list[Sample]:
    """Every sample task `spec` can take from the manifest of `sources` (records lacking its modality
    are skipped); with `speakers`, only records of those speakers."""
    name, lang = parse_spec(spec)
    task = get_task(name)
    wanted = set(speakers) if speakers is not None else None
    out = []
    for r in read_manifest(sources.manifest):
        if wanted is not None and r.speaker not in wanted:
            continue
        s = task.sample(r, sources, lang)
        if s is not None:
            out.append(s)
    return out


def bucket_batches(lengths: np.ndarray, batch_tokens: int, seed: int, epoch: int) -> list[list[int]]:
    """Batches of similar length under a padded-token budget; a pure function of (seed, epoch)."""
    rng = np.random.default_rng([seed, epoch])
    perm = rng.permutation(len(lengths))
    batches: list[list[int]] = []
    chunk = 2048  # sort within chunks: buckets stay random across the epoch
    for s in range(0, len(perm), chunk):
        idx = sorted(perm[s : s + chunk].tolist(), key=lambda i: lengths[i])
        cur: list[int] = []
        longest = 0
        for i in idx:
            longest_new = max(longest, int(lengths[i]))
            if cur and longest_new * (len(cur) + 1) > batch_tokens:
                batches.append(cur)
                cur, longest_new = [], int(lengths[i])
            cur.append(i)
            longest = longest_new
        if cur:
            batches.append(cur)
    order = rng.permutation(len(batches))
    return [batches[i] for i in order]


def collate(items: list[Rendered], pad: int) -> dict[str, torch.Tensor]:
    """Right-padded tensors of one example per row: `collate_packed` with rows of one, without the
    packing fields (positions and masks are then the model's defaults)."""
    out = collate_packed([[r] for r in items], pad)
    return {k: out[k] for k in ("input_ids", "attention_mask", "target", "modality")}


@dataclass
class Progress:
    step: int = 0
    epoch: int = 0
    batch: int = 0  # index of the next micro-batch within the epoch
    elapsed: float = 0.0  # training seconds so far
    tokens: int = 0
    world_size: int | None = None  # ranks that took the batches so far: resuming with another count changes them
    grad_accum: int | None = None  # (None: a state written before dmlm recorded them; not checked)


class BatchStream:
    """Endless micro-batches in the deterministic order; its position is `Progress`.

    A micro-batch is a list of examples, or with `packing` a list of rows of examples.
    """

    def __init__(self, rendered: list[Rendered], batch_tokens: int, seed: int, progress: Progress,
                 mixture: Mixture | None = None, pools: dict[str, tuple[int, int]] | None = None,
                 packing: bool = False, pack_tokens: int = 0):
        self.rendered, self.batch_tokens, self.seed, self.p = rendered, batch_tokens, seed, progress
        self.packing = packing
        self.mixture = mixture or Mixture([len(rendered)], [1.0], seed)
        self.starts = [a for a, _ in (pools or {"": (0, len(rendered))}).values()]
        all_lengths = np.array([len(r.ids) for r in rendered])
        if all_lengths.max() > batch_tokens:
            worst = rendered[int(all_lengths.argmax())]
            raise UserError(f"a {worst.task} sequence of {all_lengths.max()} tokens exceeds train.batch_tokens={batch_tokens}")
        self.row_tokens = row_length(int(all_lengths.max()), batch_tokens, pack_tokens)  # fixed for the whole run
        self._load(progress.epoch)
        self.lengths = self._lengths  # of the first epoch loaded: what the padding share is measured on

    def _load(self, epoch: int) -> None:
        self._items = [self.starts[t] + i for t, i in self.mixture.epoch(epoch)]
        self._lengths = np.array([len(self.rendered[i].ids) for i in self._items])
        if self.packing:
            self._epoch_batches = packed_batches(self._lengths, self.batch_tokens, self.row_tokens, self.seed, epoch)
        else:
            self._epoch_batches = bucket_batches(self._lengths, self.batch_tokens, self.seed, epoch)

    def next(self) -> list[Rendered] | list[list[Rendered]]:
        if self.p.batch >= len(self._epoch_batches):
            self.p.epoch += 1
            self.p.batch = 0
            self._load(self.p.epoch)
        idx = self._epoch_batches[self.p.batch]
        self.p.batch += 1
        if self.packing:
            return [[self.rendered[self._items[i]] for i in row] for row in idx]
        return [self.rendered[self._items[i]] for i in idx]


def padding_share(lengths: np.ndarray, batch_tokens: int, seed: int, row_tokens: int = 0) -> dict[str, float]:
    """Share of padded positions in one epoch's micro-batches: length-bucketed vs. random order.

    Both fill micro-batches under the same padded-token budget; the random baseline is what
    plain shuffled batching would waste. With `row_tokens` (packing), also "packed": rows of
    that length, several examples each.
    """
    def share(batches: list[list[int]]) -> float:
        real = sum(int(lengths[i]) for b in batches for i in b)
        padded = sum(len(b) * max(int(lengths[i]) for i in b) for b in batches)
        return 1 - real / max(padded, 1)

    rng = np.random.default_rng([seed, 0])
    random_batches: list[list[int]] = []
    cur: list[int] = []
    for i in rng.permutation(len(lengths)).tolist():
        if cur and max(int(lengths[j]) for j in cur + [i]) * (len(cur) + 1) > batch_tokens:
            random_batches.append(cur)
            cur = []
        cur.append(i)
    if cur:
        random_batches.append(cur)
    out = {"bucketed": share(bucket_batches(lengths, batch_tokens, seed, 0)), "random": share(random_batches)}
    if row_tokens:
        out["packed"] = packed_padding_share(lengths, batch_tokens, row_tokens, seed)
    return out


def lr_factor(progress: float, warmup_frac: float, min_ratio: float) -> float:
    if progress < warmup_frac:
        return max(progress / warmup_frac, 1e-3)
    t = min(1.0, (progress - warmup_frac) / max(1e-8, 1 - warmup_frac))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * t))


# -- setup ----------------------------------------------------------------------------------

def training_texts(manifests: list[str]) -> list[str]:
    """Every string a text tokenizer must cover: transcripts, translations, captions."""
    texts = []
    for m in manifests:
        for r in read_manifest(m):
            texts += [t for t in [r.text, r.caption, *(r.translations or {}).values()] if t and t.strip()]
    return texts


def build_text_tokenizer(cfg: RunConfig) -> TextTokenizer:
    """data.text_tokenizer if set; else the LLM's own (init=pretrained/random; with model.trim_vocab cut to the
    training texts, a pure function of them, so a resumed run rebuilds the same one); else a BPE trained on them."""
    cfg.model.validate()
    if cfg.data.text_tokenizer:
        if cfg.model.trim_vocab:
            raise UserError("model.trim_vocab trims the LLM's own tokenizer (its ids name the embedding rows kept); "
                            f"unset data.text_tokenizer ({cfg.data.text_tokenizer}) or model.trim_vocab")
        return TextTokenizer.load(cfg.data.text_tokenizer)
    if cfg.model.from_llm:
        from dmlm.util.assets import llm_dir

        text = TextTokenizer.load(llm_dir(cfg.model.llm))
        if cfg.model.trim_vocab:
            from dmlm.tokenizers.trim import trim_tokenizer

            full = text.vocab_size
            text = trim_tokenizer(text, training_texts([cfg.data.train, *cfg.data.unpaired]))
            log.info("text vocabulary trimmed to the training texts: %d of %d tokens", text.vocab_size, full)
        return text
    texts = training_texts([cfg.data.train, *cfg.data.unpaired])
    if not texts:
        raise UserError(f"{cfg.data.train}: no 'text', 'translations' or 'caption' in any record to train the BPE on")
    return TextTokenizer.train_bpe(texts, cfg.data.bpe_vocab_size)


@dataclass
class Setup:
    vocab: Vocab
    text: TextTokenizer
    codebook: Codebook | None
    image_codebook: object | None
    train: list[Rendered]  # every task's examples, task by task (offsets in `pools`)
    pools: dict[str, tuple[int, int]]  # spec -> [start, end) in `train`
    mixture: Mixture
    dev: list[Rendered]
    dev_samples: list[Sample]


def mixture_weights(cfg: RunConfig) -> list[float]:
    w = cfg.data.weights or [1.0] * len(cfg.data.tasks)
    if len(w) != len(cfg.data.tasks):
        raise UserError(f"data.weights has {len(w)} entries but data.tasks has {len(cfg.data.tasks)} ({cfg.data.tasks})")
    return list(w)


def setup(cfg: RunConfig) -> Setup:
    cfg.validate()
    specs = cfg.data.tasks
    if not specs:
        raise UserError("data.tasks is empty: name at least one task, e.g. data.tasks=[asr]")
    stray = sorted(set(cfg.data.unpaired_only) - set(specs))
    if stray:
        raise UserError(f"data.unpaired_only names tasks {stray} that are not in data.tasks {specs}")
    if cfg.data.unpaired_only and not cfg.data.unpaired:
        raise UserError(f"data.unpaired_only {cfg.data.unpaired_only}: those tasks read only data.unpaired, which is empty")
    stray = sorted(set(cfg.data.speakers) - set(specs))
    if stray:
        raise UserError(f"data.speakers names tasks {stray} that are not in data.tasks {specs}")
    modalities = set()
    for spec in specs:
        t = get_task(parse_spec(spec)[0])
        modalities |= {t.source, t.target} - {None}
    codebook = Codebook.load(cfg.data.codebook) if cfg.data.codebook else None
    if "speech" in modalities and codebook is None:
        raise UserError(f"tasks {specs} read or write speech: set data.codebook to the speech codebook")
    image_cb = None
    if cfg.data.image_codebook:
        from dmlm.tokenizers.image import ImageCodebook

        image_cb = ImageCodebook.load(cfg.data.image_codebook)
    if "image" in modalities and image_cb is None:
        raise UserError(f"tasks {specs} read or write images: set data.image_codebook to the image codebook")
    text = build_text_tokenizer(cfg)
    fps = {m: cb.fingerprint for m, cb in (("speech", codebook), ("image", image_cb)) if cb is not None}
    vocab = Vocab(text_size=text.vocab_size, speech_size=codebook.k if codebook else 0,
                  image_size=image_cb.k if image_cb else 0, bos_id=text.bos_id, eos_id=text.eos_id, fingerprints=fps)

    def sources(manifest: str) -> Sources:
        split = Split(manifest, cfg.data.units or None)
        return Sources(manifest, text, split.store("speech", codebook, required=False),
                       split.store("image", image_cb, required=False))

    train_sources = [sources(m) for m in [cfg.data.train, *cfg.data.unpaired]]
    dev_sources = sources(cfg.data.dev) if cfg.data.dev else None
    rendered: list[Rendered] = []
    pools: dict[str, tuple[int, int]] = {}
    dev: list[Rendered] = []
    dev_samples: list[Sample] = []
    for spec in specs:
        task = get_task(parse_spec(spec)[0])
        start = len(rendered)
        for k, src in enumerate(train_sources):
            if k == 0 and spec in cfg.data.unpaired_only:  # train_sources[0] is data.train
                continue
            rendered += [render(task, s, vocab, spec) for s in task_samples(spec, src, cfg.data.speakers.get(spec))]
        pools[spec] = (start, len(rendered))
        if start == len(rendered) and spec in cfg.data.unpaired_only:
            raise UserError(f"task {spec} (data.unpaired_only): no record it can read in data.unpaired {cfg.data.unpaired}")
        if start == len(rendered) and spec in cfg.data.speakers:
            raise UserError(f"task {spec}: no training record of speakers {cfg.data.speakers[spec]} "
                             f"(data.speakers) in {[s.manifest for s in train_sources]}")
        if dev_sources is not None:
            ds = task_samples(spec, dev_sources, cfg.data.speakers.get(spec))
            dev += [render(task, s, vocab, spec) for s in ds]
            dev_samples += ds
    mixture = Mixture([b - a for a, b in pools.values()], mixture_weights(cfg), cfg.train.seed, names=specs)
    return Setup(vocab, text, codebook, image_cb, rendered, pools, mixture, dev, dev_samples)


def check_fits(model, S: Setup) -> None:
    """Refuse examples longer than the model's positions (past them it would train on positions it
    cannot represent, or crash), counting them and naming the longest."""
    limit = model_positions(model)
    for split, rendered in (("training", S.train), ("dev", S.dev)):
        over = [r for r in rendered if limit is not None and len(r.ids) > limit]
        if over:
            worst = max(over, key=lambda r: len(r.ids))
            raise UserError(f"{len(over)} {split} example(s) are longer than the model's {limit} positions "
                            f"(model.max_positions): the longest, a {worst.task} example, has {len(worst.ids)} "
                            "tokens; raise model.max_positions or leave out the longest records")


# -- loop -----------------------------------------------------------------------------------

def _forward(model, batch: dict):
    if "segment" in batch:  # packed rows: positions restart and attention stops at each example
        return model(input_ids=batch["input_ids"], attention_mask=packed_attention_mask(batch["segment"]),
                     position_ids=batch["position_ids"], use_cache=False)
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])


def _step_loss(model, batch: dict, loss: str, counts: torch.Tensor, lambdas: torch.Tensor) -> torch.Tensor:
    out = _forward(model, batch)
    w = loss_weights(loss, batch["attention_mask"], batch["target"], batch.get("segment"))
    return multimodal_loss(out.logits, batch["input_ids"], w, batch["modality"], loss, counts, lambdas)


@torch.no_grad()
def dev_loss(model, rendered: list[Rendered], cfg: RunConfig, pad: int, device) -> dict[str, float]:
    """Mean per-token target loss on the dev set: over all tasks ("all") and per task spec."""
    model.eval()
    sums: dict[str, list[float]] = {}
    for idx in bucket_batches(np.array([len(r.ids) for r in rendered]), cfg.train.batch_tokens, 0, 0):
        items = [rendered[i] for i in idx]
        b = {k: v.to(device) for k, v in collate(items, pad).items()}
        logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
        ce = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2).float(), b["input_ids"][:, 1:],
                                               reduction="none")  # (B, T-1)
        w = loss_weights("target", b["attention_mask"], b["target"])
        nll, n = (ce * w).sum(1).tolist(), w.sum(1).tolist()
        for r, x, c in zip(items, nll, n):
            acc = sums.setdefault(r.task, [0.0, 0.0])
            acc[0] += x
            acc[1] += c
    model.train()
    out = {"all": sum(v[0] for v in sums.values()) / max(1.0, sum(v[1] for v in sums.values()))}
    out.update({t: v[0] / max(v[1], 1.0) for t, v in sorted(sums.items())})
    return out


def _dev_record(losses: dict[str, float]) -> dict[str, float]:
    rec = {"dev_loss": losses["all"]}
    if len(losses) > 2:  # several tasks: one curve each
        rec.update({f"dev_loss_{t}": v for t, v in losses.items() if t != "all"})
    return rec


def _fraction(progress: Progress, cfg: RunConfig) -> float:
    """How much of the step (or time) budget is done; >= 1 means finished."""
    f = progress.step / cfg.train.steps
    if cfg.train.max_minutes > 0:
        f = max(f, progress.elapsed / 60 / cfg.train.max_minutes)
    return f


def _finished(cfg: RunConfig, state_dir: Path) -> bool:
    """A saved run of exactly this config whose budget is spent (anything else goes the full resume path)."""
    try:
        saved = (state_dir / "config.yaml").read_text()
        progress = Progress(**json.loads((state_dir / "progress.json").read_text()))
    except (OSError, ValueError, TypeError):
        return False
    return saved == dump_config(cfg) and progress.step > 0 and _fraction(progress, cfg) >= 1.0


def train(cfg: RunConfig, resume: bool = False, stop_at: int | None = None, overwrite: bool = False) -> Path:
    """Train; returns the checkpoint folder. A folder that already holds a checkpoint or training state
    needs `resume` (continue it) or `overwrite` (start again, replacing it). `stop_at` simulates an
    interruption (tests). Only one process at a time trains into a folder (`OUT.lock`)."""
    cfg.validate()
    out = Path(cfg.train.out)
    if int(os.environ.get("RANK", "0")) != 0:  # only the main process writes (torchrun / accelerate launch)
        return _train(cfg, resume, stop_at, overwrite)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"train.out={out}: cannot create its folder ({e.strerror or e})") from None
    with exclusive_lock(lock_path(out), f"{out}: training"):
        recover_interrupted_save(out)
        return _train(cfg, resume, stop_at, overwrite)


def _train(cfg: RunConfig, resume: bool, stop_at: int | None, overwrite: bool) -> Path:
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    out = Path(cfg.train.out)
    state_dir = state_dir_of(out)
    legacy_state = out.with_name(out.name + ".state")
    if not resume and not overwrite and (CheckpointFiles.is_checkpoint(out) or legacy_state.is_dir()):
        raise UserError(f"{out} already holds a trained model (or its training state {state_dir}); pass --resume "
                        "to continue it or --overwrite to train it again from scratch")
    precision = cfg.train.precision
    if precision == "auto":  # bf16 autocast where it is native (dmlm.util.precision)
        from dmlm.util.precision import native_bf16

        precision = "bf16" if native_bf16("cuda" if torch.cuda.is_available() else "cpu") else "fp32"
    acc = Accelerator(mixed_precision="bf16" if precision == "bf16" else "no", cpu=not torch.cuda.is_available())
    set_seed(cfg.train.seed)
    if resume and _finished(cfg, state_dir):  # before setup: BPE training and rendering take ~30 s on the demo
        log.info("%s: already trained with this config", out)
        return out
    S = setup(cfg)
    progress = Progress()
    if resume and (state_dir / "progress.json").is_file():
        files = CheckpointFiles(out)
        files.verify(state=True)  # checksums of model and state, and one step in all parts
        ck = load_checkpoint(files)
        if ck.vocab.to_dict() != S.vocab.to_dict():
            raise UserError(f"{out}: checkpoint vocabulary differs from this config's; cannot resume")
        model = ck.model.train()
        progress = Progress(**json.loads((state_dir / "progress.json").read_text()))
        if progress.world_size is not None and (progress.world_size, progress.grad_accum) != (
            acc.num_processes, cfg.train.grad_accum
        ):
            raise UserError(
                f"{state_dir}: this run was trained with {progress.world_size} process(es) x grad_accum "
                f"{progress.grad_accum}; resuming with {acc.num_processes} x {cfg.train.grad_accum} would change the "
                f"global batch and break exact resume. Relaunch with --nproc_per_node {progress.world_size} "
                f"(or set train.grad_accum so that processes x grad_accum matches and start a new run)"
            )
        log.info("resuming from step %d", progress.step)
    else:
        if resume and acc.is_main_process:  # a first run under --resume (studies, the demo) is normal; a
            # checkpoint without its state is not: that one is worth a warning
            (log.warning if CheckpointFiles.is_checkpoint(out) else log.info)(
                "--resume given but %s has no training state; starting fresh", state_dir)
        model = build_model(cfg.model, S.vocab, seed=cfg.train.seed, text_rows=S.text.source_ids)
    hf_tok = unified_hf_tokenizer(S.text, S.vocab)
    check_fits(model, S)

    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.train.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.train.lr, betas=(0.9, 0.95))
    if cfg.train.packing:
        check_packing(model)  # before `prepare`: in fp32, outside autocast, the test is exact
    model, opt = acc.prepare(model, opt)
    if progress.step > 0:
        opt.load_state_dict(torch.load(state_dir / "optimizer.pt", map_location="cpu", weights_only=True))
        restore_rng_state(state_dir)

    progress.world_size, progress.grad_accum = acc.num_processes, cfg.train.grad_accum
    packing = cfg.train.packing
    stream = BatchStream(S.train, cfg.train.batch_tokens, cfg.train.seed, progress, S.mixture, S.pools, packing,
                         cfg.train.pack_tokens)
    pad_share = padding_share(stream.lengths, cfg.train.batch_tokens, cfg.train.seed,
                              stream.row_tokens if packing else 0)
    lambdas = torch.tensor(cfg.train.lambdas, dtype=torch.float32, device=acc.device)
    writer = None
    log_path = out.with_name(out.name + ".log.jsonl")
    if acc.is_main_process:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(out.with_name(out.name + ".tb")))
        if progress.step == 0:
            log_path.unlink(missing_ok=True)
        else:
            cut_log(log_path, progress.step)
    info = model_summary(cfg.model, acc.unwrap_model(model))
    info["padding_share"] = pad_share
    log.info("padding share of micro-batches: %.1f %% length-bucketed vs %.1f %% in random order",
             100 * pad_share["bucketed"], 100 * pad_share["random"])
    if packing:
        log.info("packing (used): %.1f %% padding in rows of %d tokens", 100 * pad_share["packed"], stream.row_tokens)
    log.info("model: %.2fM parameters (%.2fM non-embedding), vocab %d", info["params"] / 1e6,
             info["params_non_embedding"] / 1e6, S.vocab.size)
    warm = cfg.train.warmup_steps / max(1, cfg.train.steps)

    def frac() -> float:
        return _fraction(progress, cfg)

    def write_state(folder: Path) -> None:
        folder.mkdir()
        save_optimizer_state(opt, folder / "optimizer.pt")
        fault_point("state", progress.step)  # inside the state write: the optimizer written, the rest not
        (folder / RNG_FILE).write_text(json.dumps(rng_state()))
        (folder / "progress.json").write_text(json.dumps(asdict(progress)))
        (folder / "config.yaml").write_text(dump_config(cfg))

    def save() -> None:
        if not acc.is_main_process:
            return
        meta = {"tasks": cfg.data.tasks, "config": asdict(cfg), "step": progress.step, "model_summary": info}
        codebooks = {m: Path(p) for m, p in (("speech", cfg.data.codebook), ("image", cfg.data.image_codebook)) if p}
        save_checkpoint(out, acc.unwrap_model(model), hf_tok, S.vocab, meta, codebooks, write_state=write_state)
        if legacy_state.is_dir():  # an older run's state, superseded by the one inside the checkpoint
            shutil.rmtree(legacy_state, ignore_errors=True)

    if progress.step > 0 and frac() >= 1.0:  # a finished run, resumed: nothing to do, nothing rewritten
        log.info("%s: already trained (%d steps)", out, progress.step)
        return out
    budget = f" (budget {cfg.train.max_minutes:g} min)" if cfg.train.max_minutes > 0 else ""
    bar = tqdm(total=None if budget else cfg.train.steps, initial=progress.step, desc=f"train{budget}", unit="step",
               disable=not acc.is_main_process)
    model.train()
    dev_at = saved_at = None  # the steps of the last dev pass and the last save in this invocation
    while frac() < 1.0 and (stop_at is None or progress.step < stop_at):
        t0 = time.time()
        # every rank walks the same global order; rank r takes micro-batches r, r+world, …
        step_batches = [stream.next() for _ in range(cfg.train.grad_accum * acc.num_processes)]
        my_batches = step_batches[acc.process_index :: acc.num_processes]
        micro = [(collate_packed if packing else collate)(b, S.vocab.pad) for b in my_batches]
        micro = [{k: v.to(acc.device) for k, v in b.items()} for b in micro]
        counts = sum(loss_counts(cfg.train.loss, loss_weights(cfg.train.loss, b["attention_mask"], b["target"],
                                                              b.get("segment")), b["modality"][:, 1:]) for b in micro)
        counts = acc.reduce(counts, reduction="sum")  # global denominators over ranks
        f = lr_factor(frac(), warm, cfg.train.min_lr_ratio)
        for g in opt.param_groups:
            g["lr"] = cfg.train.lr * f
        step_loss = 0.0
        for i, b in enumerate(micro):
            ctx = acc.no_sync(model) if i < len(micro) - 1 else contextlib.nullcontext()
            with ctx:
                with acc.autocast():
                    loss = _step_loss(model, b, cfg.train.loss, counts, lambdas)
                acc.backward(loss * acc.num_processes)  # DDP averages grads; the loss is already global
            step_loss += float(loss.detach())
        step_loss = float(acc.reduce(torch.tensor(step_loss, device=acc.device), reduction="sum"))
        gnorm = acc.clip_grad_norm_(model.parameters(), cfg.train.clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        local = torch.tensor([float(b["attention_mask"].sum()) for b in micro]).sum().reshape(1)
        local_mod = torch.tensor([sum(float(((b["modality"] == m) & (b["attention_mask"] > 0)).sum()) for b in micro)
                                  for m in range(3)])
        my_examples = [r for b in my_batches for r in ([r for row in b for r in row] if packing else b)]
        local_tasks = torch.tensor([float(sum(r.task == t for r in my_examples)) for t in S.pools])
        tok = acc.reduce(torch.cat([local, local_mod, local_tasks]).to(acc.device), reduction="sum").tolist()
        n_tok, mod_tok, task_counts = int(tok[0]), [int(x) for x in tok[1:4]], [int(x) for x in tok[4:]]
        progress.step += 1
        progress.tokens += n_tok
        progress.elapsed += time.time() - t0
        if acc.num_processes > 1:  # ranks must agree on when the time budget ends
            import torch.distributed as dist

            t = torch.tensor([progress.elapsed], dtype=torch.float64)
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            progress.elapsed = float(t)
        bar.update(1)
        rec = {"step": progress.step, "loss": step_loss, "lr": cfg.train.lr * f, "grad_norm": float(gnorm),
               "tokens": n_tok, "tokens_text": mod_tok[0], "tokens_speech": mod_tok[1], "tokens_image": mod_tok[2],
               "elapsed": progress.elapsed}
        if len(S.pools) > 1:
            rec.update({f"examples_{t}": n for t, n in zip(S.pools, task_counts)})
        if progress.step % cfg.train.eval_every == 0 and S.dev:
            rec.update(_dev_record(dev_loss(acc.unwrap_model(model), S.dev, cfg, S.vocab.pad, acc.device)))
            dev_at = progress.step
        if acc.is_main_process and (progress.step % cfg.train.log_every == 0 or "dev_loss" in rec):
            tok_s = progress.tokens / max(progress.elapsed, 1e-9)
            rec["tokens_per_s"] = tok_s
            bar.set_postfix(loss=f"{step_loss:.3f}", tok_s=f"{tok_s:.0f}", **({"dev": f"{rec['dev_loss']:.3f}"} if "dev_loss" in rec else {}))
            with log_path.open("a") as fh:
                fh.write(json.dumps(rec) + "\n")
            for k, v in rec.items():
                if k != "step":
                    writer.add_scalar(f"dev/{k[4:]}" if k.startswith("dev_") else f"train/{k}", v, progress.step)
        if progress.step % cfg.train.save_every == 0:
            save()
            saved_at = progress.step
    bar.close()
    # the end of training: a dev pass and a save, unless the last step has just had them
    if S.dev and acc.is_main_process and dev_at != progress.step:
        with log_path.open("a") as fh:
            fh.write(json.dumps({"step": progress.step, **_dev_record(dev_loss(acc.unwrap_model(model), S.dev, cfg, S.vocab.pad, acc.device)),
                                 "elapsed": progress.elapsed}) + "\n")
    if saved_at != progress.step:
        save()
    if writer:
        writer.close()
    acc.wait_for_everyone()
    return out


def plot_losses(log_path: str | Path, out_png: str | Path) -> Path:
    """Training loss and dev loss against steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in Path(log_path).read_text().splitlines() if line.strip()]
    tr = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    dv = [(r["step"], r["dev_loss"]) for r in rows if "dev_loss" in r]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    if tr:
        ax.plot(*zip(*tr), label="train loss (objective)", lw=1)
    if dv:
        ax.plot(*zip(*dv), "o-", label="dev loss (transcript tokens)", lw=1.5)
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats)")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_png, dpi=120)
    plt.close(fig)
    return Path(out_png)
