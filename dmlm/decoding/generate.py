"""Decoding = options + strategy + logit filters.

Design decisions:
- Beam search and sampling are those of `transformers` `generate`; dmlm adds one composable
  piece, `ModalityFilter`, which masks every id outside the target modality's range except
  its close tag (Whisper's `LogitFilter` idea). Generation stops at the close tag.
- Greedy decoding, the strategy evaluation uses, has its own loop (`dmlm.decoding.greedy`) that returns
  `generate`'s ids with less work (no padding in the prompt pass, only the target modality's
  rows of the head, a preallocated cache, finished rows dropped); `engine="transformers"` runs
  `generate` instead, for comparison (`bench/decode_speed.py`). `compute_type="bfloat16"`
  gives up bitwise equality for speed: matmuls and the cache in bf16 (`dmlm.decoding.greedy.for_compute`).
- T2S can rerank (`rerank=N`): N candidates per text (the first by `strategy`, the others
  sampled) and the one the same model's ASR task finds likeliest to say the input text,
  log P(text | units), is kept (`dmlm.inference.run_task`). No other model is involved, so the
  judge of the audio stays independent (measurements: docs/experiments.md, "Speech out").
- Prompts are exactly the task's rendered prefix (`Task.prompt`), batched left-padded and
  sorted by length so batches waste little padding; results come back in input order.
- Nothing runs past the model's positions (`model.max_positions`): a prompt that does not fit
  is refused (`check_positions`, naming the input), and a batch's `max_new_tokens` is cut to the
  positions left after its longest prompt; outputs that reach that cut are reported (a warning
  with their count), since they stop before their close tag.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import replace

import torch
from dmlm.util.progress import tqdm
from transformers import LogitsProcessor, LogitsProcessorList, PreTrainedModel

from dmlm.decoding.greedy import for_compute, greedy
from dmlm.decoding.options import DecodingOptions
from dmlm.modeling.checkpoint import model_positions
from dmlm.util.errors import UserError
from dmlm.vocab import Vocab

log = logging.getLogger(__name__)

PER_PROMPT_SLACK = 16
"""max_len_b of `DecodingOptions.max_new_per_prompt`: new tokens allowed beyond the per-prompt-token share."""


def check_positions(model: PreTrainedModel, prompts: Sequence[Sequence[int]], names: Sequence[str], what: str) -> None:
    """Refuse prompts that leave the model no position to answer in, naming the first such input."""
    limit = model_positions(model)
    if limit is None:
        return
    for name, p in zip(names, prompts):
        if len(p) >= limit:
            raise UserError(f"{what} input {name!r}: its prompt is {len(p)} tokens but the model has {limit} "
                            "positions (model.max_positions); shorten or split it (e.g. shorter clips or texts)")


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

    def _allowed(self, size: int, device: torch.device) -> torch.Tensor:
        allowed = self.allowed.to(device)
        if size > allowed.shape[0]:  # model rows past the layout
            allowed = torch.cat([allowed, allowed.new_zeros(size - allowed.shape[0])])
        return allowed[:size]

    def allowed_ids(self, size: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """The ids the filter lets through among `size` logits, ascending; (A,)."""
        return self._allowed(size, device).nonzero().squeeze(1)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        return scores.masked_fill(~self._allowed(scores.shape[-1], scores.device), float("-inf"))


def _left_pad(prompts: Sequence[Sequence[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, mask), both (B, T): every row ends where generation starts."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, p in enumerate(prompts):
        ids[row, width - len(p) :] = torch.as_tensor(list(p), dtype=torch.long)
        mask[row, width - len(p) :] = 1
    return ids, mask


def _generate_hf(
    model: PreTrainedModel, ids: torch.Tensor, mask: torch.Tensor, filt: ModalityFilter, close: int, pad: int,
    opts: DecodingOptions,
) -> list[list[int]]:
    kwargs = dict(
        max_new_tokens=opts.max_new_tokens, eos_token_id=close, pad_token_id=pad,
        logits_processor=LogitsProcessorList([filt]), do_sample=opts.strategy == "sample",
        num_beams=opts.beam_size if opts.strategy == "beam" else 1,
    )
    if opts.strategy == "sample":
        kwargs.update(temperature=opts.temperature, top_k=opts.top_k or None, top_p=opts.top_p)
    if opts.strategy == "beam":
        kwargs.update(length_penalty=opts.length_penalty, early_stopping=True)
    gen = model.generate(input_ids=ids, attention_mask=mask, **kwargs)
    out = []
    for seq in gen[:, ids.shape[1] :].tolist():
        if close in seq:
            seq = seq[: seq.index(close)]
        out.append([t for t in seq if t != pad])
    return out


@torch.inference_mode()
def generate(
    model: PreTrainedModel, prompts: Sequence[Sequence[int]], vocab: Vocab, target: str,
    opts: DecodingOptions = DecodingOptions(), progress: bool = False,
) -> list[list[int]]:
    """Continue each prompt in the `target` modality until its close tag; returns target ids."""
    close = vocab.close(target)
    device = next(model.parameters()).device
    filt = ModalityFilter(vocab, target, extra=[close])
    lean = opts.strategy == "greedy" and opts.engine == "dmlm"
    allowed = filt.allowed_ids(model.get_output_embeddings().weight.shape[0], device) if lean else None
    if opts.strategy == "sample":
        torch.manual_seed(opts.seed)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    batches = [order[i : i + opts.batch_size] for i in range(0, len(order), opts.batch_size)]
    out: list[list[int]] = [[] for _ in prompts]
    run = for_compute(model, opts.compute_type) if lean else model
    limit = model_positions(model)
    cut = 0  # outputs stopped by the model's positions, not by their close tag
    for idx in tqdm(batches, desc="decode", unit="batch", disable=not progress):
        ids, mask = _left_pad([prompts[i] for i in idx], vocab.pad)
        ids, mask = ids.to(device), mask.to(device)
        n_new = opts.max_new_tokens if limit is None else max(0, min(opts.max_new_tokens, limit - ids.shape[1]))
        if opts.max_new_per_prompt > 0:  # a looping output stops near its input's length
            n_new = min(n_new, math.ceil(opts.max_new_per_prompt * ids.shape[1]) + PER_PROMPT_SLACK)
        if lean:
            gen = greedy(run, ids, mask, allowed, close, n_new)
        else:
            gen = _generate_hf(model, ids, mask, filt, close, vocab.pad, replace(opts, max_new_tokens=n_new)) \
                if n_new else [[] for _ in idx]
        if n_new < opts.max_new_tokens and limit is not None and n_new == limit - ids.shape[1]:
            cut += sum(len(seq) >= n_new for seq in gen)
        for i, seq in zip(idx, gen):
            out[i] = seq
    if cut:
        log.warning("%d of %d %s outputs reached the model's %d positions (prompt + output) before their close tag: "
                    "they are cut there", cut, len(prompts), target, limit)
    return out
