"""Text normalization applied to references and hypotheses before WER/CER.

The documented rule (docs/design/evaluation.md): Unicode NFKC, lowercase, apostrophes kept inside
words, every other punctuation mark and symbol replaced by a space, whitespace collapsed.
It is deliberately simple and language-neutral (no number or spelling rewriting): the
same text always scores the same, and the rule is easy to reproduce elsewhere.

`whisper_english` is Whisper's own English normalizer (PyPI `whisper-normalizer`, the rules
of openai/whisper): numbers to digits, British to American spelling, contractions expanded,
fillers dropped. Whisper writes "9 gray horses" for "nine grey horses"; scoring a Whisper
judge with the simple rule counts such spellings as errors, so judged speech (T2S,
resynthesis) is scored with Whisper's rule, as papers that judge TTS with Whisper do.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Callable

from dmlm.util.errors import UserError

_PUNCT = re.compile(r"[^\w\s']|_")
_LONE_APOS = re.compile(r"(?<!\w)'|'(?!\w)")
_SPACE = re.compile(r"\s+")


def normalize(text: str) -> str:
    t = unicodedata.normalize("NFKC", text).lower().replace("\u2019", "'")
    t = _PUNCT.sub(" ", t)
    t = _LONE_APOS.sub(" ", t)
    return _SPACE.sub(" ", t).strip()


@functools.lru_cache(maxsize=1)
def _whisper_normalizer() -> Callable[[str], str]:
    from whisper_normalizer.english import EnglishTextNormalizer

    return EnglishTextNormalizer()


def whisper_english(text: str) -> str:
    """Whisper's English normalizer (numbers as digits, American spelling), then `normalize`."""
    return normalize(_whisper_normalizer()(text))


NORMALIZERS: dict[str, Callable[[str], str]] = {"basic": normalize, "whisper_english": whisper_english}


def get_normalizer(name: str) -> Callable[[str], str]:
    if name not in NORMALIZERS:
        raise UserError(f"unknown text normalizer {name!r}; expected one of: {', '.join(NORMALIZERS)}")
    return NORMALIZERS[name]
