"""The order training reads its examples in: batches, their position, and what they waste.

Design decisions:
- Data order is a pure function of (seed, epoch): length-bucketed batches under a padded-token
  budget, shuffled, or with `train.packing` rows of several examples (`dmlm.training.packing`).
  The mixture of tasks (`dmlm.data.mixture`) picks each epoch's examples, also from (seed, epoch).
- The position in that order (`Progress`) is training state, so `--resume` continues exactly
  where a killed run stopped: same batches, same losses.
- Every rank walks the same global order; the loop hands rank r micro-batches r, r+world, …
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from dmlm.data.mixture import Mixture
from dmlm.tasks import Rendered
from dmlm.training.config import TrainConfig
from dmlm.training.packing import collate_packed, packed_batches, packed_padding_share, row_length
from dmlm.util.errors import UserError

SORT_CHUNK = 2048  # sort within chunks of this many examples: buckets stay random across the epoch


def bucket_batches(lengths: np.ndarray, batch_tokens: int, seed: int, epoch: int) -> list[list[int]]:
    """Batches of similar length under a padded-token budget; a pure function of (seed, epoch)."""
    rng = np.random.default_rng([seed, epoch])
    perm = rng.permutation(len(lengths))
    batches: list[list[int]] = []
    for s in range(0, len(perm), SORT_CHUNK):
        idx = sorted(perm[s : s + SORT_CHUNK].tolist(), key=lambda i: lengths[i])
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
    """Where a run is: steps taken, the position in the data order, time and tokens so far."""

    step: int = 0
    epoch: int = 0
    batch: int = 0  # index of the next micro-batch within the epoch
    elapsed: float = 0.0  # training seconds so far
    tokens: int = 0
    examples: int = 0  # examples (utterances, texts, images) trained on so far, every rank's
    world_size: int | None = None  # ranks that took the batches so far: resuming with another count changes them
    grad_accum: int | None = None  # (None: a state written before dmlm recorded them; not checked)

    def fraction(self, train: TrainConfig) -> float:
        """How much of the step (or, with `max_minutes`, time) budget of `train` is done; >= 1: finished."""
        f = self.step / train.steps
        if train.max_minutes > 0:
            f = max(f, self.elapsed / 60 / train.max_minutes)
        return f


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
        """The next micro-batch; past the end of an epoch, the first of the next one."""
        if self.p.batch >= len(self._epoch_batches):
            self.p.epoch += 1
            self.p.batch = 0
            self._load(self.p.epoch)
        idx = self._epoch_batches[self.p.batch]
        self.p.batch += 1
        if self.packing:
            return [[self.rendered[self._items[i]] for i in row] for row in idx]
        return [self.rendered[self._items[i]] for i in idx]


def _random_batches(lengths: np.ndarray, batch_tokens: int, seed: int) -> list[list[int]]:
    """Plain shuffled batching under the same padded-token budget (the baseline of `padding_share`)."""
    rng = np.random.default_rng([seed, 0])
    batches: list[list[int]] = []
    cur: list[int] = []
    for i in rng.permutation(len(lengths)).tolist():
        if cur and max(int(lengths[j]) for j in cur + [i]) * (len(cur) + 1) > batch_tokens:
            batches.append(cur)
            cur = []
        cur.append(i)
    if cur:
        batches.append(cur)
    return batches


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

    out = {"bucketed": share(bucket_batches(lengths, batch_tokens, seed, 0)),
           "random": share(_random_batches(lengths, batch_tokens, seed))}
    if row_tokens:
        out["packed"] = packed_padding_share(lengths, batch_tokens, row_tokens, seed)
    return out
