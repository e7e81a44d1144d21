"""Train a unit vocoder on a manifest and its token store.

Design decisions:
- Targets are computed on the fly (load the wav, one STFT) and kept in memory as float16 up to
  `cache_gb`: the unit-table pass fills the cache, so on the demo every training step reads
  its batch from memory (a quarter of a step went to reading wavs and STFTs before); a corpus
  larger than the budget computes the rest on the fly, so memory stays bounded. Nothing is
  written to disk, so there is no cache to go stale.
- Unit i of a clip covers spectrogram frames [i*r, (i+1)*r) (r = 100 Hz / the codebook's
  frame rate): Whisper frames and the STFT frames are both centered on multiples of the
  10 ms hop, so the units line up with the target without any alignment step.
- Codebooks that deduplicate units: the token store has lost the run-lengths, so training
  re-encodes the audio with the codebook without deduplication (`Codebook.features`, once per
  record, cached as ints) and trains the duration predictor on the runs it finds.
- The matching set (`Vocoder.refine`: real frames of the output voice by unit) is built after
  the last step from the same cached targets, in seconds; a vocoder saved before it (a killed
  run, an older version) gets one from `add_matching_set`.
- A saved vocoder is reused for a new config when only its synthesis or matching settings differ
  (`reuse_vocoder`: it writes them through `VocoderFiles.update` and rebuilds the matching set
  if needed); any other difference, or other training manifests, is an error, never a silent mix.
- The learning rate follows `dmlm.util.schedule.warmup_cosine` (to 10 %), the schedule the
  model's training uses too.
- Several manifests (each with its units store) pool their records: audio of the output voice
  need not be transcribed or paired, so more of it can come from anywhere (the demo adds
  unpaired sentences spoken by its neural voice, `prepare.neural_extra`).
- A run is bounded by `steps`, `max_minutes` or both; the learning rate follows the progress
  of whichever bound is nearer, so a time-boxed demo run still anneals. The vocoder is saved
  atomically (temp folder + rename) every `save_every_minutes` and at the end: a killed run
  leaves the last complete vocoder, never half of one.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from dmlm.data.manifest import Record, read_manifest
from dmlm.data.shards import TokenStore
from dmlm.tokenizers.speech import Codebook, pool_frames
from dmlm.util.audio import load_audio
from dmlm.util.errors import UserError
from dmlm.util.progress import tqdm
from dmlm.util.schedule import warmup_cosine
from dmlm.vocoder.config import VocoderConfig
from dmlm.vocoder.files import UPDATABLE_KINDS, VocoderFiles
from dmlm.vocoder.matching import MatchingSet
from dmlm.vocoder.network import UnitToSpec, pad_batch, run_lengths
from dmlm.vocoder.spectrogram import log_magnitude
from dmlm.vocoder.vocoder import Vocoder

log = logging.getLogger(__name__)
UNKNOWN_VOICE = "unknown"  # records without a speaker share one embedding
Manifests = str | Path | Sequence[str | Path]  # one manifest, or several whose records the vocoder pools
Stores = str | Path | None | Sequence[str | Path | None]  # their units stores, one per manifest


class _Data:
    """Records with audio and units, from one or more (manifest, units store) sources; `batch(rng)`
    gives padded units, target spectrograms and masks."""

    def __init__(self, sources: Sequence[tuple[Path, TokenStore | None]], codebook: Codebook, cfg: VocoderConfig):
        wanted = set(cfg.speakers or ())
        recs: list[Record] = []
        self._source: dict[str, tuple[Path, TokenStore | None]] = {}  # record id -> where its audio and units are
        for manifest, store in sources:
            for r in read_manifest(manifest):
                if not r.audio or (wanted and r.speaker not in wanted):
                    continue
                if r.id in self._source:
                    raise UserError(f"{manifest}: record {r.id!r} is also in {self._source[r.id][0]}; the "
                                     "vocoder's manifests must not share record ids")
                self._source[r.id] = (manifest, store)
                recs.append(r)
        if not recs:
            names = ", ".join(str(m) for m, _ in sources)
            raise UserError(f"{names}: no records with audio" + (f" from speakers {cfg.speakers}" if cfg.speakers else ""))
        self.records, self.cb, self.cfg = recs, codebook, cfg
        self.r = cfg.upsample
        self._units: dict[str, np.ndarray] = {}
        self._cache: dict[str, tuple[np.ndarray, torch.Tensor]] = {}
        self._cache_left = int(cfg.cache_gb * 2**30)

    def units(self, recs: list[Record], wavs: list[np.ndarray]) -> list[np.ndarray]:
        """Frame-rate (not deduplicated) units of each record."""
        if not self.cfg.dedup:
            return [np.asarray(self._source[r.id][1].get(r.id), dtype=np.int64) for r in recs]
        todo = [i for i, r in enumerate(recs) if r.id not in self._units]
        if todo:
            feats = self.cb.features([wavs[i] for i in todo])
            for i, f in zip(todo, feats):
                self._units[recs[i].id] = self.cb.assign(pool_frames(f, self.cb.settings.pooling))
        return [self._units[r.id] for r in recs]

    def clips(self, recs: list[Record]) -> list[tuple[np.ndarray, torch.Tensor]]:
        """(units, target frames) per record, units cut to those whose frames exist."""
        c = self.cfg
        todo = [r for r in recs if r.id not in self._cache]
        wavs = [load_audio(r.audio_path(self._source[r.id][0])) for r in todo]
        fresh = {}
        for r, wav, u in zip(todo, wavs, self.units(todo, wavs)):
            spec = c.to_target(log_magnitude(torch.from_numpy(wav), c.n_fft, c.hop, c.win_length))  # (N // hop + 1, bins)
            n = min(len(u), len(spec) // self.r)
            u, half = u[:n], spec[: n * self.r].half()  # cached or not, a target is the float16 value: the cache size never changes results
            fresh[r.id] = (u, half.float())
            size = half.numel() * half.element_size() + u.nbytes
            if size <= self._cache_left:
                self._cache[r.id] = (u, half)
                self._cache_left -= size
        return [fresh[r.id] if r.id in fresh else (self._cache[r.id][0], self._cache[r.id][1].float()) for r in recs]

    def table(self, n_clips: int, rng: random.Random, progress: bool) -> torch.Tensor:
        """(k, r * bins) mean target of each (unit, position in unit) over `n_clips` clips;
        units never seen get the overall mean frame."""
        c = self.cfg
        recs = rng.sample(self.records, min(n_clips, len(self.records)))
        total = torch.zeros(c.k, self.r * c.n_bins, dtype=torch.float64)
        count = torch.zeros(c.k, dtype=torch.float64)
        for s in tqdm(range(0, len(recs), 64), desc="vocoder unit table", unit="batch", disable=not progress):
            for u, spec in self.clips(recs[s : s + 64]):
                ids = torch.as_tensor(u, dtype=torch.long)
                total.index_add_(0, ids, spec.reshape(len(u), -1).double())
                count.index_add_(0, ids, torch.ones(len(u), dtype=torch.float64))
        mean = total.sum(0) / count.sum().clamp_min(1)
        return torch.where(count[:, None] > 0, total / count.clamp_min(1)[:, None], mean).float()

    def batch(self, rng: random.Random) -> dict[str, torch.Tensor]:
        c = self.cfg
        recs = rng.sample(self.records, min(c.batch_size, len(self.records)))
        max_units = max(1, int(c.max_seconds * c.frame_rate))
        units, specs = [], []
        for u, spec in self.clips(recs):
            n = len(u)
            start = rng.randrange(0, n - max_units + 1) if n > max_units else 0
            n = min(n, max_units)
            units.append(u[start : start + n])
            specs.append(spec[start * self.r : (start + n) * self.r])
        ids, mask = pad_batch(units)
        target = torch.zeros(len(specs), ids.shape[1] * self.r, c.n_bins)
        for i, s in enumerate(specs):
            target[i, : len(s)] = s
        out = {"units": ids, "mask": mask, "target": target, "frame_mask": mask.repeat_interleave(self.r, dim=1)}
        if c.speaker_conditioning:
            out["speaker"] = torch.tensor([c.voices.index(r.speaker or UNKNOWN_VOICE) for r in recs])
        if c.dedup:
            runs = [run_lengths(u) for u in units]
            out["dedup"], out["dedup_mask"] = pad_batch([d for d, _ in runs])
            out["log_dur"] = torch.zeros(out["dedup"].shape, dtype=torch.float32)
            for i, (_, n_run) in enumerate(runs):
                out["log_dur"][i, : len(n_run)] = torch.log(torch.as_tensor(n_run, dtype=torch.float32))
        return out


def matching_set(data: _Data, cfg: VocoderConfig, progress: bool = False) -> MatchingSet | None:
    """Target frames of up to `cfg.matching_clips` training clips in the output voice (all
    clips for a vocoder without speaker conditioning), grouped by unit; None if matching_clips=0."""
    if not cfg.matching_clips:
        return None
    voice = cfg.voice if cfg.speaker_conditioning else None
    recs = [r for r in data.records if voice is None or (r.speaker or UNKNOWN_VOICE) == voice]
    recs = random.Random(cfg.seed).sample(recs, min(cfg.matching_clips, len(recs)))
    clips = []
    for s in tqdm(range(0, len(recs), 64), desc="vocoder matching set", unit="batch", disable=not progress):
        clips += data.clips(recs[s : s + 64])
    return MatchingSet.build(clips, cfg.k, data.r, voice)


def _store(prefix: str | Path | None, cb: Codebook) -> TokenStore | None:
    """The units token store at `prefix` (None: none), checked against the codebook."""
    if prefix is None:
        return None
    store = TokenStore(prefix)
    cb.check(store.fingerprint, f"token store {store.prefix}")
    return store


def add_matching_set(vocoder_dir: str | Path, manifest: Manifests, units_store_prefix: Stores,
                     codebook: Codebook | str | Path, progress: bool = True, clips: int | None = None) -> Path:
    """Build the matching set of a trained vocoder from its training data, of its config.json's
    `matching_clips` clips (or `clips`, then recorded there, `Vocoder.update`): for one that has
    none (trained before it existed, or killed before its last save) or a new size. The set
    is written atomically into `vocoder_dir`."""
    if clips is not None and clips < 1:
        raise UserError(f"a matching set needs at least 1 clip, got {clips}")
    VocoderFiles(vocoder_dir).finish_interrupted_save()
    cb = codebook if isinstance(codebook, Codebook) else Codebook.load(codebook)
    # the config and its checks, not the old set (138 MB on the demo) that is about to be replaced
    voc = Vocoder.load(vocoder_dir, codebook=cb, matching=False)
    cfg = replace(voc.cfg, cache_gb=0.0)  # every clip is read once
    if clips is not None:
        cfg = replace(cfg, matching_clips=clips)
    m = matching_set(_Data(_sources(manifest, units_store_prefix, cb), cb, cfg), cfg, progress)
    if clips is not None:
        voc.update(matching_clips=clips)  # drops a set of another count
    return m.save(vocoder_dir) if m is not None else VocoderFiles(vocoder_dir).matching_path


def reuse_vocoder(vocoder_dir: str | Path, cfg: VocoderConfig, manifest: Manifests, units_store_prefix: Stores,
                  codebook: Codebook | str | Path) -> None:
    """Bring the vocoder saved in `vocoder_dir` to `cfg` without retraining its network: new
    synthesis and matching settings are written (`VocoderFiles.update`) and the matching set is
    (re)built when `cfg` wants one (knn and matching_clips) and the saved one is missing or lacks
    the frame order that `knn_context` needs. Raises a UserError when `cfg` asks for another
    network (an architecture or training setting differs) or the network learned from other manifests."""
    files = VocoderFiles(vocoder_dir)
    files.finish_interrupted_save()
    saved = files.saved()
    changed = cfg.changed_settings(saved)
    manifests = [manifest] if isinstance(manifest, (str, Path)) else list(manifest)
    trained_on = files.trained_on()
    if trained_on is not None and trained_on != [str(Path(m).resolve()) for m in manifests]:
        changed.append(f"training manifests {trained_on}")
    if changed:
        raise UserError(f"{files.folder}: this vocoder was trained with other settings ({', '.join(changed)}); "
                         f"delete the folder to train it again")
    new = files.update(**{k: getattr(cfg, k) for k in cfg.changed_settings(saved, *UPDATABLE_KINDS)})
    if new:
        log.info("vocoder: new settings without retraining %s", new)
    if cfg.knn_context and not MatchingSet.saved_with_context(files.folder):  # an older set, without frame order
        files.matching_path.unlink(missing_ok=True)
    if cfg.knn and cfg.matching_clips and not files.matching_path.is_file():
        log.info("vocoder: building its matching set (knn=%d, %d clips)", cfg.knn, cfg.matching_clips)
        add_matching_set(vocoder_dir, manifest, units_store_prefix, codebook)


def centroid_embedding(centroids: np.ndarray, dim: int) -> torch.Tensor:
    """(k, D) codebook centroids -> (k, dim) principal components, unit variance per column
    (zero-padded when D < dim)."""
    c = torch.as_tensor(centroids, dtype=torch.float64)
    c = c - c.mean(0)
    u, s, _ = torch.linalg.svd(c, full_matrices=False)
    pcs = u[:, :dim] * s[:dim]
    pcs = pcs / pcs.std(0).clamp_min(1e-8)
    out = torch.zeros(len(c), dim, dtype=torch.float64)
    out[:, : pcs.shape[1]] = pcs
    return out.float()


def losses(net: UnitToSpec, b: dict[str, torch.Tensor], bf16: bool = False) -> dict[str, torch.Tensor]:
    """Masked L1 on log magnitudes (+ MSE on log durations for deduplicating codebooks)."""
    with torch.autocast(b["units"].device.type, dtype=torch.bfloat16, enabled=bf16):  # the losses stay fp32
        pred = net(b["units"], b["mask"], b.get("speaker")).float()  # (B, T*r, bins)
        d = net.duration(b["dedup"], b["dedup_mask"]).float() if net.duration is not None else None
    fm = b["frame_mask"][..., None].float()
    out = {"spec": ((pred - b["target"]).abs() * fm).sum() / (fm.sum() * pred.shape[-1])}
    if d is not None:
        m = b["dedup_mask"].float()
        out["dur"] = (((d - b["log_dur"]) ** 2) * m).sum() / m.sum()
    out["loss"] = out["spec"] + out.get("dur", 0.0)
    return out


def _bf16(precision: str, device: str) -> bool:
    """Whether to train under bf16 autocast."""
    if precision not in ("fp32", "bf16", "auto"):
        raise UserError(f"vocoder precision must be fp32, bf16 or auto, got {precision!r}")
    if precision != "auto":
        return precision == "bf16"
    from dmlm.util.precision import native_bf16

    return native_bf16(device)


def train_vocoder(
    manifest: Manifests, units_store_prefix: Stores, codebook: Codebook | str | Path,
    cfg: VocoderConfig | None = None, out_dir: str | Path = "vocoder", max_minutes: float | None = None,
    steps: int | None = None, save_every_minutes: float = 2.0, device: str = "cpu", progress: bool = True,
) -> Path:
    """Train a vocoder for `codebook` on `manifest` (units from `units_store_prefix`); returns `out_dir`.
    Several manifests (one units store each) pool their records: e.g. untranscribed audio of the
    output voice beside the paired corpus (record ids must not repeat across them).

    At least one of `steps` and `max_minutes` bounds the run. For a codebook that deduplicates
    units the store may be None (units are re-encoded from the audio to learn durations).
    """
    if steps is None and max_minutes is None:
        raise UserError("give steps, max_minutes or both to bound vocoder training")
    cb = codebook if isinstance(codebook, Codebook) else Codebook.load(codebook)
    cfg = _for_codebook(cfg or VocoderConfig(), cb)
    if not (0 < cfg.lr < math.inf):
        raise UserError(f"vocoder lr: must be a finite number > 0, got {cfg.lr!r}")
    bf16 = _bf16(cfg.precision, device)
    sources = _sources(manifest, units_store_prefix, cb)
    data = _Data(sources, cb, cfg)
    _choose_voices(cfg, data.records)

    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    # the clock starts before the unit table is filled: that pass counts against max_minutes
    run = _Run(t0=time.monotonic(), manifests=[m for m, _ in sources], records=len(data.records))
    net = _initial_network(cfg, data, cb, rng, progress).to(device).train()

    def save(final: bool, matching: MatchingSet | None = None) -> None:
        _check_weights(net, run.step)
        net.eval()
        Vocoder(cfg, net, matching).save(out_dir, run.record(final))
        net.train()

    _train_steps(net, data, rng, cfg, run, _Bounds(steps, max_minutes, save_every_minutes), device, bf16, save,
                 progress)
    if run.step == 0:
        raise RuntimeError("vocoder training ran no step within its budget")
    save(True, matching_set(data, cfg, progress))
    log.info("vocoder: %d steps in %.0f s, loss %.3f -> %s", run.step, time.monotonic() - run.t0, run.ema, out_dir)
    return Path(out_dir)


def _for_codebook(cfg: VocoderConfig, cb: Codebook) -> VocoderConfig:
    """`cfg` with the spec of the codebook it is trained for, its hop checked against the frame rate."""
    s = cb.settings
    cfg = replace(cfg, codebook_fingerprint=cb.fingerprint, k=cb.k, frame_rate=s.frame_rate, dedup=s.dedup)
    cfg.upsample  # validates hop against the codebook's frame rate
    return cfg


def _choose_voices(cfg: VocoderConfig, records: Sequence[Record]) -> None:
    """Set `cfg.voices` (the training speakers, sorted), `cfg.voice` (the user's if it is one of
    them, else the speaker with most clips) and `cfg.voice_by_lang` (each language's speaker with most
    clips; `cfg.voice` for the language it speaks most, so that language sounds as before); nothing
    without speaker conditioning."""
    if not cfg.speaker_conditioning:
        return
    counts = Counter(r.speaker or UNKNOWN_VOICE for r in records)
    cfg.voices = sorted(counts)
    cfg.voice = cfg.voice if cfg.voice in counts else counts.most_common(1)[0][0]
    by_lang = Counter((r.lang or "en", r.speaker or UNKNOWN_VOICE) for r in records)
    best = sorted(by_lang, key=lambda ls: (-by_lang[ls], ls))  # most clips first; ties by name: reproducible
    cfg.voice_by_lang = {}
    for lang, speaker in best:
        cfg.voice_by_lang.setdefault(lang, speaker)
    own = next(lang for lang, speaker in best if speaker == cfg.voice)
    cfg.voice_by_lang[own] = cfg.voice


def _initial_network(cfg: VocoderConfig, data: _Data, cb: Codebook, rng: random.Random, progress: bool) -> UnitToSpec:
    """A new network with its unit table filled from `data` and its unit embeddings from the
    codebook's centroids (as `cfg` asks)."""
    net = UnitToSpec(cfg)
    if net.table is not None:
        with torch.no_grad():
            net.table.weight.copy_(data.table(cfg.table_clips, rng, progress))
    if cfg.centroid_init:
        with torch.no_grad():
            for emb in (net.emb, net.duration.emb if net.duration is not None else None):
                if emb is not None:
                    emb.weight.copy_(centroid_embedding(cb.centroids, emb.weight.shape[1]))
    return net


def _optimizer(net: UnitToSpec, cfg: VocoderConfig) -> torch.optim.AdamW:
    """AdamW; embedding tables and norms are not shrunk toward zero (no weight decay)."""
    no_decay = {id(p) for m in net.modules() if isinstance(m, (torch.nn.Embedding, torch.nn.LayerNorm))
                for p in m.parameters()}
    return torch.optim.AdamW([{"params": [p for p in net.parameters() if id(p) not in no_decay]},
                              {"params": [p for p in net.parameters() if id(p) in no_decay], "weight_decay": 0.0}],
                             lr=cfg.lr, weight_decay=cfg.weight_decay)


@dataclass
class _Bounds:
    """What bounds a run (at least one of steps and minutes) and how often it is saved."""

    steps: int | None
    max_minutes: float | None
    save_every_minutes: float

    def progress(self, step: int, elapsed: float) -> float:
        """Fraction of the run done: of whichever bound is nearer (>= 1: done)."""
        budget = self.max_minutes * 60 if self.max_minutes is not None else None
        return max(step / self.steps if self.steps else 0.0, elapsed / budget if budget else 0.0)


@dataclass
class _Run:
    """Where a training run is: steps done, the loss's moving average and its history."""

    t0: float
    manifests: list[Path]
    records: int
    step: int = 0
    ema: float | None = None
    history: list[dict] = field(default_factory=list)

    def log(self, out: dict[str, torch.Tensor], elapsed: float) -> None:
        """Count one step of losses `out`; every 10th step joins the history."""
        self.step += 1
        v = float(out["loss"].detach())
        self.ema = v if self.ema is None else 0.95 * self.ema + 0.05 * v
        if self.step % 10 == 0:
            self.history.append({"step": self.step, "seconds": round(elapsed, 1), "loss": round(self.ema, 4),
                                 **{k: round(float(x.detach()), 4) for k, x in out.items() if k != "loss"}})

    def record(self, final: bool) -> dict:
        """The `training` record saved in the vocoder's config.json."""
        return {"steps": self.step, "seconds": round(time.monotonic() - self.t0, 1), "loss": self.ema,
                "history": self.history, "manifests": [str(m.resolve()) for m in self.manifests],
                "records": self.records, "final": final}


def _train_steps(net: UnitToSpec, data: _Data, rng: random.Random, cfg: VocoderConfig, run: _Run, bounds: _Bounds,
                 device: str, bf16: bool, save: Callable[[bool], None], progress: bool) -> None:
    """Optimizer steps until `bounds` are reached, the learning rate following the progress
    (warmup, cosine to 10 %); `save(False)` every `bounds.save_every_minutes`."""
    opt = _optimizer(net, cfg)
    bar = tqdm(total=bounds.steps, desc="vocoder", unit="step", disable=not progress, mininterval=2.0)
    last_save = run.t0
    while True:
        elapsed = time.monotonic() - run.t0
        prog = bounds.progress(run.step, elapsed)
        if prog >= 1.0:
            break
        for g in opt.param_groups:
            g["lr"] = cfg.lr * warmup_cosine(prog, cfg.warmup, min_ratio=0.1, floor=0.01)
        out = losses(net, {k: v.to(device) for k, v in data.batch(rng).items()}, bf16)
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        gnorm = float(torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0))
        _check_finite(float(out["loss"].detach()), gnorm, run.step + 1, opt.param_groups[0]["lr"])
        opt.step()
        run.log(out, elapsed)
        bar.update(1)
        bar.set_postfix(loss=f"{run.ema:.3f}", lr=f"{opt.param_groups[0]['lr']:.1e}")
        if time.monotonic() - last_save > bounds.save_every_minutes * 60:
            save(False)
            last_save = time.monotonic()
    bar.close()


def _check_finite(loss: float, grad_norm: float, step: int, lr: float) -> None:
    """Stop before an update from an inf or NaN loss or gradient: the weights would turn to NaN and
    the vocoder would be saved speaking noise. The last save (if any) is untouched."""
    if not (math.isfinite(loss) and math.isfinite(grad_norm)):
        raise UserError(f"vocoder training, step {step}: the loss is {loss} and the gradient norm {grad_norm} "
                        f"(learning rate {lr:.3g}); stopped before the update, nothing of this step saved. Lower "
                        "the vocoder's lr and train again")


def _check_weights(net: UnitToSpec, step: int) -> None:
    """A vocoder whose weights hold inf or NaN is never saved."""
    bad = [n for n, p in net.named_parameters() if not torch.isfinite(p).all()]
    if bad:
        raise UserError(f"vocoder training, step {step}: {len(bad)} weight tensor(s) hold inf or NaN ({bad[0]}, ...); "
                        "not saved (the last save, if any, is untouched). Lower the vocoder's lr and train again")


def _sources(manifest: Manifests, units_store_prefix: Stores, cb: Codebook) -> list[tuple[Path, TokenStore | None]]:
    """One manifest and its store, or as many stores as manifests (or None: no stores), as
    (manifest, store) pairs; each store checked against the codebook. A codebook that does not
    deduplicate needs every store: its units come from them."""
    several = not isinstance(manifest, (str, Path))
    manifests = [Path(m) for m in manifest] if several else [Path(manifest)]
    if not manifests:
        raise UserError("a vocoder needs at least one manifest")
    if units_store_prefix is None:
        stores = [None] * len(manifests)
    elif isinstance(units_store_prefix, (str, Path)):
        if several:
            raise UserError(f"{len(manifests)} manifests but one units store; give one store per manifest, in order")
        stores = [units_store_prefix]
    else:
        stores = list(units_store_prefix)
        if len(stores) != len(manifests):
            raise UserError(f"{len(manifests)} manifests but {len(stores)} units stores; give one per manifest, in order")
    if not cb.settings.dedup:
        for m, u in zip(manifests, stores):
            if u is None:
                raise UserError(f"{m}: a units token store is needed (this codebook does not deduplicate, so its "
                                 "units come from the store): pass units_store_prefix")
    return [(m, _store(u, cb)) for m, u in zip(manifests, stores)]
