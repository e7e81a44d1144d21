"""Decoding = options + strategy + logit filters (`options`, `generate`, `greedy`, `score`)."""

from dmlm.decoding.generate import ModalityFilter, generate
from dmlm.decoding.options import (
           SPEECH_OUT_FIELDS,
           USER_FIELDS,
           DecodingOptions,
           Result,
           make_options,
)
from dmlm.decoding.score import target_log_likelihood

__all__ = ["DecodingOptions", "ModalityFilter", "Result", "USER_FIELDS", "SPEECH_OUT_FIELDS", "generate",
           "make_options", "target_log_likelihood"]
