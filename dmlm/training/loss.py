"""One multimodal cross-entropy; masks and per-modality weights select the variant.

Per predicted token t: cross-entropy ℓ_t, weight w_t ∈ {0, 1}, modality m_t.

- `full`:              L = Σ_t w_t ℓ_t / Σ_t w_t, w = every non-pad token
- `target`:            same, w = the target span only (what the task is judged on)
- `length_normalized`: L = Σ_m λ_m · Σ_{t∈m} w_t ℓ_t / Σ_{t∈m} w_t, w = every non-pad token
                       (DMLM, Trinh et al.: speech is 10–50× longer than text; a plain mean
                       lets speech drown the text tokens the ASR task is judged on)
- `target_length_normalized`: the same per-modality means over the target spans only: the
                       speech a task generates (T2S) no longer shares the speech mean with the
                       speech it reads (ASR and S2TT inputs), so its gradient is not diluted by
                       them; unpaired speech_lm still models speech unconditionally

Design decisions:
- The denominators are *global over the optimizer step* (all micro-batches, all ranks) and
  passed in as `counts`: each micro-batch returns its share of the step's loss, the shares
  sum to the loss of the whole batch, so the result does not depend on how a batch is split
  (gradient accumulation and data parallelism stay exact). ESPnet's `loss_region` and
  `modality_weights` are the model for one code path selected by data.
- The loss reads logits only where w > 0 (`logit_positions`), so the model may compute just
  those (`train.logits_at_targets`: logits (N, V) instead of (B, T, V)); `multimodal_loss`
  takes either and gives the same value (docs/design/loss.md).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dmlm.util.errors import UserError
from dmlm.vocab import MODALITIES

LOSSES = ("full", "target", "length_normalized", "target_length_normalized")
PER_MODALITY = ("length_normalized", "target_length_normalized")  # one mean per modality
TARGET_ONLY = ("target", "target_length_normalized")  # weigh the target span only
N_MOD = len(MODALITIES)


def loss_weights(loss: str, attention: torch.Tensor, target: torch.Tensor,
                 segment: torch.Tensor | None = None) -> torch.Tensor:
    """w_t for the *predicted* positions 1..T-1; attention/target: (B, T) -> (B, T-1) float.

    segment (B, T), for packed rows (`dmlm.training.packing`): which example each token belongs to;
    the first token of an example is not predicted (from the previous example's last), exactly
    as it is not at position 0 of an unpacked row.
    """
    if loss not in LOSSES:
        raise UserError(f"unknown loss {loss!r}; expected one of {LOSSES}")
    mask = target if loss in TARGET_ONLY else attention
    w = mask[:, 1:].float()
    if segment is not None:
        w = w * (segment[:, 1:] == segment[:, :-1])
    return w


def loss_counts(loss: str, weights: torch.Tensor, modality: torch.Tensor) -> torch.Tensor:
    """Denominators contributed by one micro-batch; (N_MOD,) for the per-modality losses else (1,).

    weights, modality: (B, T-1) at predicted positions.
    """
    if loss in PER_MODALITY:
        return torch.stack([(weights * (modality == m)).sum() for m in range(N_MOD)])
    return weights.sum().reshape(1)


def logit_positions(weights: torch.Tensor) -> torch.Tensor:
    """(B, T-1) weights from `loss_weights` -> (B, T) bool: the positions whose logits the loss reads.

    Position t predicts token t+1, so it is kept iff w_{t+1} > 0; the last position predicts
    nothing. With a target-span loss these are the target tokens' predecessors only: the output
    layer (T × V) need not run over the speech prompt (`train.logits_at_targets`).
    """
    keep = torch.zeros(weights.shape[0], weights.shape[1] + 1, dtype=torch.bool, device=weights.device)
    keep[:, :-1] = weights > 0
    return keep


def multimodal_loss(
    logits: torch.Tensor,  # (B, T, V), or (N, V) at the positions `logit_positions(weights)` keeps, row-major
    input_ids: torch.Tensor,  # (B, T)
    weights: torch.Tensor,  # (B, T-1) from loss_weights
    modality: torch.Tensor,  # (B, T) modality of each token
    loss: str,
    counts: torch.Tensor,  # global denominators of the step, from loss_counts summed
    lambdas: torch.Tensor | None = None,  # (N_MOD,) per-modality weights, default 1
) -> torch.Tensor:
    """This micro-batch's share of the step loss (sum over micro-batches = step loss).

    Kept logits (N, V) give the same value as full ones: the positions left out have weight 0.
    """
    V = logits.shape[-1]
    if logits.dim() == 2:  # only the positions the loss reads, in the order boolean indexing gives
        keep = weights > 0  # (B, T-1)
        ce = F.cross_entropy(logits.float(), input_ids[:, 1:][keep], reduction="none") * weights[keep]  # (N,)
        mod = modality[:, 1:][keep]
    else:
        ce = F.cross_entropy(logits[:, :-1].reshape(-1, V).float(), input_ids[:, 1:].reshape(-1), reduction="none")
        ce = ce.view_as(weights) * weights  # (B, T-1)
        mod = modality[:, 1:]
    if loss in PER_MODALITY:
        lam = lambdas if lambdas is not None else torch.ones(N_MOD, device=ce.device)
        total = ce.new_zeros(())
        for m in range(N_MOD):
            if counts[m] > 0:
                total = total + lam[m] * (ce * (mod == m)).sum() / counts[m]
        return total
    return ce.sum() / counts[0].clamp(min=1)
