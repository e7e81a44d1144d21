"""Decoding options (whisper's frozen `DecodingOptions`) and the typed result of one decoded item.

`USER_FIELDS` are the settings a user picks per call (and the CLI exposes as flags); `engine`
is a benchmark knob (`bench/decode_speed.py` compares the lean greedy loop with `generate`),
set in Python only; `rerank` applies to T2S alone, so only the speech-out verbs take it.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np

from dmlm.decoding.greedy import COMPUTE_TYPES
from dmlm.util.errors import UserError


@dataclass(frozen=True)
class DecodingOptions:
    strategy: str = "greedy"
    """greedy, beam or sample."""
    engine: str = "dmlm"
    """Benchmark knob, set in Python only: the greedy loop, dmlm (lean, the same ids) or transformers (`generate`),
    to compare the two (`bench/decode_speed.py`); beam and sample always use `generate`."""
    compute_type: str = "float32"
    """Greedy decoding: float32 (bitwise `generate`'s logits) or bfloat16 (matmuls in bf16: faster, ids may differ at near-ties)."""
    beam_size: int = 4
    """Beams for strategy=beam."""
    max_new_tokens: int = 256
    """Longest target to generate."""
    max_new_per_prompt: float = 0.0
    """With > 0, also at most ceil(this × the batch's longest prompt) + 16 new tokens (fairseq's max_len_a·src +
    max_len_b): a looping output stops near its input's length instead of at max_new_tokens. E.g. 0.5 for a
    transcript of 25 Hz speech units (a real one is ~0.15 tokens per unit). 0: off."""
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
    """Seed for strategy=sample (and rerank's samples)."""
    rerank: int = 0
    """T2S only: candidates per text, the first by `strategy`, the rest sampled at temperature/top_k/top_p;
    the one the model's own ASR task scores likeliest to say the text is kept. 0 or 1: off."""

    def __post_init__(self) -> None:
        if self.strategy not in ("greedy", "beam", "sample"):
            raise UserError(f"decoding strategy must be greedy, beam or sample, got {self.strategy!r}")
        if self.engine not in ("dmlm", "transformers"):
            raise UserError(f"decoding engine must be dmlm or transformers, got {self.engine!r}")
        if self.compute_type not in COMPUTE_TYPES:
            raise UserError(f"decoding compute_type must be one of {COMPUTE_TYPES}, got {self.compute_type!r}")
        if not 0 <= self.max_new_per_prompt <= 16:
            raise UserError(f"decoding max_new_per_prompt must be in [0, 16] new tokens per prompt token, got "
                            f"{self.max_new_per_prompt}")
        if self.rerank < 0:
            raise UserError(f"decoding rerank must be >= 0 candidates, got {self.rerank}")
        if self.compute_type != "float32" and not (self.engine == "dmlm" and self.strategy == "greedy"):
            raise UserError(f"compute_type={self.compute_type} needs greedy decoding with the dmlm engine")


@dataclass(frozen=True)
class Bound:
    """The valid range of a numeric decoding field: `low <= x` (`low < x` when not `low_inclusive`) and `x <= high`."""

    low: float
    high: float
    low_inclusive: bool = True

    def holds(self, value: float) -> bool:
        return (value >= self.low if self.low_inclusive else value > self.low) and value <= self.high

    def describe(self) -> str:
        return f"{'>=' if self.low_inclusive else '>'} {_number(self.low)} and <= {_number(self.high)}"

    def check(self, name: str, value: float, where: str = "decoding") -> None:
        """A `UserError` naming `name` unless `value` is in range."""
        if not self.holds(value):
            raise UserError(f"{where}: {name} must be {self.describe()}, got {value!r}")

    def pydantic(self) -> dict:
        """The same range as pydantic's `Field`/`Form` keywords (`ge`/`gt`, `le`)."""
        return {"ge" if self.low_inclusive else "gt": self.low, "le": self.high}


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


BOUNDS: dict[str, Bound] = {
    "beam_size": Bound(1, 16),  # memory grows with beams x tokens: 100,000 beams took 8 GB and growing
    "max_new_tokens": Bound(1, 2048),  # 0 would print an empty output; 2048 is past any model's target length here
    "temperature": Bound(0, 10, low_inclusive=False),  # 0 divides by zero (greedy is strategy=greedy)
    "top_k": Bound(0, 100_000),
    "top_p": Bound(0, 1, low_inclusive=False),
    "seed": Bound(0, 2**32 - 1),  # what every RNG (torch, numpy, random) takes
}
"""The one definition of each numeric decoding field's valid range, for every entry point: the server's
request fields (`dmlm.serve.app`), the CLI's flags and the Python API."""


USER_FIELDS = ("strategy", "beam_size", "max_new_tokens", "temperature", "top_k", "top_p", "length_penalty",
               "batch_size", "seed", "compute_type")
"""Fields every decoding verb and method takes; `rerank` is added where the task is T2S."""
SPEECH_OUT_FIELDS = USER_FIELDS + ("rerank",)


def make_options(options: DecodingOptions | None = None, allowed: tuple[str, ...] = SPEECH_OUT_FIELDS,
                 **overrides: Any) -> DecodingOptions:
    """`options` (default: the defaults) with keyword overrides; an unknown or inapplicable key is an error naming it."""
    known = {f.name for f in fields(DecodingOptions)}
    bad = sorted(set(overrides) - known)
    if bad:
        raise UserError(f"unknown decoding option(s) {', '.join(bad)}; known: {', '.join(sorted(known))}")
    wrong = sorted(k for k in overrides if k not in allowed and k != "engine")
    if wrong:
        raise UserError(f"decoding option(s) {', '.join(wrong)} do not apply here (rerank is for text-to-speech only)")
    opts = replace(options or DecodingOptions(), **overrides)
    for name, bound in BOUNDS.items():  # the server's bounds, for the CLI and the Python API too
        bound.check(f"{name} (--{name.replace('_', '-')})", getattr(opts, name))
    return opts


@dataclass
class Result:
    """One decoded item with its details (`return_details=True`).

    `text` for text targets, `units` for speech targets; `ids` are the generated ids in the
    unified vocabulary (close tag excluded); `logprob` is their total log-probability under the
    model given the prompt (teacher-forced over the ids and the close tag); `seconds` is this
    item's share of its batch's wall time."""

    ids: list[int]
    logprob: float
    seconds: float
    text: str | None = None
    units: np.ndarray | None = None

    def __str__(self) -> str:
        return self.text if self.text is not None else " ".join(map(str, [] if self.units is None else self.units))
