"""Text normalization applied to references and hypotheses before WER/CER.

The documented rule (README, "Metrics"): Unicode NFKC, lowercase, apostrophes kept inside
words, every other punctuation mark and symbol replaced by a space, whitespace collapsed.
It is deliberately simple and language-neutral (no number or spelling rewriting): the
same text always scores the same, and the rule is easy to reproduce elsewhere.
"""

from __future__ import annotations

import re
import unicodedata

_PUNCT = re.compile(r"[^\w\s']|_")
_LONE_APOS = re.compile(r"(?<!\w)'|'(?!\w)")
_SPACE = re.compile(r"\s+")


def normalize(text: str) -> str:
    t = unicodedata.normalize("NFKC", text).lower().replace("\u2019", "'")
    t = _PUNCT.sub(" ", t)
    t = _LONE_APOS.sub(" ", t)
    return _SPACE.sub(" ", t).strip()
