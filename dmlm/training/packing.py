"""Sequence packing: several rendered examples per row, none attending to another.

Design decisions:
- Rows hold whole examples (none is split): best-fit decreasing over the epoch's examples into
  rows of `row_tokens` (`row_length`: the token budget cut into equal rows of at least 4× the
  longest example, so a micro-batch of rows still fills `train.batch_tokens`; rows of one
  longest example pack badly when most examples are just over half of it). Rows are shuffled
  and grouped; the order is a pure function of (seed, epoch), like length buckets, so exact
  resume needs only the epoch and batch counters.
- Each example keeps its own positions (0, 1, …) and sees only itself: `position_ids` restart
  per example and a 4-D block-diagonal causal mask (B, 1, T, T), additive float (0 where a
  query may look, dtype min where not). Hugging Face Llama, GPT-2 and OPT take a 4-D mask
  as-is under both sdpa and eager attention (a boolean one would be *added* by eager attention:
  a silent leak). Padding at the end of a row is one more block, so no query row is fully
  masked (sdpa returns NaN there).
- The loss sees the same tokens with the same weights as unpacked batches; the one new rule,
  that an example's last token does not predict the next example's first, lives in
  `dmlm.training.loss.loss_weights` (`segment`). Packing changes the compute, never the objective.
- A family that cannot honour this (e.g. BLOOM builds ALiBi biases from a 2-D mask) is refused
  by `dmlm.modeling.check_packing` before training, by name.
"""

from __future__ import annotations

import bisect
from typing import TYPE_CHECKING

import numpy as np
import torch
from transformers import PreTrainedModel

from dmlm.util.errors import UserError

if TYPE_CHECKING:
    from dmlm.tasks import Rendered


def row_length(longest: int, batch_tokens: int, pack_tokens: int = 0) -> int:
    """Length of a packed row: `pack_tokens`, or the budget cut into equal rows of at least 4× the longest example.

    Longer rows pack tighter (fewer examples left with no partner that fits) but every token
    attends over the whole row, masked or not; 4× keeps the demo's padding under 0.5 %.
    """
    if longest > batch_tokens:
        raise UserError(f"a sequence of {longest} tokens exceeds train.batch_tokens={batch_tokens}")
    if pack_tokens:
        if not longest <= pack_tokens <= batch_tokens:
            raise UserError(f"train.pack_tokens={pack_tokens} must lie between the longest sequence ({longest}) "
                             f"and train.batch_tokens={batch_tokens}")
        return pack_tokens
    return batch_tokens // max(1, batch_tokens // (4 * longest))


def pack_rows(lengths: np.ndarray, row_tokens: int, seed: int, epoch: int) -> list[list[int]]:
    """Indices of `lengths` packed into rows of at most `row_tokens` tokens (best-fit decreasing), shuffled."""
    if len(lengths) and int(lengths.max()) > row_tokens:
        raise UserError(f"a sequence of {int(lengths.max())} tokens exceeds the packed row length {row_tokens}")
    rng = np.random.default_rng([seed, epoch])
    perm = rng.permutation(len(lengths))
    order = perm[np.argsort(-lengths[perm], kind="stable")]  # longest first; equal lengths in random order
    rows: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (room left, row) of rows that can take more, sorted
    for i in order.tolist():
        n = int(lengths[i])
        k = bisect.bisect_left(free, (n, -1))  # the fullest row that still has room for it
        if k == len(free):
            rows.append([i])
            room, r = row_tokens - n, len(rows) - 1
        else:
            room, r = free.pop(k)
            rows[r].append(i)
            room -= n
        if room > 0:
            bisect.insort(free, (room, r))
    return [rows[j] for j in rng.permutation(len(rows))]


def packed_batches(lengths: np.ndarray, batch_tokens: int, row_tokens: int, seed: int,
                   epoch: int) -> list[list[list[int]]]:
    """Micro-batches of packed rows (each a list of example indices) under the token budget."""
    rows = pack_rows(lengths, row_tokens, seed, epoch)
    per = batch_tokens // row_tokens
    return [rows[s : s + per] for s in range(0, len(rows), per)]


def packed_padding_share(lengths: np.ndarray, batch_tokens: int, row_tokens: int, seed: int) -> float:
    """Share of padded positions in one epoch of packed micro-batches (each as wide as its fullest row)."""
    batches = packed_batches(lengths, batch_tokens, row_tokens, seed, 0)
    padded = sum(len(b) * max(sum(int(lengths[i]) for i in row) for row in b) for b in batches)
    return 1 - int(lengths.sum()) / max(padded, 1)


def collate_packed(rows: list[list[Rendered]], pad: int) -> dict[str, torch.Tensor]:
    """Tensors of packed rows: those of `dmlm.training.data_order.collate` plus `position_ids` and `segment`.

    `attention_mask` (B, T) still marks real tokens (loss weights, token counts); `segment`
    (B, T) numbers the examples of a row 0, 1, … and gives the padding after them a number of
    its own; `packed_attention_mask(segment)` is what the model attends with.
    """
    T = max(sum(len(r.ids) for r in row) for row in rows)
    B = len(rows)
    ids = torch.full((B, T), pad, dtype=torch.long)
    attn = torch.zeros((B, T), dtype=torch.long)
    target = torch.zeros((B, T), dtype=torch.long)
    modality = torch.zeros((B, T), dtype=torch.long)
    position = torch.zeros((B, T), dtype=torch.long)
    segment = torch.zeros((B, T), dtype=torch.long)
    for b, row in enumerate(rows):
        at = 0
        for s, r in enumerate(row):
            n = len(r.ids)
            ids[b, at : at + n] = torch.tensor(r.ids)
            attn[b, at : at + n] = 1
            target[b, at : at + n] = torch.tensor(r.target)
            modality[b, at : at + n] = torch.tensor(r.modality)
            position[b, at : at + n] = torch.arange(n)
            segment[b, at : at + n] = s
            at += n
        segment[b, at:] = len(row)
    return {"input_ids": ids, "attention_mask": attn, "target": target, "modality": modality,
            "position_ids": position, "segment": segment}


def packed_attention_mask(segment: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(B, T) segment numbers -> (B, 1, T, T) additive mask: query t sees key s iff s <= t in the same segment."""
    T = segment.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool, device=segment.device).tril()
    allowed = (segment[:, :, None] == segment[:, None, :]) & causal  # (B, T_query, T_key)
    mask = torch.zeros(allowed.shape, dtype=dtype, device=segment.device)
    return mask.masked_fill_(~allowed, torch.finfo(dtype).min)[:, None]


@torch.no_grad()
def check_packing(model: PreTrainedModel) -> None:
    """Refuse packed training (`train.packing`) with a model that would let packed examples meet.

    Two short random sequences run packed in one row (positions restarting, block-diagonal
    mask, `dmlm.training.packing`) and each alone must give the same logits. Families that build
    position biases from a 2-D mask (BLOOM's ALiBi) or ignore `position_ids` fail, by name.
    """
    family = model.config.model_type
    device = next(model.parameters()).device
    g = torch.Generator().manual_seed(0)  # not the global RNG: training randomness stays as without packing
    V = model.get_input_embeddings().num_embeddings
    a, b = (torch.randint(0, V, (1, n), generator=g).to(device) for n in (5, 3))
    segment = torch.tensor([[0] * 5 + [1] * 3], device=device)
    positions = torch.tensor([[*range(5), *range(3)]], device=device)
    was_training = model.training
    model.eval()
    try:
        packed = model(input_ids=torch.cat([a, b], 1), attention_mask=packed_attention_mask(segment),
                       position_ids=positions, use_cache=False).logits.float()
        alone = torch.cat([model(input_ids=x).logits.float() for x in (a, b)], 1)
    except Exception as e:  # noqa: BLE001 - any failure means: this family cannot run packed rows
        raise UserError(f"train.packing: the {family!r} model family cannot run packed rows "
                         f"({type(e).__name__}: {e}); set train.packing=false") from e
    finally:
        model.train(was_training)
    err = float((packed - alone).abs().max())
    tol = (1e-4 if next(model.parameters()).dtype == torch.float32 else 3e-2) * max(1.0, float(alone.abs().max()))
    if not err <= tol:
        raise UserError(f"train.packing: the {family!r} model family lets packed examples attend to each other "
                         f"(logits differ by {err:.3g} from each example run alone); set train.packing=false")
