"""The unit vocoder's network: (B, T) units at the codebook frame rate -> (B, T * r, n_bins) log spectrogram.

Design decisions (measurements: docs/experiments.md, "Speech out"; the whole design: `dmlm.vocoder`):
- All conv layers run at the unit rate (25 Hz) where they are cheap; each unit's output is
  spread over its r spectrogram frames (hop 160 = 100 Hz, r = 4 for 25 Hz units, from the
  codebook's frame rate) with a learned embedding of the frame's position in its unit.
  Frame-rate conv layers (`frame_layers`) are available but bought nothing for their cost.
- The output starts from a lookup table of the mean target frame of each (unit, position in
  unit), filled from data before training (`dmlm.vocoder.train`); the conv net learns the
  context-dependent residual, its output layer starting at zero.
- Speaker conditioning adds an embedding of the training speaker to every unit (zero at start).
- Padded positions are zeroed before every convolution, so a clip's output does not depend on
  its batch mates (batched synthesis = one-by-one synthesis).
- Codebooks that deduplicate units get a duration predictor (a small conv net regressing log
  run-lengths per unit), used before upsampling.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from dmlm.vocoder.config import VocoderConfig


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
