"""Text corpora that dmlm turns into speech corpora.

A text corpus yields `Sentence`s already assigned to splits; `dmlm.data.prepare` synthesizes
them and writes manifests. Split assignment belongs to the corpus because only the corpus
knows what "held out" means for it (unseen word combinations for mini-world, unseen verses
for the Bible).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Sentence:
    id: str
    text: str  # English source text, as spoken
    translations: dict[str, str] = field(default_factory=dict)  # lang -> exact translation
    custom: dict[str, Any] = field(default_factory=dict)  # e.g. {"scene": {...}, "heldout_combo": true}
