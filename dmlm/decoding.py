"""Decoding = options + strategy + logit filters.

Design decisions:
- Strategies (greedy, beam, sampling) are those of `transformers` `generate`, with its KV
  cache and batching; dmlm adds one composable piece, `ModalityFilter`, a `LogitsProcessor`
  that masks every id outside the target modality's range except its close tag
  (Whisper's `LogitFilter` idea). Generation stops at the close tag.
- Prompts are exactly the task's rendered prefix (`Task.prompt`), batched left-padded and
  sorted by length so batches waste little padding; results come back in input order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tqdm import tqdm
from transformers import LogitsProcessor, LogitsProcessorList, PreTrainedModel

from dmlm.vocab import Vocab


@dataclass(frozen=True)
class DecodingOptions:
    strategy: str = "greedy"
    """greedy, beam or sample."""
    beam_size: int = 4
    max_new_tokens: int = 256
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    length_penalty: float = 1.0
    batch_size: int = 32
    seed: int = 0

    def __post_init__(self) -> None:
        if self.strategy not in ("greedy", "beam", "sample"):
            raise ValueError(f"decoding strategy must be greedy, beam or sample, got {self.strategy!r}")


class ModalityFilter(LogitsProcessor):
    """Allow only ids of one modality plus extra ids (the close tag); scores: (B, V)."""

    def __init__(self, vocab: Vocab, modality: str, extra: Sequence[int] = ()):
        lo, hi = vocab.range(modality)
        self.allowed = torch.zeros(vocab.size, dtype=torch.bool)
        self.allowed[lo:hi] = True
        if modality == "text":
            # the text tokenizer's own bos/eos are not words
            for i in (vocab.bos_id, vocab.eos_id):
                if i is not None and i < hi:
                    self.allowed[i] = False
        self.allowed[list(extra)] = True

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        allowed = self.allowed.to(scores.device)
        if scores.shape[-1] > allowed.shape[0]:  # model rows past the layout
            allowed = torch.cat([allowed, allowed.new_zeros(scores.shape[-1] - allowed.shape[0])])
        return scores.masked_fill(~allowed[: scores.shape[-1]], float("-inf"))


@torch.inference_mode()
def generate(
    model: PreTrainedModel, prompts: Sequence[Sequence[int]], vocab: Vocab, target: str,
    opts: DecodingOptions = DecodingOptions(), progress: bool = False,
) -> list[list[int]]:
    """Continue each prompt in the `target` modality until its close tag; returns target ids."""
    close = vocab.close(target)
    device = next(model.parameters()).device
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out: list[list[int]] = [[] for _ in prompts]
    processors = LogitsProcessorList([ModalityFilter(vocab, target, extra=[close])])
    if opts.strategy == "sample":
        torch.manual_seed(opts.seed)
    batches = [order[i : i + opts.batch_size] for i in range(0, len(order), opts.batch_size)]
    for idx in tqdm(batches, desc="decode", unit="batch", disable=not progress):
        width = max(len(prompts[i]) for i in idx)
        ids = torch.full((len(idx), width), vocab.pad, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for row, i in enumerate(idx):
            p = torch.as_tensor(list(prompts[i]), dtype=torch.long)
            ids[row, width - len(p) :] = p  # left padding: every row ends where generation starts
            mask[row, width - len(p) :] = 1
        kwargs = dict(
            max_new_tokens=opts.max_new_tokens, eos_token_id=close, pad_token_id=vocab.pad,
            logits_processor=processors, do_sample=opts.strategy == "sample",
            num_beams=opts.beam_size if opts.strategy == "beam" else 1,
        )
        if opts.strategy == "sample":
            kwargs.update(temperature=opts.temperature, top_k=opts.top_k or None, top_p=opts.top_p)
        if opts.strategy == "beam":
            kwargs.update(length_penalty=opts.length_penalty, early_stopping=True)
        gen = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), **kwargs)
        for row, i in enumerate(idx):
            seq = gen[row, width:].tolist()
            if close in seq:
                seq = seq[: seq.index(close)]
            out[i] = [t for t in seq if t != vocab.pad]
    return out
