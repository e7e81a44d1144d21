"""Manifest records: one example per JSONL line, the contract every importer produces.

Design decisions:
- A record is a typed dataclass with an escape hatch (`custom`) for corpus-specific fields,
  in the spirit of lhotse's `SupervisionSegment`.
- Paths inside a manifest are relative to the manifest file, so a corpus folder can move.
- Reading is lazy (a generator over lines) and validating: a bad line raises `ManifestError`
  naming the file, the line number and the field, instead of failing later in training.
- Writing is atomic (temp file + rename): an interrupted job never leaves a half manifest
  that looks complete.
"""

from __future__ import annotations

import codecs
import json
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from dmlm.util.errors import UserError
from dmlm.util.io import atomic_write_text

SPLITS = ("train", "dev", "test")
HELDOUT_VOICE = "heldout_voice"
"""The `custom` field that marks a record spoken by a voice no training record has (and the same
key in an evaluation row): such records are scored as their own group."""


class ManifestError(UserError):
    """A manifest line that does not match the record schema."""


@dataclass
class Record:
    """One example. Every modality field is optional; `id` is not."""

    id: str
    split: str | None = None
    lang: str | None = None
    audio: str | None = None  # path relative to the manifest file
    duration: float | None = None  # seconds
    text: str | None = None
    translations: dict[str, str] | None = None  # lang -> text
    image: str | None = None  # path relative to the manifest file
    caption: str | None = None
    speaker: str | None = None
    custom: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        d = {k: v for k, v in asdict(self).items() if v is not None and v != {}}
        return json.dumps(d, ensure_ascii=False)

    def audio_path(self, manifest: str | Path) -> Path:
        """Absolute path of this record's audio, resolved against its manifest's folder."""
        if self.audio is None:
            raise ManifestError(f"{manifest}: record {self.id!r} has no 'audio' field")
        p = Path(self.audio)
        return p if p.is_absolute() else Path(manifest).parent / p

    def image_path(self, manifest: str | Path) -> Path:
        if self.image is None:
            raise ManifestError(f"{manifest}: record {self.id!r} has no 'image' field")
        p = Path(self.image)
        return p if p.is_absolute() else Path(manifest).parent / p


_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "id": (str,),
    "split": (str,),
    "lang": (str,),
    "audio": (str,),
    "duration": (int, float),
    "text": (str,),
    "translations": (dict,),
    "image": (str,),
    "caption": (str,),
    "speaker": (str,),
    "custom": (dict,),
}
_KNOWN = {f.name for f in fields(Record)}


def parse_record(obj: Any, where: str) -> Record:
    """Validate one decoded JSON object; `where` is 'file:line' for error messages."""
    if not isinstance(obj, dict):
        raise ManifestError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    if "id" not in obj:
        raise ManifestError(f"{where}: missing required field 'id'")
    kwargs: dict[str, Any] = {}
    custom = dict(obj.get("custom") or {})
    for key, value in obj.items():
        if key not in _KNOWN:
            custom[key] = value  # unknown fields survive in the escape hatch
            continue
        if value is None:
            continue
        types = _FIELD_TYPES[key]
        if not isinstance(value, types) or isinstance(value, bool):
            expected = " or ".join(t.__name__ for t in types)
            raise ManifestError(
                f"{where}: field {key!r} must be {expected}, got {type(value).__name__} ({value!r:.60})"
            )
        kwargs[key] = value
    if not kwargs.get("id"):  # absent from kwargs when the line says "id": null
        raise ManifestError(f"{where}: field 'id' is empty")
    if "duration" in kwargs and kwargs["duration"] < 0:
        raise ManifestError(f"{where}: field 'duration' is negative ({kwargs['duration']})")
    if "translations" in kwargs:
        for lang, txt in kwargs["translations"].items():
            if not isinstance(txt, str):
                raise ManifestError(f"{where}: translations[{lang!r}] must be a string")
    kwargs["custom"] = custom
    return Record(**kwargs)


_WIDE_BOMS = {codecs.BOM_UTF32_LE: "UTF-32", codecs.BOM_UTF32_BE: "UTF-32", codecs.BOM_UTF16_LE: "UTF-16",
              codecs.BOM_UTF16_BE: "UTF-16"}  # UTF-32 first: its LE mark starts with UTF-16's


def _check_encoding(path: Path, first: bytes) -> None:
    """Refuse a manifest in UTF-16 or UTF-32 (with a byte-order mark, or NUL bytes without one) by name:
    it would otherwise fail as "not valid JSON" at its first line."""
    name = next((enc for bom, enc in _WIDE_BOMS.items() if first.startswith(bom)), None)
    if name is None and b"\x00" in first:
        name = "UTF-16 or UTF-32 (NUL bytes in the first line)"
    if name is not None:
        raise ManifestError(f"{path}: the manifest is {name}; a manifest is UTF-8 JSON lines: convert it, e.g. "
                            f"`iconv -f {name.split()[0].lower()} -t utf-8 {path.name}`")


def iter_manifest(path: str | Path) -> Iterator[Record]:
    """Lazily yield validated records; blank lines are skipped."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: manifest not found")
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, 1):
            if lineno == 1:
                _check_encoding(path, raw)
                raw = raw.removeprefix(codecs.BOM_UTF8)  # a UTF-8 byte-order mark (Windows editors): UTF-8 still
            try:
                line = raw.decode("utf-8").strip()
            except UnicodeDecodeError as e:  # e.g. a Latin-1 file: the line and byte, not a traceback
                raise ManifestError(f"{path}:{lineno}: not UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1}); "
                                    "a manifest is UTF-8 JSON lines: convert it, e.g. "
                                    f"`iconv -f latin1 -t utf-8 {path.name}`") from None
            if not line:
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ManifestError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
            yield parse_record(obj, f"{path}:{lineno}")


def read_manifest(path: str | Path) -> list[Record]:
    """All records of a manifest, with duplicate ids rejected."""
    records = list(iter_manifest(path))
    seen: set[str] = set()
    for r in records:
        if r.id in seen:
            raise ManifestError(f"{path}: duplicate record id {r.id!r}")
        seen.add(r.id)
    return records


def write_manifest(path: str | Path, records: Iterable[Record]) -> int:
    """Atomically write records as JSONL; returns the number written."""
    lines = [r.to_json() for r in records]
    atomic_write_text(path, "".join(line + "\n" for line in lines))
    return len(lines)


def is_heldout_voice(record: Any) -> bool:
    """A manifest record (`custom.heldout_voice`) or an evaluation row (`heldout_voice`)."""
    if isinstance(record, dict):
        return bool(record.get(HELDOUT_VOICE))
    return bool((record.custom or {}).get(HELDOUT_VOICE))
