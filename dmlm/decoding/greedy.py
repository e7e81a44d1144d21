"""dmlm's own greedy decoding loop: the ids of `transformers` `generate`, with less work.

Design decisions:
- It calls the model's own modules on the inputs `generate` gives them, so each real position
  gets bitwise `generate`'s logits and the ids are `generate`'s (`tests/test_decoding.py`
  checks both, for Llama, GPT-2 and OPT). What it leaves out is work whose result is never read:
  * the prompt pass packs chunks of prompts back to back in one row, so the linear layers,
    nearly all of its work, see no padding; attention, a small part, still runs on the
    left-padded rows under `generate`'s mask (`_packed_attention`), which keeps it bitwise;
  * on the prompt pass the last layer's feed-forward runs only on each prompt's last position,
    the only one that reaches the head (`_only_rows`; 3/4 of that layer for Llama);
  * the head projects only the target modality's rows when they are few (the filter sets
    every other logit to -inf, so they never win the argmax); each output is its own dot
    product, so the kept ones are bitwise the full head's;
  * the cache is `generate`'s `DynamicCache` with layers that write each step into a
    preallocated buffer (`_BufferLayer`) instead of concatenating all of it;
  * finished rows are tracked on the host; once half of the batch is done they are dropped,
    shrinking the batch and its cache.
- Bitwise equality rests on one measured property of MKL's sgemm (torch 2.13, AVX-512): a row's
  result does not depend on the other rows as long as the row count is a multiple of
  `MIN_ROWS`. Every matmul that runs on fewer rows than `generate`'s keeps such a count.
- Only model types whose logits are `lm_head(base_model(...))` and whose base model takes
  `position_ids` (`PLAIN_HEAD`) get the base-model call, the partial head, packing and the
  feed-forward cut; other models run their own forward with `logits_to_keep=1` (same ids).
- During the prompt pass the model runs under the `PACKED` attention implementation and with
  hooks on its last feed-forward; both are undone after it. One model should not decode from
  two threads at once. The `PACKED` and `STEP` attention functions are registered with
  transformers on first use (`_register_attention`), not at import: importing dmlm changes no
  library's global registry.
- What remains is the work both engines do: on the project's CPU (1 thread) the prompt pass
  is matmul-bound, and a step reads every weight and the whole cache (bound by memory).
- `compute_type="bfloat16"` (`for_compute`) trades bitwise equality for speed, as inference
  engines do (CTranslate2's compute types): a copy of the model whose linear layers multiply in
  bf16 (weights stored in bf16, fp32 accumulation inside oneDNN; 1.3-2x the fp32 matmul rate
  on the demo model's shapes with AVX512-BF16, measured) and whose cache holds bf16 keys/values, which a step reads with two
  batched bf16 matmuls (`_step_attention`). A step's attention is bound by reading the cache
  (the demo model's 4 layers at 32 rows x 125 positions: 33 MB, past the L3 cache), so halving
  its bytes made it 2-3x faster than sdpa's fp32 flash kernel (measured: 1.1 vs 3.8 ms);
  sdpa on a bf16 cache was slower than fp32. Embeddings, norms, rotary, softmax and the
  residual stream stay fp32. Ids then differ from `generate`'s where two logits are within
  bf16 rounding of each other (`bench/decode_speed.py` reports the share of agreeing ids).
"""

from __future__ import annotations

import copy
import functools
import inspect
import math
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn
from transformers import AttentionInterface, DynamicCache, PreTrainedModel
from transformers.cache_utils import DynamicLayer
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

from dmlm.util.errors import UserError

MIN_ROWS = 4
"""Matmuls that run on fewer rows than `generate`'s (a shrunk batch, the last feed-forward of
the prompt pass) get a multiple of this many rows: MKL multiplies 1-3 rows on another
(gemv-like) path that rounds differently, and splits rows among threads so that with 2, 8 or
16 threads counts such as 5-7 and 9-11 do too; with a multiple of 4 each row's result is
bitwise that of the full batch (measured on torch 2.13's MKL, AVX-512, 1-16 threads)."""

PROMPT_CHUNK = 512
"""Most prompt tokens per forward of the packed prompt pass (whole prompts, at least one).
Intermediates of a few MB are reused by the allocator, while those of one 2,400-token pass
(10 MB each for the demo model) are fresh pages every time: elementwise ops on them ran
~6x slower on the project's CPU."""

STEP_BLOCK = 32
"""Positions per block of a bf16 step cache (`_BlockLayer`)."""

STEP_SLOTS = 64
"""Steps a cache buffer has room for past the prompt at first; it doubles when full. Most
outputs stop long before `max_new_tokens` (256 by default), which need not be allocated."""

PLAIN_HEAD = ("llama", "gpt2", "opt")
"""Model types `greedy` calls through their base model and a partial head (see the module docstring)."""

PACKED = "dmlm_packed"
"""The attention implementation an sdpa model runs under during the packed prompt pass."""

STEP = "dmlm_step"
"""The attention implementation of a `for_compute("bfloat16")` copy: sdpa's masks, `_step_attention`."""

COMPUTE_TYPES = ("float32", "bfloat16")

GATED_MLPS = ("LlamaMLP",)
"""Feed-forward classes computing `down_proj(act_fn(gate_proj(x)) * up_proj(x))`, which `for_compute` fuses."""


def _round_rows(n: int, limit: int) -> int:
    """`n` rounded up to a multiple of MIN_ROWS, but at most `limit`."""
    return min(-(-n // MIN_ROWS) * MIN_ROWS, limit)


@dataclass(frozen=True)
class _Packing:
    """Where the tokens of one packed prompt row sit among the left-padded rows `first`..`first + B'`."""

    first: int
    rows: torch.Tensor  # (N,) row of each packed token, counted from `first`
    cols: torch.Tensor  # (N,) its column in the left-padded (B', T) layout
    shape: tuple[int, int]  # (B', T)
    mask: torch.Tensor | None  # (B', 1, T, T) bool: causal and not a pad, `generate`'s sdpa mask; None if unpadded


def _packing(mask: torch.Tensor, first: int) -> _Packing:
    b, t = mask.shape
    real = mask.bool()
    rows, cols = real.nonzero(as_tuple=True)
    causal = torch.ones(t, t, dtype=torch.bool, device=mask.device).tril()
    attn = None if real.all() else causal[None, None] & real[:, None, None, :]
    return _Packing(first, rows, cols, (b, t), attn)


def _chunks(lengths: list[int], budget: int) -> list[tuple[int, int]]:
    """Consecutive row ranges [a, z) whose lengths sum to at most `budget` (at least one row each)."""
    out, a, total = [], 0, 0
    for i, n in enumerate(lengths):
        if i > a and total + n > budget:
            out.append((a, i))
            a, total = i, 0
        total += n
    return out + [(a, len(lengths))]


def _packed_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None,
                      packing: _Packing | None = None, **kwargs):
    """sdpa for a packed prompt row, computed in the left-padded layout: query (1, H, N, D) holds
    the prompts back to back, key/value (B', H, T, D) are their left-padded rows of the cache.

    The query goes back to `generate`'s layout, so attention runs on the same tensors under the
    same mask (pads' keys/values are zeros instead of a pad token's; masked, they weigh exactly
    0 either way); the output returns to the packed row, (1, N, H, D)."""
    if packing is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    b, t = packing.shape
    q = query.new_zeros(b, t, query.shape[1], query.shape[-1])  # (B', T, H, D)
    q[packing.rows, packing.cols] = query[0].transpose(0, 1)
    # a bf16 cache (`for_compute`) attends in fp32 on the prompt pass: a one-off cost
    out, _ = sdpa_attention_forward(module, q.transpose(1, 2), key.to(query.dtype), value.to(query.dtype),
                                    packing.mask, dropout=dropout, scaling=scaling, **kwargs)  # (B', T, H, D)
    return out[packing.rows, packing.cols][None], None


def _step_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """Attention for one new token per row as two batched matmuls over the cache; longer queries
    (a prompt pass) go to sdpa. query (B, H, 1, D), key/value (B, H_kv, S, D), `attention_mask`
    sdpa's (bool, True = attend) or None; returns (B, 1, H, D).

    Grouped query heads are folded into the matmul's rows instead of repeating the cache: the
    H / H_kv query heads that share a kv head read it once."""
    b, h, n, d = query.shape
    if not isinstance(key, list):  # a prompt pass: sdpa in the query's dtype
        return sdpa_attention_forward(module, query, key.to(query.dtype), value.to(query.dtype), attention_mask,
                                      dropout=dropout, scaling=scaling, **kwargs)
    kv = key[0].shape[1]
    q = query.reshape(b, kv, h // kv, d).to(key[0].dtype)  # (B, H_kv, G, D)
    scores = torch.cat([torch.matmul(q, k.transpose(-1, -2)) for k in key], -1).float()  # (B, H_kv, G, S)
    scores.mul_(d**-0.5 if scaling is None else scaling)
    if attention_mask is not None:
        keep = attention_mask if attention_mask.dtype == torch.bool else attention_mask == 0
        scores.masked_fill_(~keep.reshape(b, 1, 1, -1), float("-inf"))
    weights = scores.softmax(-1).to(value[0].dtype)
    out, at = None, 0
    for v in value:  # (B, H_kv, G, D), summed over the blocks in fp32
        part = torch.matmul(weights[..., at : at + v.shape[-2]], v).float()
        out, at = part if out is None else out.add_(part), at + v.shape[-2]
    return out.reshape(b, h, 1, d).transpose(1, 2).to(query.dtype), None


@functools.cache
def _register_attention() -> None:
    """Register `PACKED` and `STEP` with transformers, once, before a model is first switched to them."""
    AttentionInterface.register(PACKED, _packed_attention)
    AttentionInterface.register(STEP, _step_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(STEP, sdpa_mask)


class _Bf16Linear(nn.Module):
    """A linear layer that multiplies in bf16 (weights stored in bf16) and returns the input's dtype."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.weight = nn.Parameter(linear.weight.detach().to(torch.bfloat16), requires_grad=False)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().to(torch.bfloat16),
                                                                   requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x.to(torch.bfloat16), self.weight, self.bias).to(x.dtype)


class _Bf16GatedMLP(nn.Module):
    """A gated feed-forward (Llama's `down(act(gate(x)) * up(x))`) in bf16, gate and up fused
    into one matmul: half the calls and casts of three `_Bf16Linear`s."""

    def __init__(self, mlp: nn.Module):
        super().__init__()
        self.act_fn = mlp.act_fn
        self.gate_up = nn.Parameter(torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]).detach()
                                    .to(torch.bfloat16), requires_grad=False)  # (2F, D)
        self.down = _Bf16Linear(mlp.down_proj)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = nn.functional.linear(x.to(torch.bfloat16), self.gate_up).to(x.dtype).chunk(2, -1)
        return self.down(self.act_fn(gate) * up)


def _gated_mlp(module: nn.Module) -> bool:
    """Whether `module` is a bias-free gated feed-forward that `_Bf16GatedMLP` computes the same way."""
    parts = [getattr(module, n, None) for n in ("gate_proj", "up_proj", "down_proj")]
    return (type(module).__name__ in GATED_MLPS and hasattr(module, "act_fn")
            and all(type(p) is nn.Linear and p.bias is None for p in parts))


def for_compute(model: PreTrainedModel, compute_type: str) -> PreTrainedModel:
    """The model `greedy` should run for `compute_type`: `model` itself for float32; for bfloat16
    a copy whose linear layers (not the embeddings, nor the head, which `greedy` projects itself)
    multiply in bf16 and, for PLAIN_HEAD families under sdpa, whose attention is
    `_step_attention` over a bf16 block cache (module docstring)."""
    if compute_type not in COMPUTE_TYPES:
        raise UserError(f"decoding compute_type must be one of {COMPUTE_TYPES}, got {compute_type!r}")
    if compute_type == "float32":
        return model
    if next(model.parameters()).dtype != torch.float32:
        raise UserError(f"compute_type=bfloat16 expects a float32 model, got {next(model.parameters()).dtype}")
    fast = copy.deepcopy(model)
    head = fast.get_output_embeddings()
    for parent in list(fast.base_model.modules()):
        for name, child in list(parent.named_children()):
            if _gated_mlp(child):
                setattr(parent, name, _Bf16GatedMLP(child))
            elif type(child) is nn.Linear and child is not head:
                setattr(parent, name, _Bf16Linear(child))
    # the block cache hands lists of blocks to the attention function: only families whose
    # attention passes the cache's keys/values through untouched (PLAIN_HEAD, tested) get it
    if fast.config._attn_implementation == "sdpa" and fast.config.model_type in PLAIN_HEAD:
        _register_attention()
        fast.set_attn_implementation(STEP)
    fast.dmlm_compute_type = compute_type
    return fast


class _BufferLayer(DynamicLayer):
    """A `DynamicLayer` whose keys/values are views of one preallocated buffer.

    `DynamicLayer.update` concatenates, copying the whole cache every step; here each step
    writes one slot in place, and attention sees the same values in the same shape. The buffer
    holds the prompt and STEP_SLOTS steps and doubles when full, up to `capacity`. On a packed
    prompt pass (`packing` set) the packed keys/values go to their left-padded rows, and
    attention gets those rows.
    """

    def __init__(self, batch: int, capacity: int, dtype: torch.dtype | None = None):
        super().__init__()
        self.batch, self.capacity, self.length, self.store_dtype = batch, capacity, 0, dtype
        self.packing: _Packing | None = None

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        _, h, n, d = key_states.shape
        width = self.packing.shape[1] if self.packing is not None else n
        self.device = key_states.device
        size = min(self.capacity, width + STEP_SLOTS)
        dtype = self.store_dtype or key_states.dtype
        self.k_buf = key_states.new_empty(self.batch, h, size, d, dtype=dtype)  # (B, H, size, D)
        self.v_buf = value_states.new_empty(self.batch, h, size, value_states.shape[-1], dtype=dtype)
        # a packed pass never writes the pads: zeros, so that their weight of exactly 0 keeps them
        # out (0 x a stray NaN in fresh memory would not be 0)
        self.k_buf[:, :, :width].zero_()
        self.v_buf[:, :, :width].zero_()
        self.is_initialized = True

    def _grow(self, need: int) -> None:
        size = min(self.capacity, max(need, 2 * self.k_buf.shape[2]))
        for name in ("k_buf", "v_buf"):
            old = getattr(self, name)
            new = old.new_empty(*old.shape[:2], size, old.shape[-1])
            new[:, :, : self.length] = old[:, :, : self.length]
            setattr(self, name, new)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        if self.packing is not None:
            p, self.packing = self.packing, None
            rows, width = p.rows + p.first, p.shape[1]
            # (1, H, N, D) -> (N, H, D) into the (B, T, H, D) view of the buffer
            self.k_buf.transpose(1, 2)[rows, p.cols] = key_states[0].transpose(0, 1).to(self.k_buf.dtype)
            self.v_buf.transpose(1, 2)[rows, p.cols] = value_states[0].transpose(0, 1).to(self.v_buf.dtype)
            self.length = width
            self.keys, self.values = self.k_buf[:, :, :width], self.v_buf[:, :, :width]
            span = slice(p.first, p.first + p.shape[0])
            return self.k_buf[span, :, :width], self.v_buf[span, :, :width]
        n = key_states.shape[-2]
        if self.length + n > self.k_buf.shape[2]:
            self._grow(self.length + n)
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


class _BlockLayer(_BufferLayer):
    """The bf16 cache `_step_attention` reads (`for_compute`): the prompt's keys/values in one
    buffer of exactly its width, then each step's in blocks of STEP_BLOCK positions, every
    block a contiguous (B, H, STEP_BLOCK, D) tensor.

    bf16 batched matmuls (oneDNN) copy an operand whose batch stride is not dense, as a slice
    of a longer preallocated buffer is: that copy of the whole cache cost 3/4 of a step's
    attention. Blocks are dense; only the last, partly filled one is a slice. A step's
    `update` returns the lists of key and value blocks, which only `_step_attention` reads."""

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        # the prompt buffer holds exactly the prompt: it is dense, and steps go to blocks
        self.capacity = self.packing.shape[1] if self.packing is not None else key_states.shape[-2]
        super().lazy_initialization(key_states, value_states)
        self.k_blocks: list[torch.Tensor] = []
        self.v_blocks: list[torch.Tensor] = []

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized or self.packing is not None:  # the prompt pass
            return super().update(key_states, value_states, *args, **kwargs)
        if key_states.shape[-2] != 1:
            raise ValueError("a bf16 decoding cache takes one token per step after the prompt")
        at = (self.length - self.k_buf.shape[2]) % STEP_BLOCK  # position in the last block
        if at == 0:
            b, h, _, d = key_states.shape
            self.k_blocks.append(self.k_buf.new_empty(b, h, STEP_BLOCK, d))
            self.v_blocks.append(self.v_buf.new_empty(b, h, STEP_BLOCK, value_states.shape[-1]))
        self.k_blocks[-1][:, :, at] = key_states[:, :, 0]
        self.v_blocks[-1][:, :, at] = value_states[:, :, 0]
        self.length += 1
        keys = [self.k_buf, *self.k_blocks[:-1], self.k_blocks[-1][:, :, : at + 1]]
        values = [self.v_buf, *self.v_blocks[:-1], self.v_blocks[-1][:, :, : at + 1]]
        return keys, values

    def get_seq_length(self) -> int:
        return self.length

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.is_initialized:
            self.k_buf, self.v_buf = self.k_buf[indices], self.v_buf[indices]
            self.k_blocks = [blk[indices] for blk in self.k_blocks]
            self.v_blocks = [blk[indices] for blk in self.v_blocks]


def _buffer_cache(model: PreTrainedModel, batch: int, capacity: int) -> DynamicCache:
    """The cache `generate` would make, with its plain full-attention layers made `_BufferLayer`s
    (`_BlockLayer`s of bf16 under `_step_attention`, see `for_compute`)."""
    cache = DynamicCache(config=model.config)
    blocks = model.config._attn_implementation == STEP
    cache.layers = [(_BlockLayer(batch, capacity, torch.bfloat16) if blocks else _BufferLayer(batch, capacity))
                    if type(old) is DynamicLayer else old for old in cache.layers]
    return cache


def _last_mlp(model: PreTrainedModel) -> torch.nn.Module | None:
    """The feed-forward block of the last decoder layer, where layers call it `mlp` (Llama, GPT-2)."""
    blocks = [m for m in model.base_model.modules() if isinstance(getattr(m, "mlp", None), torch.nn.Module)]
    return blocks[-1].mlp if blocks else None


@contextmanager
def _only_rows(mlp: torch.nn.Module | None, rows: torch.Tensor):
    """Run `mlp` on the positions `rows` (a multiple of MIN_ROWS of them) of its (B, T, D) input
    only; other positions get zeros, which no logit reads."""
    if mlp is None:
        yield
        return
    shapes: list[torch.Size] = []

    def before(module, args):
        shapes.append(args[0].shape)
        return (args[0][:, rows],)

    def after(module, args, out):
        full = out.new_zeros(shapes.pop())
        full[:, rows] = out
        return full

    hooks = [mlp.register_forward_pre_hook(before), mlp.register_forward_hook(after)]
    try:
        yield
    finally:
        for h in hooks:
            h.remove()


def _with_fill(rows: torch.Tensor, n: int) -> torch.Tensor:
    """The positions `rows` among `n`, plus the first others up to a multiple of MIN_ROWS, ascending."""
    free = torch.ones(n, dtype=torch.bool, device=rows.device)
    free[rows] = False
    fill = free.nonzero().squeeze(1)[: _round_rows(len(rows), n) - len(rows)]
    return torch.cat([rows, fill]).sort().values


class _Model:
    """The model as `greedy` calls it: the prompt pass and each step return the logits of the
    allowed ids only, (B, A)."""

    def __init__(self, model: PreTrainedModel, allowed: torch.Tensor):
        self.model, self.allowed = model, allowed
        self.plain = model.config.model_type in PLAIN_HEAD
        self.forward = model.base_model if self.plain else model
        params = inspect.signature(self.forward.forward).parameters
        self.cache_arg = "cache" if "cache" in params else "past_key_values"  # varies across transformers versions
        self.takes_positions = "position_ids" in params
        head = model.get_output_embeddings()
        # the allowed rows of the head, copied once per batch: worth it when they are few (a
        # speech target: 1,000 of SmolLM2's 50,000 rows); else the full head, logits indexed
        self.partial = self.plain and 2 * len(allowed) <= head.weight.shape[0]
        self.weight = head.weight[allowed] if self.partial else head.weight  # (A or V, D)
        bias = getattr(head, "bias", None)
        self.bias = bias[allowed] if self.partial and bias is not None else bias
        # a `for_compute("bfloat16")` copy: the head multiplies in bf16 too
        self.dtype = torch.bfloat16 if getattr(model, "dmlm_compute_type", "float32") == "bfloat16" else None
        if self.plain and self.dtype is not None:
            self.weight = self.weight.to(self.dtype)
            self.bias = None if self.bias is None else self.bias.to(self.dtype)
        self.last_mlp = _last_mlp(model) if self.plain else None

    def _last(self, ids: torch.Tensor, positions: torch.Tensor, at: torch.Tensor | None = None, **kwargs):
        """The last hidden states (B, D) after `ids` (B, T'), at the columns `at` of a single packed
        row, else at each row's last column; for other models their last logits (B, V)."""
        if self.takes_positions:
            kwargs["position_ids"] = positions
        if not self.plain:
            return self.forward(input_ids=ids, use_cache=True, logits_to_keep=1, **kwargs).logits[:, -1]
        h = self.forward(input_ids=ids, use_cache=True, **kwargs).last_hidden_state
        return h[0, at] if at is not None else h[:, -1]

    def _logits(self, last: torch.Tensor) -> torch.Tensor:
        """The allowed ids' logits (B, A) from `_last`'s output."""
        if self.plain:
            last = torch.nn.functional.linear(last.to(self.weight.dtype), self.weight, self.bias)
        return (last if self.partial else last[:, self.allowed]).float()

    def prompt(self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor,
               cache: DynamicCache) -> torch.Tensor:
        """The prompt pass over left-padded `ids` (B, T): fills `cache`, returns the first logits (B, A)."""
        b, t = ids.shape
        kw = {self.cache_arg: cache}
        real = mask.bool()
        chunks = _chunks(real.sum(-1).tolist(), PROMPT_CHUNK)
        attn = self.model.config._attn_implementation
        packs = ((len(chunks) > 1 or not real.all()) and self.plain and attn in ("sdpa", STEP)
                 and all(isinstance(layer, _BufferLayer) for layer in cache.layers))
        if not packs:  # one unpadded chunk (or a model that cannot pack): as `generate` calls it
            # the last feed-forward on the last k columns, k * B a multiple of MIN_ROWS
            k = min(MIN_ROWS // math.gcd(b, MIN_ROWS), t)
            with _only_rows(self.last_mlp, torch.arange(t - k, t, device=ids.device)):
                return self._logits(self._last(ids, positions, attention_mask=None if real.all() else mask, **kw))
        last_states = []
        _register_attention()
        self.model.set_attn_implementation(PACKED)
        try:
            for a, z in chunks:
                packing = _packing(mask[a:z], first=a)
                for layer in cache.layers:
                    layer.packing = packing
                ends = real[a:z].sum(-1).cumsum(0) - 1  # each prompt's last token in the packed row
                with _only_rows(self.last_mlp, _with_fill(ends, len(packing.rows))):
                    last_states.append(self._last(ids[a:z][real[a:z]][None], positions[a:z][real[a:z]][None],
                                                  at=ends, packing=packing, **kw))
        finally:
            self.model.set_attn_implementation(attn)
        return self._logits(torch.cat(last_states))  # one head matmul over all B rows, as in `generate`

    def step(self, ids: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor | None,
             cache: DynamicCache) -> torch.Tensor:
        """One new token per row: `ids` and `positions` (B', 1), `mask` (B', S) or None; logits (B', A)."""
        return self._logits(self._last(ids, positions, attention_mask=mask, **{self.cache_arg: cache}))


@torch.inference_mode()
def greedy(
    model: PreTrainedModel, ids: torch.Tensor, mask: torch.Tensor, allowed: torch.Tensor, close: int,
    max_new_tokens: int,
) -> list[list[int]]:
    """Greedy continuation of left-padded `ids` (B, T) with `mask` (B, T) until `close` or
    `max_new_tokens`, each step choosing among the ids `allowed` (A,), ascending. Returns each
    row's new ids without the close tag."""
    b, t = ids.shape
    out: list[list[int]] = [[] for _ in range(b)]
    if max_new_tokens <= 0:
        return out
    run = _Model(model, allowed)
    cache = _buffer_cache(model, b, t + max_new_tokens)
    # as in `generate`: positions count real tokens (pads get 0), and a mask of all ones is dropped
    padded = bool((mask == 0).any())
    full_mask = torch.ones(b, t + max_new_tokens, dtype=mask.dtype, device=mask.device)  # (B, T + N)
    full_mask[:, :t] = mask
    positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)  # (B, T)
    next_pos = positions[:, -1:] + 1  # (B, 1): position of the first new token
    logits = run.prompt(ids, mask, positions, cache)
    rows = list(range(b))  # input row of each row still in the batch
    finished = torch.zeros(b, dtype=torch.bool, device=ids.device)
    for step in range(max_new_tokens):
        if step:
            logits = run.step(inputs, next_pos + (step - 1), full_mask[:, : t + step] if padded else None, cache)
        next_ids = allowed[logits.argmax(-1)]  # (B',); argmax keeps the first of equal logits, as over all ids
        stop = finished | (next_ids == close)
        for r, tok, s in zip(rows, next_ids.tolist(), stop.tolist()):
            if not s:
                out[r].append(tok)
        finished = stop
        n_live = len(rows) - int(finished.sum())
        if n_live == 0:
            break
        inputs = next_ids[:, None]  # (B', 1); finished rows run on until dropped, as in `generate`
        n_keep = _round_rows(n_live, len(rows))
        if 2 * n_keep <= len(rows):
            # most rows are done: drop them, shrinking the batch and its cache, with finished rows
            # riding along up to a multiple of MIN_ROWS so each row's matmuls round as before
            keep = (~finished).nonzero().squeeze(1)
            keep = torch.cat([keep, finished.nonzero().squeeze(1)[: n_keep - len(keep)]]).sort().values
            rows = [rows[i] for i in keep.tolist()]
            inputs, full_mask, next_pos, finished = inputs[keep], full_mask[keep], next_pos[keep], finished[keep]
            cache.batch_select_indices(keep)
    return out
