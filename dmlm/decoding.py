"""Decoding = options + strategy + logit filters.

Design decisions:
- Beam search and sampling are those of `transformers` `generate`; dmlm adds one composable
  piece, `ModalityFilter`, which masks every id outside the target modality's range except
  its close tag (Whisper's `LogitFilter` idea). Generation stops at the close tag.
- Greedy decoding, the strategy evaluation uses, has its own lean loop (`greedy`) instead of
  `generate`'s per-step machinery (input preparation, mask and position concatenation,
  processor and stopping lists, a cache that `torch.cat`s all its keys and values every
  step). It calls the same model forward with the same inputs as `generate` (the left-padded
  prompt once, then one token per step with a KV cache, positions counted from the attention
  mask, a mask of all ones dropped), so it returns the same ids; `engine="transformers"`
  runs `generate` instead, for comparison. What it does differently:
  * the cache is `generate`'s `DynamicCache` with layers that write each step into one
    buffer sized for the whole generation (`_BufferLayer`); attention sees the same tensors;
  * the attention mask is preallocated and sliced; positions are computed, not concatenated;
  * the filter is a precomputed additive bias (0 or -inf) on the last logits;
  * finished rows are tracked on the host; once half of the batch is done they are dropped,
    shrinking the batch and its cache (down to `MIN_ROWS`, see there).
  On CPU at the demo's shape (batch 32, 60-90-token prompts, 16 new tokens) the prompt
  forward, the same matmul-bound work in both engines, is ~70 % of the time, and the steps
  are bound by reading weights and cache, so the gain is ~1.05-1.1x end to end and
  ~1.1-1.3x per step (`bench/decode_speed.py`).
- Prompts are exactly the task's rendered prefix (`Task.prompt`), batched left-padded and
  sorted by length so batches waste little padding; results come back in input order.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tqdm import tqdm
from transformers import DynamicCache, LogitsProcessor, LogitsProcessorList, PreTrainedModel
from transformers.cache_utils import DynamicLayer

from dmlm.vocab import Vocab


@dataclass(frozen=True)
class DecodingOptions:
    strategy: str = "greedy"
    """greedy, beam or sample."""
    engine: str = "dmlm"
    """Greedy loop: dmlm (lean, same ids) or transformers (`generate`); beam and sample always use `generate`."""
    beam_size: int = 4
    """Beams for strategy=beam."""
    max_new_tokens: int = 256
    """Longest target to generate."""
    temperature: float = 1.0
    """Softmax temperature for strategy=sample."""
    top_k: int = 0
    """Sample from the k most likely tokens (0: all)."""
    top_p: float = 1.0
    """Nucleus sampling mass."""
    length_penalty: float = 1.0
    """Beam score exponent on length."""
    batch_size: int = 32
    """Prompts decoded together (sorted by length)."""
    seed: int = 0
    """Seed for strategy=sample."""

    def __post_init__(self) -> None:
        if self.strategy not in ("greedy", "beam", "sample"):
            raise ValueError(f"decoding strategy must be greedy, beam or sample, got {self.strategy!r}")
        if self.engine not in ("dmlm", "transformers"):
            raise ValueError(f"decoding engine must be dmlm or transformers, got {self.engine!r}")


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

    def bias(self, size: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """The filter as an additive bias over `size` logits: 0 where allowed, -inf elsewhere; (V,)."""
        return torch.zeros(size, device=device).masked_fill(~self._allowed(size, device), float("-inf"))

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        return scores.masked_fill(~self._allowed(scores.shape[-1], scores.device), float("-inf"))


MIN_ROWS = 4
"""`greedy` never shrinks a batch below this many rows: MKL multiplies 1-3 rows on another
(gemv-like) path that rounds differently, while with >= 4 rows each row's result is bitwise
that of the full batch (measured on torch 2.13's MKL, AVX-512), hence the same as `generate`'s."""


class _BufferLayer(DynamicLayer):
    """A `DynamicLayer` whose keys/values are views of one buffer sized for the whole generation.

    `DynamicLayer.update` concatenates, copying the whole cache every step; here each step
    writes one slot in place. Attention sees the same values in the same shape.
    """

    def __init__(self, capacity: int):
        super().__init__()
        self.capacity = capacity
        self.length = 0

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        b, h, _, _ = key_states.shape
        self.device = key_states.device
        # (B, H, capacity, D)
        self.k_buf = key_states.new_zeros(b, h, self.capacity, key_states.shape[-1])
        self.v_buf = value_states.new_zeros(b, h, self.capacity, value_states.shape[-1])
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        n = key_states.shape[-2]
        self.k_buf[:, :, self.length : self.length + n] = key_states
        self.v_buf[:, :, self.length : self.length + n] = value_states
        self.length += n
        self.keys = self.k_buf[:, :, : self.length]
        self.values = self.v_buf[:, :, : self.length]
        return self.keys, self.values

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.is_initialized:
            self.k_buf, self.v_buf = self.k_buf[indices], self.v_buf[indices]
            self.keys = self.k_buf[:, :, : self.length]
            self.values = self.v_buf[:, :, : self.length]


def _buffer_cache(model: PreTrainedModel, capacity: int) -> DynamicCache:
    """The cache `generate` would make, with its plain full-attention layers made `_BufferLayer`s."""
    cache = DynamicCache(config=model.config)
    cache.layers = [_BufferLayer(capacity) if type(layer) is DynamicLayer else layer for layer in cache.layers]
    return cache


def _forward_kwargs(model: PreTrainedModel) -> tuple[str, bool]:
    """(name of the cache argument, whether forward takes position_ids): both vary across
    transformers versions and models."""
    params = inspect.signature(model.forward).parameters
    return ("cache" if "cache" in params else "past_key_values"), "position_ids" in params


@torch.inference_mode()
def greedy(
    model: PreTrainedModel, ids: torch.Tensor, mask: torch.Tensor, bias: torch.Tensor, close: int,
    max_new_tokens: int,
) -> list[list[int]]:
    """Greedy continuation of left-padded `ids` (B, T) with `mask` (B, T) until `close` or
    `max_new_tokens`; `bias` (V,) is added to every step's logits. Returns each row's new ids
    without the close tag."""
    b, t = ids.shape
    cache_arg, takes_positions = _forward_kwargs(model)
    cache = _buffer_cache(model, t + max_new_tokens)
    # as in `generate`: positions count real tokens (pads get 0), and a mask of all ones is dropped
    padded = bool((mask == 0).any())
    full_mask = torch.ones(b, t + max_new_tokens, dtype=mask.dtype, device=mask.device)  # (B, T + N)
    full_mask[:, :t] = mask
    positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)  # (B, T)
    next_pos = positions[:, -1:] + 1  # (B, 1): position of the first new token
    rows = list(range(b))  # input row of each row still in the batch
    finished = torch.zeros(b, dtype=torch.bool, device=ids.device)
    out: list[list[int]] = [[] for _ in range(b)]
    kwargs = {cache_arg: cache, "use_cache": True, "logits_to_keep": 1}
    inputs = ids
    for step in range(max_new_tokens):
        if takes_positions:
            kwargs["position_ids"] = positions if step == 0 else next_pos + (step - 1)
        attn = full_mask[:, : t + step] if padded else None
        logits = model(input_ids=inputs, attention_mask=attn, **kwargs).logits  # (B', 1, V)
        next_ids = (logits[:, -1].float() + bias).argmax(-1)  # (B',)
        stop = finished | (next_ids == close)
        for r, tok, s in zip(rows, next_ids.tolist(), stop.tolist()):
            if not s:
                out[r].append(tok)
        finished = stop
        n_done = int(finished.sum())
        if n_done == len(rows):
            break
        inputs = next_ids[:, None]  # (B', 1); finished rows run on until dropped, as in `generate`
        if len(rows) > MIN_ROWS and 2 * (len(rows) - n_done) <= len(rows):
            # most rows are done: drop them, shrinking the batch and its cache, but keep
            # MIN_ROWS rows (finished ones ride along) so each row's matmuls round as before
            keep = (~finished).nonzero().squeeze(1)
            if len(keep) < MIN_ROWS:
                keep = torch.cat([keep, finished.nonzero().squeeze(1)[: MIN_ROWS - len(keep)]]).sort().values
            rows = [rows[i] for i in keep.tolist()]
            inputs, full_mask, next_pos, finished = inputs[keep], full_mask[keep], next_pos[keep], finished[keep]
            cache.batch_select_indices(keep)
    return out


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
    bias = filt.bias(model.get_output_embeddings().weight.shape[0], device) if lean else None
    if opts.strategy == "sample":
        torch.manual_seed(opts.seed)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    batches = [order[i : i + opts.batch_size] for i in range(0, len(order), opts.batch_size)]
    out: list[list[int]] = [[] for _ in prompts]
    for idx in tqdm(batches, desc="decode", unit="batch", disable=not progress):
        ids, mask = _left_pad([prompts[i] for i in idx], vocab.pad)
        ids, mask = ids.to(device), mask.to(device)
        if lean:
            gen = greedy(model, ids, mask, bias, close, opts.max_new_tokens)
        else:
            gen = _generate_hf(model, ids, mask, filt, close, vocab.pad, opts)
        for i, seq in zip(idx, gen):
            out[i] = seq
    return out
