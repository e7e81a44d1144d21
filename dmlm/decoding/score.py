"""Teacher-forced scoring: the one place dmlm computes log P(target | prompt).

Used by T2S reranking (log P(text | units) under the ASR task), by `return_details`
(the log-probability of what was decoded), and by LM-task evaluation (perplexity). Rows are
right-padded, so positions need no shift; only the target positions go through the
log-softmax, in float32.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import PreTrainedModel


@torch.inference_mode()
def target_log_likelihood(model: PreTrainedModel, prompts: Sequence[Sequence[int]], targets: Sequence[Sequence[int]],
                          pad: int, batch_size: int = 32) -> list[float]:
    """Sum of log P(target token | prompt, earlier target tokens) for each (prompt, target); every id allowed.

    An empty target scores 0.0. One forward pass per batch of `batch_size` rows."""
    if len(prompts) != len(targets):
        raise ValueError(f"{len(prompts)} prompts but {len(targets)} targets")
    device = next(model.parameters()).device
    out = [0.0] * len(prompts)
    todo = [i for i, t in enumerate(targets) if len(t)]
    for s in range(0, len(todo), batch_size):
        idx = todo[s : s + batch_size]
        seqs = [list(prompts[i]) + list(targets[i]) for i in idx]
        width = max(len(q) for q in seqs)
        ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, q in enumerate(seqs):
            ids[row, : len(q)] = torch.as_tensor(q)
            mask[row, : len(q)] = 1
        ids, mask = ids.to(device), mask.to(device)
        logits = model(input_ids=ids, attention_mask=mask).logits  # (B, T, V)
        for row, i in enumerate(idx):
            start, n = len(prompts[i]), len(targets[i])
            logp = logits[row, start - 1 : start - 1 + n].float().log_softmax(-1)  # (n, V)
            out[i] = float(logp.gather(1, ids[row, start : start + n, None]).sum())
    return out
