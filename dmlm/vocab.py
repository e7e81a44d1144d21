"""The unified vocabulary: one id space for text, special tags, speech units and image codes.

```
[0, V_text)                 the text tokenizer's own ids, untouched
[V_text, V_text+256)        reserved special block (task tags, modality tags, languages), append-only
[.., +K_speech)             speech units  <|s_0|> … <|s_{K-1}|> (then the merged unit pieces, if any)
[.., +K_image)              image codes   <|i_0|> … <|i_{M-1}|>
padded to a multiple of 64
```

Design decisions:
- Only this object applies offsets; models and decoders see ids (ESPnet-SpeechLM's
  `token_bias`, Whisper's specials after the BPE ranks).
- Text ids stay those of the text tokenizer, so a pretrained LLM's embeddings stay aligned.
- The special block is append-only: new tags take unused slots, existing ids never move,
  so a checkpoint stays readable by newer dmlm.
- The layout is saved as JSON with a version; ranges are checked non-overlapping on load.
- With byte-pair merges over the speech units (`speech_bpe`, `dmlm.tokenizers.unit_bpe`) the
  speech range holds the k units and then the merged pieces; `speech_ids` renders units as
  pieces and `ids_to_units` expands pieces back, exactly, so tasks, decoding and the vocoder
  keep speaking units. Such a layout is version 2 (an older dmlm refuses it rather than read
  pieces as units); one without merges stays version 1, byte for byte.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path

from dmlm.tokenizers.unit_bpe import UnitBPE
from dmlm.util.errors import UserError

SPECIAL_BLOCK = 256
PAD_MULTIPLE = 64
LAYOUT_VERSION = 2  # the newest layout this dmlm reads
MERGES_VERSION = 2  # the first layout with speech_bpe

MODALITIES = ("text", "speech", "image")
MOD_TEXT, MOD_SPEECH, MOD_IMAGE = 0, 1, 2

# Append-only. Never reorder or remove: ids are positions in this list.
SPECIALS: tuple[str, ...] = (
    "<|pad|>", "<|bos|>", "<|eos|>",
    "<|asr|>", "<|t2s|>", "<|s2tt|>", "<|i2t|>", "<|text_lm|>", "<|speech_lm|>", "<|image_lm|>",
    "<|text|>", "<|/text|>", "<|speech|>", "<|/speech|>", "<|image|>", "<|/image|>",
    "<|en|>", "<|es|>", "<|de|>", "<|fr|>", "<|it|>", "<|pt|>", "<|nl|>", "<|zh|>", "<|ja|>", "<|ru|>",
    "<|ar|>", "<|hi|>", "<|ko|>", "<|pl|>", "<|tr|>", "<|sv|>", "<|ca|>", "<|fa|>", "<|cy|>", "<|et|>",
    "<|id|>", "<|lv|>", "<|mn|>", "<|sl|>", "<|ta|>", "<|ro|>", "<|uk|>", "<|vi|>", "<|fi|>", "<|el|>",
    "<|s2st|>", "<|s2st_chain|>",
)
assert len(SPECIALS) <= SPECIAL_BLOCK and len(set(SPECIALS)) == len(SPECIALS)

OPEN = {"text": "<|text|>", "speech": "<|speech|>", "image": "<|image|>"}
CLOSE = {"text": "<|/text|>", "speech": "<|/speech|>", "image": "<|/image|>"}


class VocabError(UserError):
    pass


@dataclass
class Vocab:
    text_size: int
    """V_text: size of the text tokenizer, including its own special tokens."""
    speech_size: int = 0
    image_size: int = 0
    bos_id: int | None = None
    """The text tokenizer's BOS id, or None to use <|bos|> from the special block."""
    eos_id: int | None = None
    fingerprints: dict[str, str] = field(default_factory=dict)
    """Codebook fingerprints by modality."""
    specials: list[str] = field(default_factory=lambda: list(SPECIALS))
    version: int = 1
    speech_bpe: dict = field(default_factory=dict)
    """Byte-pair merges over the speech units (`UnitBPE.to_dict`); empty: the speech ids are the units."""

    def __post_init__(self) -> None:
        if self.speech_bpe and self.version < MERGES_VERSION:
            self.version = MERGES_VERSION
        self.check()

    # -- ranges ------------------------------------------------------------------------
    @property
    def special_start(self) -> int:
        return self.text_size

    @property
    def speech_start(self) -> int:
        return self.text_size + SPECIAL_BLOCK

    @property
    def image_start(self) -> int:
        return self.speech_start + self.speech_size

    @property
    def used_size(self) -> int:
        return self.image_start + self.image_size

    @property
    def size(self) -> int:
        """Embedding rows: used ids padded to a multiple of 64 (tensor-core friendly)."""
        return -(-self.used_size // PAD_MULTIPLE) * PAD_MULTIPLE

    def ranges(self) -> dict[str, tuple[int, int]]:
        return {
            "text": (0, self.text_size),
            "special": (self.special_start, self.speech_start),
            "speech": (self.speech_start, self.image_start),
            "image": (self.image_start, self.used_size),
        }

    def range(self, modality: str) -> tuple[int, int]:
        if modality not in MODALITIES:
            raise VocabError(f"unknown modality {modality!r}; expected one of {MODALITIES}")
        return self.ranges()[modality]

    def check(self) -> None:
        if self.text_size <= 0 or self.speech_size < 0 or self.image_size < 0:
            raise VocabError(f"bad sizes: text={self.text_size} speech={self.speech_size} image={self.image_size}")
        if len(self.specials) > SPECIAL_BLOCK or len(set(self.specials)) != len(self.specials):
            raise VocabError("special block overflows 256 entries or repeats a name")
        if list(self.specials[: len(SPECIALS)]) != list(SPECIALS)[: len(self.specials)]:
            raise VocabError("special block is not a prefix-compatible extension of dmlm's (append-only)")
        self._check_bpe()
        spans = sorted(r for r in self.ranges().values() if r[1] > r[0])
        for (a0, a1), (b0, b1) in zip(spans, spans[1:]):
            if a1 > b0:
                raise VocabError(f"vocabulary ranges overlap: [{a0},{a1}) and [{b0},{b1})")

    def _check_bpe(self) -> None:
        """The merges fill the speech range and are the ones the fingerprints name."""
        bpe, fp = self.unit_bpe, self.fingerprints.get("speech_bpe")
        if bpe is None:
            if fp is not None:
                raise VocabError(f"fingerprints name unit merges {fp} but the layout has none (speech_bpe)")
            return
        if bpe.vocab_size != self.speech_size:
            raise VocabError(f"speech range has {self.speech_size} ids but the unit merges make {bpe.vocab_size} "
                             f"pieces (k={bpe.k})")
        if fp is not None and fp != bpe.fingerprint:
            raise VocabError(f"fingerprints name unit merges {fp} but speech_bpe holds {bpe.fingerprint}")
        unit_fp = self.fingerprints.get("speech")
        if unit_fp is not None and bpe.base and unit_fp != bpe.base:
            raise VocabError(f"the unit merges were fitted on speech codebook {bpe.base}, the layout's is {unit_fp}")

    @cached_property
    def unit_bpe(self) -> UnitBPE | None:
        """The merges of `speech_bpe` (None without)."""
        return UnitBPE.from_dict(self.speech_bpe, "vocabulary speech_bpe") if self.speech_bpe else None

    @property
    def speech_units(self) -> int:
        """k: the speech codebook's units (the speech range less its merged pieces)."""
        return self.unit_bpe.k if self.unit_bpe is not None else self.speech_size

    # -- ids ---------------------------------------------------------------------------
    def special(self, name: str) -> int:
        try:
            return self.special_start + self.specials.index(name)
        except ValueError:
            raise VocabError(f"unknown special token {name!r}") from None

    def lang(self, code: str) -> int:
        if f"<|{code}|>" not in self.specials:
            raise VocabError(f"unknown language {code!r}: not in the model's vocabulary, which has "
                             f"{', '.join(self.languages)}")
        return self.special(f"<|{code}|>")

    @property
    def languages(self) -> list[str]:
        """The language codes the vocabulary has a tag for (`<|en|>`, ...)."""
        return [t[2:-2] for t in self.specials if re.fullmatch(r"<\|[a-z]{2}(-[A-Za-z0-9]+)?\|>", t)]

    def task(self, name: str) -> int:
        return self.special(f"<|{name}|>")

    @property
    def pad(self) -> int:
        return self.special("<|pad|>")

    @property
    def bos(self) -> int:
        return self.bos_id if self.bos_id is not None else self.special("<|bos|>")

    @property
    def eos(self) -> int:
        return self.eos_id if self.eos_id is not None else self.special("<|eos|>")

    def open(self, modality: str) -> int:
        return self.special(OPEN[modality])

    def close(self, modality: str) -> int:
        return self.special(CLOSE[modality])

    def speech_ids(self, units) -> list[int]:
        """Unified ids of speech units: the units, or their pieces when the layout has unit merges."""
        import numpy as np

        u = np.asarray(units, dtype=np.int64)
        k = self.speech_units
        if len(u) and (u.min() < 0 or u.max() >= k):
            raise VocabError(f"speech unit out of range [0, {k}): {int(u.min())}..{int(u.max())}")
        if self.unit_bpe is not None:
            u = np.asarray(self.unit_bpe.encode(u), dtype=np.int64)
        return (u + self.speech_start).tolist()

    def ids_to_units(self, ids) -> list[int]:
        """The speech units of `ids` (other ids skipped); pieces expand back to their units exactly."""
        s0, s1 = self.range("speech")
        pieces = [i - s0 for i in ids if s0 <= i < s1]
        return self.unit_bpe.decode(pieces) if self.unit_bpe is not None else pieces

    def image_ids(self, codes) -> list[int]:
        import numpy as np

        c = np.asarray(codes, dtype=np.int64)
        if len(c) and (c.min() < 0 or c.max() >= self.image_size):
            raise VocabError(f"image code out of range [0, {self.image_size})")
        return (c + self.image_start).tolist()

    def modality_of(self, token_id: int) -> int:
        """Modality index of an id: specials count as text."""
        if self.speech_start <= token_id < self.image_start:
            return MOD_SPEECH
        if self.image_start <= token_id < self.used_size:
            return MOD_IMAGE
        return MOD_TEXT

    def token_strings(self) -> list[str]:
        """Names of every id past V_text, in order: what the HF tokenizer registers as added tokens."""
        names = list(self.specials) + [f"<|reserved_{i}|>" for i in range(len(self.specials), SPECIAL_BLOCK)]
        names += [f"<|s_{i}|>" for i in range(self.speech_size)]
        names += [f"<|i_{i}|>" for i in range(self.image_size)]
        names += [f"<|unused_{i}|>" for i in range(self.size - self.used_size)]
        return names

    # -- persistence -------------------------------------------------------------------
    def to_dict(self) -> dict:
        d = asdict(self)
        d["ranges"] = {k: list(v) for k, v in self.ranges().items()}
        d["special_ids"] = {name: self.special(name) for name in self.specials}
        d["size"] = self.size
        if not self.speech_bpe:
            del d["speech_bpe"]  # a layout without merges is written as before them
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Vocab:
        if d.get("version", 1) > LAYOUT_VERSION:
            raise VocabError(f"vocabulary layout version {d['version']} is newer than this dmlm ({LAYOUT_VERSION})")
        keys = {"text_size", "speech_size", "image_size", "bos_id", "eos_id", "fingerprints", "specials", "version",
                "speech_bpe"}
        v = cls(**{k: d[k] for k in keys if k in d})
        if "ranges" in d and {k: tuple(x) for k, x in d["ranges"].items()} != v.ranges():
            raise VocabError("stored ranges disagree with the layout's sizes")
        return v

    def save(self, path: str | Path) -> None:
        from dmlm.util.io import atomic_write_json

        atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> Vocab:
        return cls.from_dict(json.loads(Path(path).read_text()))
