"""Speech codebook and speech tokenizer: frame features -> k-means units.

Design decisions:
- A codebook file (`.safetensors`) holds the centroids and, in its metadata, everything that
  reproduces the units: feature backend, model, layer, frame rate, k, pooling, deduplication,
  and a **fingerprint** (hash of centroids + settings). Vocabularies, token stores and
  checkpoints record the fingerprint; a mismatch is an error (`CodebookMismatch`).
- Fitting uses scikit-learn `MiniBatchKMeans` on frames sampled across utterances (bounded
  memory); assignment is a batched nearest-centroid search in torch (GPU-capable).
- Defaults (k=1000, 25 Hz by averaging frame pairs, no deduplication) were picked by WER on
  mini-world. Deduplication (HuBERT-unit practice) shortens sequences as much as 25 Hz pooling
  does, but makes the time axis irregular; a small decoder then learns alignment far slower.
- Byte-pair merges over the units (`bpe`, `dmlm.tokenizers.unit_bpe`) ride in the same file,
  fitted later on a corpus's training units (`with_bpe`). They do not change what the codebook
  encodes (`encode` gives units; `fingerprint` is the units'), only how the vocabulary renders
  units for the LM, so token stores and vocoders stay valid for any merge count.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from dmlm.tokenizers.features import FeatureExtractor, build_features
from dmlm.tokenizers.kmeans import CodebookMismatch, KMeansCodebook, check_fit_settings  # noqa: F401  (re-exported)
from dmlm.tokenizers.unit_bpe import UnitBPE
from dmlm.util.errors import UserError

log = logging.getLogger(__name__)


@dataclass
class CodebookSettings:
    backend: str = "whisper"
    """Feature backend: whisper (CTranslate2, last layer), whisper-hf (transformers, any layer) or mel."""
    model: str | None = "whisper-base"
    """Whisper preset, local directory or hub id (ignored for mel)."""
    layer: int | None = -1
    """Encoder layer; -1 is the last (the paper's choice)."""
    k: int = 1000
    """Number of units (chosen by measured WER: docs/experiments.md, "Codebook ablation")."""
    dedup: bool = False
    """Collapse runs of repeated units (shorter sequences, but an irregular time axis: worse WER here)."""
    pooling: int = 2
    """Average this many consecutive frames before assignment (1 = 50 Hz, 2 = 25 Hz, the default)."""
    compute_type: str = "int8"
    """CTranslate2 compute type for the whisper backend."""
    pad_quantum: float = 0.5
    """Clips are zero-padded to a multiple of this many seconds before encoding."""
    seed: int = 0
    """k-means seed."""
    max_frames: int = 300_000
    """Frames sampled for fitting."""
    n_init: int = 1
    """k-means restarts (the best inertia wins)."""
    frame_rate: float = field(default=50.0)
    """Frames per second after pooling (set by fit)."""

    def check(self) -> None:
        """Settings that no feature backend can honour, caught before any corpus or fit is made."""
        backends = ("whisper", "whisper-hf", "mel")
        if self.backend not in backends:
            raise UserError(f"codebook.backend must be one of {', '.join(backends)}, got {self.backend!r}")
        if self.backend == "whisper" and self.layer not in (-1, None):
            raise UserError(f"codebook.layer={self.layer}: the CTranslate2 Whisper engine (codebook.backend=whisper) "
                            "gives the last layer only; use codebook.backend=whisper-hf for other layers")
        if self.backend != "mel" and not self.model:
            raise UserError(f"codebook.backend={self.backend} needs codebook.model (a Whisper preset, folder or hub id)")

    def reproducing(self) -> dict:
        """The settings that determine units (not fit-time knobs like max_frames)."""
        d = asdict(self)
        d.pop("max_frames")
        d.pop("n_init")
        return d


class Codebook(KMeansCodebook):
    modality = "speech"

    def __init__(self, centroids: np.ndarray, settings: CodebookSettings, bpe: UnitBPE | None = None):
        if centroids.ndim != 2 or centroids.shape[0] != settings.k:
            raise UserError(f"centroids must be (k={settings.k}, D), got {centroids.shape}")
        self.settings = settings
        self._features: FeatureExtractor | None = None
        self._set_centroids(centroids)
        self.bpe: UnitBPE | None = None
        """Byte-pair merges over these units (None: the LM reads units)."""
        if bpe is not None:
            self._bind(bpe, "unit BPE")

    @classmethod
    def load(cls, path: str | Path) -> Codebook:
        centroids, settings = cls._read(path)
        stored = settings.pop("_fingerprint")
        bpe = settings.pop("_bpe", None)
        cb = cls(centroids, CodebookSettings(**settings))
        cb._check_stored(path, stored)
        if bpe is not None:
            cb._bind(UnitBPE.from_dict(json.loads(bpe), f"{path}"), f"{path}")
        return cb

    # -- unit merges -----------------------------------------------------------------------
    def _bind(self, bpe: UnitBPE, where: str) -> None:
        if bpe.k != self.k or bpe.base != self.fingerprint:
            raise CodebookMismatch(f"{where}: the unit merges were fitted on codebook {bpe.base or '?'} (k={bpe.k}), "
                                   f"not on this one, {self.fingerprint} (k={self.k})")
        self.bpe = bpe

    def with_bpe(self, bpe: UnitBPE | None) -> Codebook:
        """This codebook (same centroids and settings) carrying `bpe` (None: no merges)."""
        cb = Codebook(self.centroids, self.settings, bpe)
        cb._features = self._features
        return cb

    @property
    def pieces(self) -> int:
        """Speech ids the vocabulary needs: k, plus the merged pieces."""
        return self.bpe.vocab_size if self.bpe is not None else self.k

    def check_bpe(self, fingerprint: str | None, what: str) -> None:
        """Raise if `what` (a checkpoint's vocabulary) was made with other unit merges (or none) than these."""
        mine = self.bpe.fingerprint if self.bpe is not None else None
        if fingerprint != mine:
            raise CodebookMismatch(f"{what} was made with unit merges {fingerprint or 'none'}, but the speech codebook "
                                   f"given has {mine or 'none'}")

    def _more_metadata(self) -> dict[str, str]:
        return {"bpe": json.dumps(self.bpe.to_dict())} if self.bpe is not None else {}

    # -- encoding ------------------------------------------------------------------------
    @property
    def features(self) -> FeatureExtractor:
        if self._features is None:
            s = self.settings
            self._features = build_features(s.backend, s.model, s.layer, compute_type=s.compute_type,
                                            pad_quantum=s.pad_quantum)
        return self._features

    def assign(self, frames: np.ndarray | torch.Tensor) -> np.ndarray:
        """Nearest centroid of each (T, D) frame; (T,) int64."""
        if frames.shape[-1] != self.centroids.shape[1]:
            raise UserError(f"frames have dim {frames.shape[-1]}, codebook expects {self.centroids.shape[1]}")
        return self.nearest(frames)

    def frames_to_units(self, frames: np.ndarray) -> np.ndarray:
        units = self.assign(pool_frames(frames, self.settings.pooling))
        return dedup(units) if self.settings.dedup else units

    def encode(self, wav: np.ndarray) -> list[int]:
        return self.encode_batch([wav])[0]

    def encode_batch(self, wavs: Sequence[np.ndarray]) -> list[list[int]]:
        return [self.frames_to_units(f).tolist() for f in self.features(wavs)]

    def decode(self, units: Sequence[int]) -> np.ndarray:
        """Units back to their centroid frames (T, D): the codebook's view of the audio."""
        u = np.asarray(units, dtype=np.int64)
        if len(u) and (u.min() < 0 or u.max() >= self.k):
            raise UserError(f"unit ids must be in [0, {self.k}), got range [{u.min()}, {u.max()}]")
        return self.centroids[u]


def pool_frames(frames: np.ndarray, pooling: int) -> np.ndarray:
    if pooling <= 1:
        return frames
    T = (len(frames) // pooling) * pooling
    if T == 0:
        return frames.mean(0, keepdims=True)
    return frames[:T].reshape(T // pooling, pooling, -1).mean(1)


def dedup(units: np.ndarray) -> np.ndarray:
    if len(units) == 0:
        return units
    keep = np.ones(len(units), dtype=bool)
    keep[1:] = units[1:] != units[:-1]
    return units[keep]


def fit_codebook(
    wavs: Iterable[np.ndarray], settings: CodebookSettings, features: FeatureExtractor | None = None,
    total: int | None = None,
) -> Codebook:
    """Fit k-means on frames sampled from `wavs` (an iterable of 16 kHz clips)."""
    check_fit_settings(settings)
    from sklearn.cluster import MiniBatchKMeans
    from dmlm.util.progress import tqdm

    feats = features or build_features(settings.backend, settings.model, settings.layer,
                                       compute_type=settings.compute_type, pad_quantum=settings.pad_quantum)
    rng = np.random.default_rng(settings.seed)
    pool: list[np.ndarray] = []
    n = 0
    batch: list[np.ndarray] = []

    def flush() -> None:
        nonlocal n
        for f in feats(batch):
            f = pool_frames(f, settings.pooling)
            pool.append(f)
            n += len(f)
        batch.clear()

    for wav in tqdm(wavs, total=total, desc="codebook features", unit="utt"):
        batch.append(wav)
        if len(batch) == 64:
            flush()
        if n >= settings.max_frames:
            break
    if batch:
        flush()
    X = np.concatenate(pool)
    if len(X) > settings.max_frames:
        X = X[rng.choice(len(X), settings.max_frames, replace=False)]
    if len(X) < settings.k:
        raise UserError(f"only {len(X)} frames to fit k={settings.k} units; give more audio or a smaller k")
    log.info("k-means: %d frames x %d dims -> k=%d", *X.shape, settings.k)
    km = MiniBatchKMeans(n_clusters=settings.k, batch_size=4096, n_init=settings.n_init, max_iter=100,
                         random_state=settings.seed, compute_labels=False)
    km.fit(X)
    settings.frame_rate = feats.frame_rate / max(1, settings.pooling)
    cb = Codebook(km.cluster_centers_.astype(np.float32), settings)
    cb._features = feats
    return cb


def fit_unit_bpe(codebook: Codebook, units: Iterable[Sequence[int] | np.ndarray], merges: int,
                 min_count: int = 2) -> Codebook:
    """`codebook` carrying up to `merges` byte-pair merges fitted on `units` (its training units; each
    merged pair seen at least `min_count` times). `merges=0`: the codebook without merges."""
    bpe = UnitBPE.fit(units, codebook.k, merges, base=codebook.fingerprint, min_count=min_count) if merges else None
    return codebook.with_bpe(bpe)
