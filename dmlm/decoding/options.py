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
        if self.rerank < 0:
            raise UserError(f"decoding rerank must be >= 0 candidates, got {self.rerank}")
        if self.compute_type != "float32" and not (self.engine == "dmlm" and self.strategy == "greedy"):
            raise UserError(f"compute_type={self.compute_type} needs greedy decoding with the dmlm engine")


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
    return replace(options or DecodingOptions(), **overrides)


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
