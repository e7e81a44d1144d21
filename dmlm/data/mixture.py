"""The task mixture: which examples each epoch holds, as a pure function of (seed, epoch).

Design decisions:
- A mixture is a list of task specs with sampling weights (nanochat's `TaskMixture`). A weight
  is a share of *examples*: an epoch of E = Σ_t N_t examples holds round(E · w_t / Σw) of
  task t. Token shares follow from the tasks' lengths and are logged per step
  (`tokens_text`, `tokens_speech`, `tokens_image` and `examples_<task>` in the training log).
- Each task walks its own endless stream of reshuffled passes over its pool, seeded by
  (seed, task, pass); epoch e takes the next slice of it. So every example of a task is seen
  once before any is repeated, whatever the weights, and any epoch can be rebuilt from
  (seed, e) alone: resuming needs only the epoch and batch counters.
- A single task with weight 1 gives each epoch as one permutation of its pool: plain
  epochs.
- Batching (length buckets under a token budget) happens after sampling, over the epoch's
  items, so tasks of similar length share batches and padding stays low.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from dmlm.util.errors import UserError


class Mixture:
    def __init__(self, sizes: Sequence[int], weights: Sequence[float], seed: int = 0, names: Sequence[str] = ()):
        if len(sizes) != len(weights):
            raise ValueError(f"mixture: {len(sizes)} tasks but {len(weights)} weights")
        names = list(names) or [str(i) for i in range(len(sizes))]
        for n, s, w in zip(names, sizes, weights):
            if w < 0:
                raise UserError(f"mixture: task {n!r} has a negative weight {w}")
            if w > 0 and s == 0:
                raise UserError(f"mixture: task {n!r} has weight {w} but no examples in the training data")
        if sum(weights) <= 0:
            raise UserError("mixture: all task weights are zero")
        self.sizes, self.names, self.seed = [int(s) for s in sizes], names, seed
        total = sum(self.sizes)
        w = np.asarray(weights, dtype=np.float64) / sum(weights)
        self.per_epoch = [int(round(total * x)) for x in w]

    def _stream(self, t: int, start: int, n: int) -> np.ndarray:
        """Items [start, start+n) of task t's endless reshuffled stream."""
        N = self.sizes[t]
        out = []
        pos = start
        while pos < start + n:
            p, off = divmod(pos, N)
            perm = np.random.default_rng([self.seed, t, p]).permutation(N)
            take = min(N - off, start + n - pos)
            out.append(perm[off : off + take])
            pos += take
        return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)

    def epoch(self, e: int) -> list[tuple[int, int]]:
        """(task index, example index) pairs of epoch `e`, grouped by task."""
        items: list[tuple[int, int]] = []
        for t, n in enumerate(self.per_epoch):
            if n:
                items += [(t, int(i)) for i in self._stream(t, e * n, n)]
        return items
