"""Byte-pair merges over speech units: shorter speech sequences that expand back to units exactly.

Design decisions:
- A *piece* is a run of units. Piece ids [0, k) are the units themselves; ids from k on are
  the merged pieces, numbered in the order the merges first made them. Units -> pieces ->
  units is the identity for every unit sequence, seen in fitting or not.
- Fitting is Hugging Face `tokenizers`' BPE trainer over the units written as characters (unit
  u = one private-use character, one "word" per utterance, no normalizer or pre-tokenizer):
  the field's implementation, fast on millions of units, and deterministic (ties go by symbol
  order, not hash order: the same merges under any PYTHONHASHSEED or thread count). Merges are
  fitted on a corpus's *training* units as the codebook gives them (after deduplication when it
  deduplicates) and only pairs seen at least `min_count` times are merged, so a small corpus
  may yield fewer merges than asked.
- The merges are stored as piece-id pairs, not as the library's strings. Encoding rebuilds the
  library's BPE model from them (lowest-rank pair first, as fitted); decoding is a table lookup
  here (piece -> its units), so exactness never depends on the library's decoder.
- Bound to its codebook: `base` is the fingerprint of the unit codebook whose units it merges,
  and its own `fingerprint` hashes base, k and the merges. It is saved in the codebook file
  (`dmlm.tokenizers.speech.Codebook.bpe`), and the vocabulary that renders pieces
  (`dmlm.vocab.Vocab.speech_merges`) records that fingerprint; a checkpoint refuses a codebook
  with other merges, naming both. Token stores keep units: the Whisper pass runs once and any
  merge count reuses it; the vocoder reads units.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

from dmlm.util.errors import UserError

CHAR0 = 0xF0000  # Supplementary Private Use Area-A: one code point per unit
MAX_UNITS = 65534  # code points in that area


class UnitBPEError(UserError):
    """Merges that do not fit their codebook, a damaged merge table, or units outside [0, k)."""


def _chars(units: Sequence[int] | np.ndarray) -> str:
    return "".join(map(chr, (np.asarray(units, dtype=np.int64) + CHAR0).tolist()))


@dataclass(frozen=True)
class UnitBPE:
    """Merges over the units [0, k) of one codebook; see the module docstring."""

    k: int
    merges: tuple[tuple[int, int], ...]
    """(left, right) piece ids, in rank order: merge r joins them into one piece."""
    base: str = ""
    """Fingerprint of the unit codebook the merges were fitted on."""
    _units: tuple[tuple[int, ...], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not 1 <= self.k <= MAX_UNITS:
            raise UnitBPEError(f"unit BPE: k must be in [1, {MAX_UNITS}], got {self.k}")
        object.__setattr__(self, "merges", tuple((int(a), int(b)) for a, b in self.merges))
        units: list[tuple[int, ...]] = [(u,) for u in range(self.k)]
        known = {p: i for i, p in enumerate(units)}
        for r, (a, b) in enumerate(self.merges):
            if not (0 <= a < len(units) and 0 <= b < len(units)):
                raise UnitBPEError(f"unit BPE: merge {r} joins pieces ({a}, {b}) but only {len(units)} exist there")
            joined = units[a] + units[b]
            if joined not in known:  # a run made twice (ab+c, a+bc) keeps its first id, as the library does
                known[joined] = len(units)
                units.append(joined)
        object.__setattr__(self, "_units", tuple(units))

    # -- sizes and identity --------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        """Piece ids: the k units and every merged piece."""
        return len(self._units)

    @property
    def fingerprint(self) -> str:
        h = hashlib.sha256(json.dumps({"base": self.base, "k": self.k, "merges": self.merges}).encode())
        return h.hexdigest()[:16]

    def piece_units(self, piece: int) -> tuple[int, ...]:
        """The units piece id `piece` stands for."""
        return self._units[piece]

    # -- encode / decode -----------------------------------------------------------------
    @cached_property
    def _tokenizer(self):
        from tokenizers import Tokenizer, models

        strings = ["".join(chr(CHAR0 + u) for u in p) for p in self._units]
        vocab = {s: i for i, s in enumerate(strings)}
        merges = [(strings[a], strings[b]) for a, b in self.merges]
        return Tokenizer(models.BPE(vocab=vocab, merges=merges))

    def _check_units(self, u: np.ndarray, i: int | None = None) -> None:
        if len(u) and (u.min() < 0 or u.max() >= self.k):
            what = "units" if i is None else f"unit sequence {i}"
            raise UnitBPEError(f"{what} out of range [0, {self.k}): {int(u.min())}..{int(u.max())}")

    def encode(self, units: Sequence[int] | np.ndarray) -> list[int]:
        """Units -> piece ids."""
        return self.encode_batch([units])[0]

    def encode_batch(self, seqs: Sequence[Sequence[int] | np.ndarray]) -> list[list[int]]:
        arrays = [np.asarray(s, dtype=np.int64).reshape(-1) for s in seqs]
        for i, u in enumerate(arrays):
            self._check_units(u, i if len(arrays) > 1 else None)
        if not self.merges:
            return [u.tolist() for u in arrays]
        out = self._tokenizer.encode_batch([_chars(u) for u in arrays], add_special_tokens=False)
        return [e.ids for e in out]

    def decode(self, pieces: Sequence[int] | np.ndarray) -> list[int]:
        """Piece ids -> units (exact)."""
        p = np.asarray(pieces, dtype=np.int64).reshape(-1)
        if len(p) and (p.min() < 0 or p.max() >= self.vocab_size):
            raise UnitBPEError(f"piece ids out of range [0, {self.vocab_size}): {int(p.min())}..{int(p.max())}")
        table = self._units
        return [u for i in p.tolist() for u in table[i]]

    # -- persistence ---------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"k": self.k, "base": self.base, "merges": [list(m) for m in self.merges],
                "pieces": self.vocab_size, "fingerprint": self.fingerprint}

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "unit BPE") -> UnitBPE:
        """The merges of `to_dict`, refused when their stored fingerprint is not what they hash to."""
        try:
            bpe = cls(k=int(d["k"]), merges=tuple(tuple(m) for m in d["merges"]), base=str(d.get("base", "")))
        except (KeyError, TypeError, ValueError) as e:
            raise UnitBPEError(f"{where}: not a unit BPE table ({type(e).__name__}: {e})") from None
        stored = d.get("fingerprint")
        if stored is not None and stored != bpe.fingerprint:
            raise UnitBPEError(f"{where}: stored unit BPE fingerprint {stored} != computed {bpe.fingerprint} "
                               "(the merges were edited or damaged)")
        return bpe

    # -- fitting ---------------------------------------------------------------------------
    @classmethod
    def fit(cls, sequences: Iterable[Sequence[int] | np.ndarray], k: int, merges: int, base: str = "",
            min_count: int = 2) -> UnitBPE:
        """Up to `merges` merges of the most frequent adjacent pieces of `sequences` (units in [0, k)),
        each seen at least `min_count` times."""
        from tokenizers import Tokenizer, models, trainers

        if merges < 0:
            raise UnitBPEError(f"unit BPE: the number of merges must be >= 0, got {merges}")
        if not 1 <= k <= MAX_UNITS:
            raise UnitBPEError(f"unit BPE: k must be in [1, {MAX_UNITS}], got {k}")
        if merges == 0:
            return cls(k=k, merges=(), base=base)
        checked = cls(k=k, merges=())

        def words():
            for i, s in enumerate(sequences):
                u = np.asarray(s, dtype=np.int64).reshape(-1)
                checked._check_units(u, i)
                yield _chars(u)

        tok = Tokenizer(models.BPE())
        trainer = trainers.BpeTrainer(vocab_size=k + merges, min_frequency=min_count, show_progress=False,
                                      initial_alphabet=[chr(CHAR0 + u) for u in range(k)], special_tokens=[])
        tok.train_from_iterator(words(), trainer)
        model = json.loads(tok.to_str())["model"]
        ids = model["vocab"]  # units first (the alphabet, sorted by code point), then merged pieces
        pairs = [m.split(" ") if isinstance(m, str) else m for m in model["merges"]]
        bpe = cls(k=k, merges=tuple((ids[a], ids[b]) for a, b in pairs), base=base)
        ours = {"".join(chr(CHAR0 + u) for u in bpe.piece_units(i)): i for i in range(bpe.vocab_size)}
        if ours != ids:  # our numbering of pieces is the library's (so encoding gives the ids fitted)
            raise RuntimeError(f"unit BPE: {bpe.vocab_size} pieces from the merges disagree with the trainer's "
                               f"{len(ids)}")
        return bpe
