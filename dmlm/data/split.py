"""A split: one manifest and its token stores, with the stores' naming rule in one place.

`dmlm tokenize CB M.jsonl --out DIR` writes the speech units of `M.jsonl` to DIR/M (a
`TokenStore` prefix: M.bin, M.idx.npy, M.json) and its image codes to DIR/M.image. Training,
decoding, evaluation, the vocoder and the recipes find a manifest's stores through `Split`
(never by re-deriving the names), and a store is checked against the codebook that must have
made it (`codebook.check(fingerprint, what)`; any object with that method) before it is read.

`Split.tokens(record, modality)` owns "the tokens of this record": those computed for this
split (`put`, e.g. evaluation without token stores encodes with the checkpoint's codebook),
else its token store's.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from dmlm.data.shards import TokenStore, store_file
from dmlm.util.errors import MissingFileError

MODALITIES = ("speech", "image")


def store_prefix(stores: str | Path, manifest: str | Path, modality: str = "speech") -> Path:
    """Where `dmlm tokenize --out STORES` puts `manifest`'s tokens of `modality`.

    `stores` is a folder of stores, or one speech store's prefix (then the image store is beside it)."""
    if modality not in MODALITIES:
        raise ValueError(f"token stores hold speech or image tokens, not {modality!r}")
    p = Path(stores)
    suffix = "" if modality == "speech" else f".{modality}"
    if store_file(p, ".json").is_file() and not p.is_dir():  # one store's prefix
        return p.with_name(p.name + suffix)
    return p / (Path(manifest).stem + suffix)


class Split:
    """`manifest` and, when `stores` is given, its token stores."""

    def __init__(self, manifest: str | Path, stores: str | Path | None = None):
        self.manifest = Path(manifest)
        self.stores = Path(stores) if stores else None
        self._open: dict[str, TokenStore] = {}  # stores opened (and checked) by `store`
        self._computed: dict[str, Mapping[str, np.ndarray]] = {}  # tokens computed for this split, by modality

    def __repr__(self) -> str:
        return f"Split({str(self.manifest)!r}, stores={str(self.stores) if self.stores else None!r})"

    def prefix(self, modality: str = "speech") -> Path:
        if self.stores is None:
            raise MissingFileError(f"{self.manifest}: no token-store folder given (run `dmlm tokenize CB "
                                   f"{self.manifest} --out DIR` and pass DIR)")
        return store_prefix(self.stores, self.manifest, modality)

    def has_store(self, modality: str = "speech") -> bool:
        return self.stores is not None and store_file(self.prefix(modality), ".json").is_file()

    def store(self, modality: str = "speech", codebook=None, required: bool = True) -> TokenStore | None:
        """The token store of `modality`, checked against `codebook` when given; None when absent and not `required`."""
        if not self.has_store(modality):
            if not required:
                return None
            raise MissingFileError(f"{self.prefix(modality)}: no {modality} token store for {self.manifest} (run "
                                   f"`dmlm tokenize` with --out {self.stores})")
        store = self._open.get(modality) or TokenStore(self.prefix(modality))
        if codebook is not None:
            codebook.check(store.fingerprint, f"token store {store.prefix}")
        self._open[modality] = store
        return store

    def put(self, modality: str, tokens: Mapping[str, np.ndarray]) -> None:
        """Tokens of `modality` computed for this split (by record id): `tokens` reads them before any store."""
        self._computed[modality] = tokens

    def tokens(self, record: Any, modality: str = "speech") -> np.ndarray:
        """The tokens of `record` (a manifest record): computed for this split (`put`), else its token store's."""
        return self._by_id(record.id, modality)

    def _by_id(self, record_id: str, modality: str) -> np.ndarray:
        computed = self._computed.get(modality)
        return computed[record_id] if computed is not None else self.store(modality).get(record_id)

    def reader(self, modality: str) -> "SplitTokens":
        """What `dmlm.tasks.Sources` reads `modality`'s tokens through (`get(record_id)`)."""
        return SplitTokens(self, modality)


class SplitTokens:
    """One modality of a `Split` as a token source with `get(record_id)` (a `TokenStore`'s interface)."""

    def __init__(self, split: Split, modality: str):
        self.split, self.modality = split, modality

    def get(self, record_id: str) -> np.ndarray:
        return self.split._by_id(record_id, self.modality)
