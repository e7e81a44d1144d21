"""The learning-rate schedule every dmlm trainer uses (the model's and the vocoder's).

Design decisions:
- It runs on a progress fraction in [0, 1], not on steps: a run bounded by wall-clock minutes
  (the demo's vocoder, `train.max_minutes`) warms up and anneals on time as well as on steps.
- Linear warmup from `floor` to 1 over the first `warmup` fraction, then a half cosine down to
  `min_ratio`, held there past the end.
"""

from __future__ import annotations

import math


def warmup_cosine(progress: float, warmup: float, min_ratio: float, floor: float = 1e-3) -> float:
    """Learning-rate multiplier at `progress` of training (see the module note)."""
    if progress < warmup:
        return max(progress / warmup, floor)
    t = min(1.0, (progress - warmup) / max(1e-8, 1 - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * t))
