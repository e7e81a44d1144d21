"""The unit vocoder: speech units -> log-mel envelope -> Griffin-Lim -> 16 kHz waveform.

Design decisions (measurements: docs/experiments.md, "Speech out"):
- Units are *content* (k-means of Whisper's last layer); pitch and timbre must be invented.
  The vocoder regresses a log spectrogram with an L1 loss and Griffin-Lim inverts it
  (`dmlm.vocoder.spectrogram`): it trains in minutes on 2 CPU cores and is embarrassingly
  parallel on a GPU. A GAN vocoder (unit HiFi-GAN) sounds better but needs GPU-days and runs
  ~20x slower on the CPU (`bench/vocoder_speed.py`).
- The default target is an 80-band log-mel *envelope* (`target="mel"`), inverted to a smooth
  linear magnitude: Griffin-Lim on the envelope of real speech is as intelligible as on its
  full STFT (judged by ASR), and the envelope is what units can predict; harmonics depend on
  the speaker's pitch, which units do not carry.
- A regression net trained from scratch for 4 CPU minutes barely leaves the average spectrum
  (>90 % WER). Two cheap priors fix that: (1) a lookup table of the mean target frame of each
  (unit, position in unit), averaged over a few thousand clips in seconds before training, is
  the output the net starts from (alone: ~35 % WER); the net learns the context-dependent
  residual, its output layer starting at zero; (2) the unit embeddings start from the
  codebook's centroids (PCA), so acoustically close units start close.
- All conv layers run at the unit rate (25 Hz) where they are cheap; each unit's output is
  spread over its r spectrogram frames (hop 160 = 100 Hz, r = 4 for 25 Hz units, from the
  codebook's frame rate) with a learned embedding of the frame's position in its unit.
  Frame-rate conv layers (`frame_layers`) are available but bought nothing for their cost.
- Speaker conditioning (on by default): the net gets an embedding of the training speaker and
  synthesizes in one fixed voice (`voice`); otherwise its output is the blurred average of
  all training voices. The output voice never depends on the input's voice.
- Padded positions are zeroed before every convolution, so a clip's output does not depend on
  its batch mates (batched synthesis = one-by-one synthesis).
- Codebooks that deduplicate units lose their timing; a duration predictor (a small conv net
  regressing log run-lengths per unit) restores it before upsampling. Training uses the true
  run-lengths (teacher forcing); synthesis rounds the prediction to >= 1 frame.
- Regression to the mean: an L1-trained net predicts a context-averaged envelope, smoother than
  any real frame. At synthesis each predicted log-mel frame is replaced by the mean of its `knn`
  nearest real frames *of the same unit* in the output voice's training clips (the matching set,
  `matching.safetensors`, built at the end of training from the cached targets; in the spirit of
  kNN-VC, Baas et al. 2023, with the unit as the key that keeps the content). It costs no training
  and lowers resynthesis WER on the demo (docs/experiments.md, "Speech out").
- Matching with context (`knn_context`): a frame alone is a poor key, since the net's frames are
  blurred toward the unit's mean, but the shape of its surroundings is not. The distance compares
  the frames `knn_stride` apart on each side too, in the prediction and around each real frame
  (the set keeps each frame's neighbours in its clip: `prev`/`next`), and the mean of the `knn`
  real *centre* frames is taken. Still no training; it mostly picks real frames whose
  coarticulation matches the prediction's (docs/experiments.md, "Speech out", for the measured gain).
- A vocoder is tied to the codebook it was trained for: `config.json` records the codebook's
  fingerprint, k and frame rate, and loading it for another codebook raises `CodebookMismatch`.
  In a checkpoint it lives in `<model>/vocoder/`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
from torch import nn

from dmlm.tokenizers.speech import CodebookMismatch
from dmlm.util.errors import MissingFileError, UserError
from dmlm.vocoder.spectrogram import SAMPLE_RATE, from_mel, griffin_lim, to_mel

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
MATCHING = "matching.safetensors"
FORMAT_VERSION = 1


class NoVocoder(MissingFileError):
    """A checkpoint or folder without a trained vocoder."""


TRAINING_FIELDS = ("codebook_fingerprint", "k", "frame_rate", "dedup", "voices", "voice")
"""VocoderConfig fields that training sets (what the vocoder was made for), not the user."""

SYNTHESIS_FIELDS = ("gl_iters", "gl_momentum", "gl_power", "knn", "knn_context", "knn_stride")
"""VocoderConfig fields read only at synthesis: a trained vocoder can take new values without retraining."""

MATCHING_FIELDS = ("matching_clips",)
"""VocoderConfig fields that shape only the matching set: a new value rebuilds it, not the network."""


REMOVED_FIELDS = {"unit_noise": 0.0}
"""Former settings and their neutral values (docs/experiments.md, "Speech out": no gain measured)."""


@dataclass
class VocoderConfig:
    # -- architecture
    dim: int = 256
    """Channels of the unit-rate layers (and the unit embedding)."""
    unit_layers: int = 6
    """Residual conv blocks at the unit rate (dilations 1, 2, 4, 1, 2, 4, ...)."""
    frame_dim: int = 256
    """Channels at the spectrogram rate (the per-frame output projection, and frame_layers)."""
    frame_layers: int = 0
    """Residual conv blocks at the spectrogram rate (dilations 1, 2, 1, 2, ...)."""
    kernel: int = 5
    """Convolution width (odd)."""
    dropout: float = 0.1
    """Dropout inside the residual blocks during training."""
    duration_dim: int = 128
    """Channels of the duration predictor (used only for codebooks that deduplicate units)."""
    # -- signal
    target: str = "mel"
    """What the network regresses: linear (log-magnitude STFT bins) or mel (log band magnitudes, n_mels)."""
    n_mels: int = 80
    """Mel bands for target=mel (inverted to a smooth linear envelope before Griffin-Lim)."""
    n_fft: int = 512
    """STFT size of the target spectrogram (n_fft // 2 + 1 bins)."""
    hop: int = 160
    """STFT hop in samples at 16 kHz (160 = 100 frames/s); 16000 / hop must be a multiple of the codebook's frame rate."""
    win_length: int = 512
    """STFT window (Hann) in samples."""
    gl_iters: int = 16
    """Griffin-Lim iterations at synthesis (16 judged as well as 32 on the demo, at half the cost)."""
    gl_momentum: float = 0.99
    """Fast Griffin-Lim momentum (0: classic Griffin-Lim)."""
    gl_power: float = 1.2
    """Magnitudes are raised to this power before inversion (> 1 sharpens harmonics)."""
    knn: int = 8
    """Replace each predicted frame by the mean of its knn nearest real frames of the same unit (the
    matching set of the output voice); 0: the network's frames as they are."""
    knn_context: int = 2
    """Frames on each side of a frame (`knn_stride` apart) that take part in its match: the real frame
    whose surroundings also look like the prediction's wins (0: the frame alone)."""
    knn_stride: int = 2
    """Spectrogram frames between the context frames of a match (2 = 20 ms at hop 160)."""
    # -- training
    centroid_init: bool = True
    """Start the unit embeddings from the codebook's centroids (PCA to `dim`): similar units start similar."""
    table_clips: int = 4000
    """Clips averaged into the per-unit mean spectrogram the network starts from (0: no table, the net alone)."""
    matching_clips: int = 4000
    """Training clips of the output voice whose frames form the matching set for `knn` (0: none)."""
    cache_gb: float = 2.0
    """Memory for training targets kept between steps (float16 spectrograms, filled as clips are first
    loaded): a clip in the cache costs no wav read and no STFT again (0: recompute every time)."""
    batch_size: int = 16
    """Clips per step."""
    precision: str = "fp32"
    """Training matmuls/convolutions: fp32, bf16 (autocast; the loss and the optimizer stay fp32), or auto
    (bf16 on a GPU or a CPU oneDNN runs bf16 on, else fp32). On the demo's 2-core CPU bf16 runs 1.4x the
    steps of fp32 in the same minutes."""
    lr: float = 2e-3
    """Peak AdamW learning rate (linear warmup, cosine decay to 10 %)."""
    warmup: float = 0.05
    """Fraction of training (by steps or by time, whichever bound is nearer) spent in linear warmup."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    max_seconds: float = 8.0
    """Training clips are cut to a random window of at most this many seconds."""
    speakers: list[str] | None = None
    """Train only on records of these speakers (None: all). A single voice gives a sharper, consistent output voice."""
    seed: int = 0
    """Seed for init, data order and crops."""
    speaker_conditioning: bool = True
    """Learn one embedding per training speaker and synthesize in one fixed voice (`voice`) instead of the average of all."""
    # -- set by training (what the vocoder was made for)
    codebook_fingerprint: str | None = None
    """Fingerprint of the speech codebook the vocoder was trained for."""
    k: int = 0
    """Units in that codebook."""
    frame_rate: float = 25.0
    """That codebook's units per second (before deduplication)."""
    dedup: bool = False
    """Whether that codebook deduplicates units (then the duration predictor is used)."""
    voices: list[str] | None = None
    """Training speakers, in embedding order (speaker_conditioning only)."""
    voice: str | None = None
    """Default voice for synthesis: the training speaker with most clips (speaker_conditioning only)."""

    def changed_settings(self, saved: dict, kind: str = "training") -> list[str]:
        """Settings of one kind that differ from a saved config.json's: "training" (those a user
        sets that shape the network), "synthesis" (SYNTHESIS_FIELDS) or "matching" (MATCHING_FIELDS)."""
        groups = {"synthesis": SYNTHESIS_FIELDS, "matching": MATCHING_FIELDS}
        if kind not in (*groups, "training"):
            raise ValueError(f"kind must be training, synthesis or matching, got {kind!r}")
        other = set(TRAINING_FIELDS) | set(SYNTHESIS_FIELDS) | set(MATCHING_FIELDS)
        names = [f.name for f in fields(self)
                 if (f.name in groups[kind] if kind in groups else f.name not in other)]
        return sorted(n for n in names if saved.get(n, getattr(VocoderConfig, n)) != getattr(self, n))

    @property
    def n_bins(self) -> int:
        """Channels the network predicts per frame."""
        if self.target not in ("linear", "mel"):
            raise UserError(f"vocoder target must be linear or mel, got {self.target!r}")
        return self.n_mels if self.target == "mel" else self.n_fft // 2 + 1

    def to_target(self, log_mag: torch.Tensor) -> torch.Tensor:
        """(..., n_fft // 2 + 1) log magnitudes -> (..., n_bins) training target."""
        return to_mel(log_mag, self.n_fft, self.n_mels) if self.target == "mel" else log_mag

    def to_log_magnitude(self, pred: torch.Tensor) -> torch.Tensor:
        """(..., n_bins) network output -> (..., n_fft // 2 + 1) log magnitudes for Griffin-Lim."""
        return from_mel(pred, self.n_fft) if self.target == "mel" else pred

    @property
    def upsample(self) -> int:
        """Spectrogram frames per codebook frame."""
        r = SAMPLE_RATE / self.hop / self.frame_rate
        if r < 1 or abs(r - round(r)) > 1e-6:
            raise UserError(f"16000 / hop ({self.hop}) = {SAMPLE_RATE / self.hop:g} frames/s is not a whole multiple "
                             f"of the codebook's {self.frame_rate:g} units/s; pick another hop")
        return int(round(r))

    @classmethod
    def from_dict(cls, d: dict) -> VocoderConfig:
        known = {f.name for f in fields(cls)}
        # settings measured as not helping were removed; a vocoder saved at their neutral value loads as before
        d = {k: v for k, v in d.items() if not (k in REMOVED_FIELDS and v == REMOVED_FIELDS[k])}
        unknown = set(d) - known - {"format_version"}
        if unknown:
            raise UserError(f"unknown vocoder config fields {sorted(unknown)}")
        return cls(**{k: v for k, v in d.items() if k in known})


class ResBlock(nn.Module):
    """x + conv(gelu(conv(norm(x)))) over (B, C, T), with padded steps kept at zero."""

    def __init__(self, dim: int, kernel: int, dilation: int, dropout: float):
        super().__init__()
        pad = dilation * (kernel - 1) // 2
        self.norm = nn.LayerNorm(dim)
        self.conv1 = nn.Conv1d(dim, dim, kernel, padding=pad, dilation=dilation)
        self.conv2 = nn.Conv1d(dim, dim, 1)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:  # (B, C, T), mask (B, 1, T)
        h = self.norm(x.transpose(1, 2)).transpose(1, 2) * mask
        h = self.conv2(self.drop(nn.functional.gelu(self.conv1(h))))
        return (x + h) * mask


def _stack(dim: int, n: int, kernel: int, dilations: Sequence[int], dropout: float) -> nn.ModuleList:
    return nn.ModuleList(ResBlock(dim, kernel, dilations[i % len(dilations)], dropout) for i in range(n))


class DurationPredictor(nn.Module):
    """(B, U) deduplicated units -> (B, U) log run-lengths in codebook frames."""

    def __init__(self, k: int, dim: int, kernel: int, dropout: float):
        super().__init__()
        self.emb = nn.Embedding(k, dim)
        self.blocks = _stack(dim, 2, kernel, (1,), dropout)
        self.out = nn.Conv1d(dim, 1, 1)

    def forward(self, units: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        m = mask[:, None].float()
        x = self.emb(units).transpose(1, 2) * m
        for b in self.blocks:
            x = b(x, m)
        return self.out(x)[:, 0]


class UnitToSpec(nn.Module):
    """(B, T) units at the codebook frame rate -> (B, T * upsample, n_bins) log magnitudes."""

    def __init__(self, cfg: VocoderConfig):
        super().__init__()
        self.r = cfg.upsample
        self.emb = nn.Embedding(cfg.k, cfg.dim)
        self.speaker = nn.Embedding(len(cfg.voices), cfg.dim) if cfg.speaker_conditioning and cfg.voices else None
        if self.speaker is not None:
            nn.init.zeros_(self.speaker.weight)
        self.unit_blocks = _stack(cfg.dim, cfg.unit_layers, cfg.kernel, (1, 2, 4), cfg.dropout)
        self.proj = nn.Conv1d(cfg.dim, cfg.frame_dim, 1)
        self.phase = nn.Parameter(torch.zeros(self.r, cfg.frame_dim))  # position of a frame inside its unit
        self.frame_blocks = _stack(cfg.frame_dim, cfg.frame_layers, cfg.kernel, (1, 2), cfg.dropout)
        self.out_norm = nn.LayerNorm(cfg.frame_dim)
        self.out = nn.Linear(cfg.frame_dim, cfg.n_bins)
        # the mean target frame of each (unit, position in unit), filled from data before training;
        # the conv net learns the context-dependent residual (its output layer starts at zero)
        self.table = nn.Embedding(cfg.k, self.r * cfg.n_bins) if cfg.table_clips else None
        if self.table is not None:
            nn.init.zeros_(self.table.weight)
            nn.init.zeros_(self.out.weight)
            nn.init.zeros_(self.out.bias)
        self.duration = DurationPredictor(cfg.k, cfg.duration_dim, cfg.kernel, cfg.dropout) if cfg.dedup else None

    def forward(self, units: torch.Tensor, mask: torch.Tensor, speaker: torch.Tensor | None = None) -> torch.Tensor:
        m = mask[:, None].float()  # (B, 1, T)
        x = self.emb(units)  # (B, T, D)
        if self.speaker is not None:
            if speaker is None:
                raise ValueError("this vocoder is speaker-conditioned: pass speaker ids")
            x = x + self.speaker(speaker)[:, None]
        x = x.transpose(1, 2) * m  # (B, D, T)
        for b in self.unit_blocks:
            x = b(x, m)
        x = self.proj(x).repeat_interleave(self.r, dim=2)  # (B, C, T*r)
        B, C, Tr = x.shape
        x = x + self.phase.T.repeat(1, Tr // self.r)[None]
        m = m.repeat_interleave(self.r, dim=2)
        x = x * m
        for b in self.frame_blocks:
            x = b(x, m)
        y = self.out(self.out_norm(x.transpose(1, 2)))  # (B, T*r, F)
        if self.table is not None:
            y = y + self.table(units).view(B, Tr, -1)
        return y


def run_lengths(units: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Deduplicate `units`: (distinct consecutive units, how many frames each ran)."""
    units = np.asarray(units)
    if len(units) == 0:
        return units, np.zeros(0, dtype=np.int64)
    starts = np.flatnonzero(np.r_[True, units[1:] != units[:-1]])
    return units[starts], np.diff(np.r_[starts, len(units)])


def pad_batch(seqs: Sequence[np.ndarray], value: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T_max) int64 ids and (B, T_max) bool mask."""
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), value, dtype=torch.long)
    mask = torch.zeros((len(seqs), T), dtype=torch.bool)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.as_tensor(np.asarray(s, dtype=np.int64))
        mask[i, : len(s)] = True
    return ids, mask


def context_offsets(context: int, stride: int) -> list[int]:
    """Frame offsets that take part in a context match: -context*stride .. context*stride by stride."""
    if context < 0 or stride < 1:
        raise UserError(f"knn_context must be >= 0 and knn_stride >= 1, got {context} and {stride}")
    return [i * stride for i in range(-context, context + 1)]


class MatchingSet:
    """Real target frames of one voice grouped by unit: `frames` (N, bins) float16 sorted by unit,
    `bounds` (k + 1,): the frames of unit u are frames[bounds[u]:bounds[u + 1]]. `prev` / `next`
    (N,): the row of the frame before / after each frame in its clip (itself at the clip's
    edges), for matching with context; None in sets saved before they existed."""

    def __init__(self, frames: torch.Tensor, bounds: torch.Tensor, voice: str | None = None,
                 prev: torch.Tensor | None = None, next: torch.Tensor | None = None):  # noqa: A002
        if bounds.ndim != 1 or int(bounds[-1]) != len(frames):
            raise ValueError(f"matching set: bounds end at {int(bounds[-1])} but there are {len(frames)} frames")
        if (prev is None) != (next is None) or (prev is not None and (len(prev) != len(frames) or len(next) != len(frames))):
            raise ValueError("matching set: prev and next must both be given, one row per frame")
        self.frames, self.bounds, self.voice = frames, bounds.long(), voice
        self.prev = None if prev is None else prev.long()
        self.next = None if next is None else next.long()

    @classmethod
    def build(cls, clips: Sequence[tuple[np.ndarray, torch.Tensor]], k: int, r: int,
              voice: str | None = None) -> MatchingSet:
        """From (units, (len(units) * r, bins) target frames) clips of one voice."""
        if not clips:
            raise UserError("matching set: no clips")
        units = torch.as_tensor(np.concatenate([np.repeat(np.asarray(u, dtype=np.int64), r) for u, _ in clips]))
        frames = torch.cat([f.half() for _, f in clips])
        lengths = torch.as_tensor([len(f) for _, f in clips])
        start, end = _clip_edges(lengths)
        pos = torch.arange(len(frames))
        order = torch.argsort(units, stable=True)
        row = torch.empty_like(order)
        row[order] = torch.arange(len(order))  # clip position -> row in the sorted set
        prev, nxt = row[torch.maximum(pos - 1, start)][order], row[torch.minimum(pos + 1, end - 1)][order]
        bounds = torch.searchsorted(units[order], torch.arange(k + 1))
        return cls(frames[order].contiguous(), bounds, voice, prev.int(), nxt.int())

    @property
    def has_context(self) -> bool:
        return self.prev is not None

    def _neighbours(self, rows: torch.Tensor, offsets: Sequence[int]) -> torch.Tensor:
        """(R,) rows -> (R, len(offsets)) rows of the frames at those offsets in the same clip."""
        out = {0: rows}
        for links, sign in ((self.next, 1), (self.prev, -1)):
            cur = rows
            for step in range(1, max((abs(o) for o in offsets if o * sign > 0), default=0) + 1):
                cur = links[cur]
                out[sign * step] = cur
        return torch.stack([out[o] for o in offsets], 1)

    def refine(self, pred: torch.Tensor, units: torch.Tensor, knn: int, context: int = 0, stride: int = 1,
               lengths: Sequence[int] | None = None) -> torch.Tensor:
        """(T, bins) predicted frames of clips laid end to end (`lengths` frames each; None: one
        clip), (T,) their units -> each frame replaced by the mean of its `knn` nearest (L2) real
        frames of the same unit; frames of a unit never seen stay as they are. With `context` > 0
        the distance also compares the `context` frames on each side, `stride` frames apart
        (edges repeat the clip's first/last frame), in the prediction and around the real frame."""
        out = pred.float().clone()
        offsets = context_offsets(context, stride)
        if context and not self.has_context:
            raise UserError("this matching set has no frame order (saved by an older dmlm), so it cannot match "
                             "with context (knn_context > 0); rebuild it: `dmlm vocoder match MODEL`")
        if context:
            lengths = torch.as_tensor([len(out)] if lengths is None else list(lengths))
            if int(lengths.sum()) != len(out):
                raise ValueError(f"matching: clip lengths sum to {int(lengths.sum())}, but there are {len(out)} frames")
            start, end = _clip_edges(lengths.to(out.device))
            t = torch.arange(len(out), device=out.device)
            query = torch.cat([out[torch.clamp(t + o, start, end - 1)] for o in offsets], 1)  # (T, W * bins)
        else:
            query = out
        for u in torch.unique(units).tolist():
            lo, hi = int(self.bounds[u]), int(self.bounds[u + 1])
            if hi == lo:
                continue
            rows = (units == u).nonzero()[:, 0]
            keys = (self.frames[self._neighbours(torch.arange(lo, hi), offsets)] if context
                    else self.frames[lo:hi, None]).to(out.device, torch.float32)  # (R, W, bins)
            near = torch.cdist(query[rows], keys.flatten(1)).topk(min(knn, hi - lo), largest=False).indices  # (R, knn)
            out[rows] = keys[:, offsets.index(0)][near].mean(1)  # the real centre frames, already gathered
        return out

    def save(self, folder: str | Path) -> Path:
        """Write `folder/matching.safetensors` (temp file + rename: never half a file)."""
        from safetensors.torch import save_file

        from dmlm.util.io import atomic_file

        out = Path(folder) / MATCHING
        links = {} if self.prev is None else {"prev": self.prev.int(), "next": self.next.int()}
        with atomic_file(out) as tmp:
            save_file({"frames": self.frames, "bounds": self.bounds, **links}, str(tmp), metadata={"voice": self.voice or ""})
        return out

    @classmethod
    def load(cls, folder: str | Path) -> MatchingSet | None:
        """The matching set saved in a vocoder folder, or None (a vocoder trained before it existed)."""
        from safetensors import safe_open

        f = Path(folder) / MATCHING
        if not f.is_file():
            return None
        with safe_open(str(f), "pt") as t:
            links = {k: t.get_tensor(k) for k in ("prev", "next") if k in t.keys()}
            return cls(t.get_tensor("frames"), t.get_tensor("bounds"), (t.metadata() or {}).get("voice") or None, **links)

    @staticmethod
    def saved_with_context(folder: str | Path) -> bool:
        """Whether the set saved in `folder` exists and keeps its frames' order (without reading its frames)."""
        from safetensors import safe_open

        f = Path(folder) / MATCHING
        if not f.is_file():
            return False
        with safe_open(str(f), "pt") as t:
            return "prev" in t.keys()


def _clip_edges(lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Clip lengths -> the (start, end) of the clip each position of their concatenation is in."""
    ends = torch.cumsum(lengths, 0)
    start = torch.repeat_interleave(ends - lengths, lengths)
    return start, torch.repeat_interleave(ends, lengths)


class Vocoder:
    """A trained unit vocoder: `synthesize(units) -> float32 16 kHz waveform`."""

    sample_rate = SAMPLE_RATE

    def __init__(self, cfg: VocoderConfig, net: UnitToSpec | None = None, matching: MatchingSet | None = None):
        if cfg.k <= 0:
            raise ValueError("VocoderConfig.k (the codebook size) must be set")
        self.cfg = cfg
        self.net = (net or UnitToSpec(cfg)).eval()
        self.matching = matching

    # -- persistence -----------------------------------------------------------------------
    def save(self, out_dir: str | Path, extra: dict | None = None) -> Path:
        """Write `config.json` + `model.safetensors` through a temp folder renamed into place."""
        from safetensors.torch import save_file

        from dmlm.util.io import atomic_dir

        out = Path(out_dir)
        with atomic_dir(out) as tmp:
            save_file({k: v.detach().contiguous() for k, v in self.net.state_dict().items()}, str(tmp / WEIGHTS))
            if self.matching is not None:
                self.matching.save(tmp)
            (tmp / CONFIG).write_text(json.dumps({"format_version": FORMAT_VERSION, **asdict(self.cfg),
                                                  **({"training": extra} if extra else {})}, indent=1))
        return out

    @classmethod
    def load(cls, path: str | Path, codebook=None, device: str = "cpu", matching: bool = True) -> Vocoder:
        """Load a vocoder folder (or a checkpoint holding `vocoder/`); check it against `codebook`.
        `matching=False` skips its matching set (for a caller about to replace it)."""
        from safetensors.torch import load_file

        path = Path(path)
        if not (path / CONFIG).is_file() or not (path / WEIGHTS).is_file():
            raise NoVocoder(
                f"{path}: no vocoder here ({CONFIG} and {WEIGHTS} missing); train one into a model with "
                "`dmlm vocoder train MODEL` (it lands in MODEL/vocoder)")
        d = json.loads((path / CONFIG).read_text())
        d.pop("training", None)
        cfg = VocoderConfig.from_dict(d)
        from safetensors import SafetensorError

        name = MATCHING
        try:  # a truncated or damaged file: one line naming it, not safetensors' traceback
            match = MatchingSet.load(path) if matching else None
            name = WEIGHTS
            weights = load_file(str(path / WEIGHTS))
        except SafetensorError as e:
            raise UserError(f"{path / name}: cannot read it ({e}); the file is truncated or damaged") from None
        voc = cls(cfg, matching=match)
        voc.net.load_state_dict(weights)
        voc.net.to(device)
        if codebook is not None:
            voc.check(codebook)
        return voc

    def check(self, codebook) -> None:
        """Raise `CodebookMismatch` unless this vocoder was trained for `codebook`."""
        if codebook.fingerprint != self.cfg.codebook_fingerprint:
            raise CodebookMismatch(
                f"the vocoder was trained for speech codebook {self.cfg.codebook_fingerprint}, "
                f"but the codebook given is {codebook.fingerprint}; train a vocoder for this codebook "
                "(`dmlm vocoder train`)")

    # -- synthesis -------------------------------------------------------------------------
    def _validate(self, units: Sequence[int] | np.ndarray, i: int | None = None) -> np.ndarray:
        what = "unit sequence" if i is None else f"unit sequence {i}"
        u = np.asarray(units)
        if u.ndim != 1:
            raise UserError(f"{what}: expected a 1-D sequence of unit ids, got shape {u.shape}")
        if len(u) == 0:
            raise UserError(f"{what} is empty: nothing to synthesize")
        if not np.issubdtype(u.dtype, np.integer):
            raise UserError(f"{what}: unit ids must be integers, got dtype {u.dtype}")
        bad = u[(u < 0) | (u >= self.cfg.k)]
        if len(bad):
            raise UserError(f"{what}: unit id {int(bad[0])} is outside [0, {self.cfg.k}) "
                             f"(the codebook has k={self.cfg.k})")
        return u.astype(np.int64)

    @torch.inference_mode()
    def expand(self, seqs: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Deduplicated units -> units at the codebook frame rate, by predicted durations."""
        if self.net.duration is None:
            return list(seqs)
        dev = self.net.emb.weight.device
        ids, mask = pad_batch(seqs)
        logd = self.net.duration(ids.to(dev), mask.to(dev)).cpu()
        out = []
        for s, ld in zip(seqs, logd):
            d = np.clip(np.rint(np.exp(ld[: len(s)].numpy())), 1, None).astype(np.int64)
            out.append(np.repeat(s, d))
        return out

    @property
    def voice(self) -> str | None:
        """The voice it speaks by default (None for a vocoder trained without speaker_conditioning)."""
        return self.cfg.voice if self.cfg.speaker_conditioning else None

    @torch.inference_mode()
    def speaker_id(self, voice: str | None) -> int | None:
        """Embedding row of `voice` (default: the config's voice); None for an unconditioned vocoder."""
        if self.net.speaker is None:
            if voice is not None:
                raise UserError("this vocoder has no voices to choose from (trained without speaker_conditioning)")
            return None
        voice = voice or self.cfg.voice
        if voice not in self.cfg.voices:
            raise UserError(f"unknown voice {voice!r}; this vocoder knows {', '.join(self.cfg.voices)}")
        return self.cfg.voices.index(voice)

    @torch.inference_mode()
    def spectrogram_batch(self, seqs: Sequence[np.ndarray],
                          voice: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Units (frame-rate, already expanded) -> (B, T*r, bins) network output and (B,) frame counts."""
        dev = self.net.emb.weight.device
        ids, mask = pad_batch(seqs)
        sid = self.speaker_id(voice)
        spk = None if sid is None else torch.full((len(seqs),), sid, dtype=torch.long, device=dev)
        spec = self.net(ids.to(dev), mask.to(dev), spk)
        return spec, mask.sum(1) * self.net.r

    @torch.inference_mode()
    def refine(self, spec: torch.Tensor, seqs: Sequence[np.ndarray], voice: str | None = None) -> torch.Tensor:
        """(B, T*r, bins) network output -> the same with each clip's frames matched to real ones
        (`cfg.knn`); unchanged without a matching set, with knn=0 or for a voice other than the set's."""
        m = self.matching
        if not self.cfg.knn or m is None or (voice is not None and voice != m.voice):
            return spec
        out = spec.float().clone()
        lengths = torch.as_tensor([len(s) for s in seqs]) * self.net.r
        valid = torch.arange(out.shape[1])[None] < lengths[:, None]  # (B, T*r): the clips' own frames, in clip order
        units = torch.as_tensor(np.concatenate([np.repeat(np.asarray(s, dtype=np.int64), self.net.r) for s in seqs]))
        out[valid.to(out.device)] = m.refine(out[valid.to(out.device)], units.to(out.device), self.cfg.knn,
                                             self.cfg.knn_context, self.cfg.knn_stride, lengths.tolist())
        return out

    @torch.inference_mode()
    def synthesize_batch(self, batch: Sequence[Sequence[int]], batch_size: int = 16,
                         voice: str | None = None) -> list[np.ndarray]:
        """Each unit sequence -> float32 16 kHz waveform of len(units_expanded) / frame_rate seconds.
        `voice`: a training speaker of a speaker-conditioned vocoder (default: `cfg.voice`)."""
        if isinstance(batch, np.ndarray) and batch.ndim == 1:
            raise ValueError("synthesize_batch takes a list of unit sequences; use synthesize for one")
        seqs = [self._validate(u, i) for i, u in enumerate(batch)]
        seqs = self.expand(seqs)
        c = self.cfg
        out: list[np.ndarray | None] = [None] * len(seqs)
        order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))  # similar lengths waste little padding
        for s in range(0, len(order), batch_size):
            idx = order[s : s + batch_size]
            spec, frames = self.spectrogram_batch([seqs[i] for i in idx], voice)
            spec = self.refine(spec, [seqs[i] for i in idx], voice)
            wav = griffin_lim(c.to_log_magnitude(spec), c.n_fft, c.hop, c.win_length, c.gl_iters, c.gl_momentum,
                              c.gl_power, frames)
            peak = wav.abs().amax(1, keepdim=True).clamp_min(1e-4)
            wav = wav * torch.clamp(0.9 / peak, max=1.0)  # never clip, never amplify noise
            for row, i in enumerate(idx):
                out[i] = wav[row, : int(frames[row]) * c.hop].float().cpu().numpy()
        return out  # type: ignore[return-value]

    def synthesize(self, units: Sequence[int], voice: str | None = None) -> np.ndarray:
        """One unit sequence -> float32 16 kHz waveform."""
        return self.synthesize_batch([self._validate(units)], voice=voice)[0]

    def seconds(self, n_units: int) -> float:
        """Duration of the audio synthesized from `n_units` frame-rate units."""
        return n_units / self.cfg.frame_rate

    def num_params(self) -> int:
        return sum(p.numel() for p in self.net.parameters())


def lr_scale(progress: float, warmup: float) -> float:
    """Learning-rate multiplier at `progress` in [0, 1] of training: linear warmup over the
    first `warmup` fraction, then cosine decay to 10 %. Progress, not steps, so a run bounded
    by wall-clock minutes decays on time."""
    if progress < warmup:
        return max(progress / warmup, 0.01)
    t = min(1.0, (progress - warmup) / max(1e-9, 1 - warmup))
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t))
