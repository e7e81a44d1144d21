"""The matching set: real spectrogram frames of the output voice, grouped by unit, that replace
the network's blurred frames at synthesis (kNN, in the spirit of kNN-VC, Baas et al. 2023).

Design decisions (measurements: docs/experiments.md, "Speech out"):
- An L1-trained net predicts a context-averaged envelope, smoother than any real frame. Each
  predicted frame is replaced by the mean of its `knn` nearest real frames *of the same unit*
  (the unit is the key that keeps the content). It costs no training.
- Matching with context (`knn_context`): a frame alone is a poor key, but the shape of its
  surroundings is not. The distance compares the frames `knn_stride` apart on each side too, in
  the prediction and around each real frame (the set keeps each frame's neighbours in its clip:
  `prev`/`next`), and the mean of the `knn` real *centre* frames is taken.
- Frames are stored float16, sorted by unit, with `bounds` giving each unit's rows: one file
  (`matching.safetensors` in the vocoder folder), written atomically.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from dmlm.util.errors import UserError
from dmlm.vocoder.files import MATCHING


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
