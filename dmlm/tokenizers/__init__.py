"""Tokenizers: one tiny Protocol, one registry.

Every tokenizer maps one modality to integer ids in its own range [0, vocab_size);
`dmlm.vocab.Vocab` alone shifts them into the unified id space.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from dmlm.util.errors import UserError


@runtime_checkable
class Tokenizer(Protocol):
    modality: str

    def encode(self, x: Any) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> Any: ...

    @property
    def vocab_size(self) -> int: ...


def load_tokenizer(kind: str, path: str) -> Tokenizer:
    """Registry: build a tokenizer of `kind` from its saved file or folder."""
    if kind == "text":
        from dmlm.tokenizers.text import TextTokenizer

        return TextTokenizer.load(path)
    if kind == "speech":
        from dmlm.tokenizers.speech import Codebook

        return Codebook.load(path)
    if kind == "image":
        from dmlm.tokenizers.image import ImageCodebook

        return ImageCodebook.load(path)
    raise UserError(f"unknown tokenizer kind {kind!r}; expected one of: {', '.join(REGISTRY)}")


REGISTRY = ("text", "speech", "image")
