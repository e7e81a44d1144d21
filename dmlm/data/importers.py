"""Corpus importers: real speech and image corpora, in their own layouts, to manifest records.

Design decisions:
- One function per corpus layout (LibriSpeech, Common Voice, CoVoST 2, a generic TSV, COCO
  captions). Each reads the corpus, validates as it goes, writes one manifest with
  `write_manifest` (atomic) and returns the number of records.
- Paths in the manifest are relative to the manifest's folder (DESIGN.md), so a manifest
  and its corpus can move together.
- Bad input fails loudly and early: a missing column, a missing or unreadable audio/image
  file, an empty text or a duplicate id raises `ManifestError` naming the file and the line
  (TSV, transcript) or the entry (JSON) it came from.
- Text is kept as the corpus writes it, except LibriSpeech's all-capitals transcripts, which
  are lowercased. Further normalization belongs to the evaluation normalizers.
- Durations come from `soundfile.info` (a header read, no decoding).
- `split`, when not given, is inferred from the corpus's own names where they say it
  (LibriSpeech `train-clean-100`, Common Voice `dev.tsv`, COCO `captions_val2017.json`,
  CoVoST's `split` column); otherwise it is left out.
- TSVs are read as Common Voice's and CoVoST's own tools read them: tab-separated, a header
  line, no quoting (sentences contain quote marks).
"""

from __future__ import annotations

import csv
import json
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

import soundfile as sf
from dmlm.util.progress import tqdm

from dmlm.data.manifest import ManifestError, Record, write_manifest

_SPLIT_TOKEN = re.compile(r"^(train|dev|val|valid|validation|test)\d*$")
_SPLIT_NAMES = {"train": "train", "dev": "dev", "val": "dev", "valid": "dev", "validation": "dev", "test": "test"}


def split_from_name(name: str) -> str | None:
    """The split a corpus file or folder name denotes: "train-clean-100" -> "train",
    "captions_val2017" -> "dev", "test.tsv" -> "test", "validated" -> None."""
    for token in re.split(r"[^a-z0-9]+", name.lower()):
        m = _SPLIT_TOKEN.match(token)
        if m:
            return _SPLIT_NAMES[m.group(1)]
    return None


# ---------------------------------------------------------------------------------------------
# Shared helpers


def _relative(path: Path, out_dir: Path) -> str:
    """`path` relative to the manifest's folder, with forward slashes."""
    try:
        return Path(os.path.relpath(path.resolve(), out_dir.resolve())).as_posix()
    except ValueError:  # another drive (Windows): no relative path exists
        return path.resolve().as_posix()


def _audio(path: Path, out_dir: Path, where: str) -> tuple[str, float]:
    """(manifest-relative path, duration in seconds) of an audio file that must exist."""
    if not path.is_file():
        raise ManifestError(f"{where}: audio file not found: {path}")
    try:
        duration = sf.info(str(path)).duration
    except RuntimeError as e:  # soundfile.LibsndfileError: not audio, or a format libsndfile lacks
        raise ManifestError(f"{where}: cannot read audio {path}: {e}") from None
    return _relative(path, out_dir), round(duration, 3)


def _text(value: str | None, where: str, what: str) -> str:
    text = (value or "").strip()
    if not text:
        raise ManifestError(f"{where}: empty {what}")
    return text


def read_tsv(path: str | Path, required: Sequence[str]) -> Iterator[tuple[str, dict[str, str]]]:
    """Yield ("file:line", row) for each data row of a headed TSV, checking its columns."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: file not found")
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = [h.strip() for h in next(reader, [])]
        if not any(header):
            raise ManifestError(f"{path}:1: empty file, expected a header line with {list(required)}")
        missing = [c for c in required if c not in header]
        if missing:
            raise ManifestError(f"{path}:1: missing column(s) {missing}; the header has {header}")
        for row in reader:
            where = f"{path}:{reader.line_num}"
            if not any(field.strip() for field in row):
                continue
            if len(row) != len(header):
                raise ManifestError(f"{where}: expected {len(header)} tab-separated fields, got {len(row)}")
            yield where, dict(zip(header, row, strict=True))


class _UniqueIds:
    """Remembers where each id was seen, so a duplicate names both places."""

    def __init__(self) -> None:
        self.seen: dict[str, str] = {}

    def check(self, record_id: str, where: str) -> None:
        if record_id in self.seen:
            raise ManifestError(f"{where}: duplicate id {record_id!r} (first at {self.seen[record_id]})")
        self.seen[record_id] = where


def _extra_columns(row: dict[str, str], used: set[str]) -> dict[str, str]:
    """The row's other non-empty columns, kept in the record's `custom` escape hatch."""
    return {k: v for k, v in row.items() if k not in used and v.strip()}


# ---------------------------------------------------------------------------------------------
# LibriSpeech


def import_librispeech(
    root: str | Path,
    out_manifest: str | Path,
    split: str | None = None,
    subsets: Sequence[str] | None = None,
) -> int:
    """Import `<root>/<subset>/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt` + `.flac`.

    `root` may also be one subset folder. `subsets` restricts the import to those subset
    names; `split` defaults to the subset's ("train-clean-100" -> "train"). Text is lowercased.
    """
    root, out_manifest = Path(root), Path(out_manifest)
    if not root.is_dir():
        raise ManifestError(f"{root}: LibriSpeech root folder not found")
    transcripts = sorted(root.rglob("*.trans.txt"))
    found_subsets = {t.parent.parent.parent.name for t in transcripts}
    if subsets is not None:
        unknown = sorted(set(subsets) - found_subsets)
        if unknown:
            raise ManifestError(f"{root}: subset(s) {unknown} not found; found {sorted(found_subsets)}")
        transcripts = [t for t in transcripts if t.parent.parent.parent.name in subsets]
    if not transcripts:
        raise ManifestError(f"{root}: no <speaker>/<chapter>/<speaker>-<chapter>.trans.txt files found")

    records: list[Record] = []
    ids = _UniqueIds()
    for trans in tqdm(transcripts, desc="librispeech", unit="chapter", disable=None):
        chapter_dir = trans.parent
        speaker, chapter, subset = chapter_dir.parent.name, chapter_dir.name, chapter_dir.parent.parent.name
        if trans.name != f"{speaker}-{chapter}.trans.txt":
            raise ManifestError(f"{trans}: expected the name {speaker}-{chapter}.trans.txt in its folder")
        with trans.open(encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                where = f"{trans}:{lineno}"
                utt, _, text = line.strip().partition(" ")
                if not utt.startswith(f"{speaker}-{chapter}-"):
                    raise ManifestError(f"{where}: utterance id {utt!r} is not of {speaker}-{chapter}")
                text = _text(text, where, f"transcript for {utt!r}")
                audio, duration = _audio(chapter_dir / f"{utt}.flac", out_manifest.parent, where)
                ids.check(utt, where)
                records.append(
                    Record(
                        id=utt,
                        split=split or split_from_name(subset),
                        lang="en",
                        audio=audio,
                        duration=duration,
                        text=text.lower(),
                        speaker=speaker,
                        custom={"subset": subset, "chapter": chapter},
                    )
                )
    return write_manifest(out_manifest, records)


# ---------------------------------------------------------------------------------------------
# Common Voice and CoVoST 2


def _cv_lang(clip: str) -> str | None:
    m = re.match(r"common_voice_([A-Za-z]+(?:-[A-Za-z]+)?)_\d+", Path(clip).name)
    return m.group(1) if m else None


def import_common_voice(
    tsv: str | Path,
    clips_dir: str | Path,
    out_manifest: str | Path,
    split: str | None = None,
    lang: str | None = None,
) -> int:
    """Import a Common Voice TSV (`validated.tsv`, `train.tsv`, …: `client_id path sentence …`).

    Clips are looked up in `clips_dir`. `split` defaults to the TSV's name ("dev.tsv" ->
    "dev"; none for "validated.tsv"); `lang` to the `locale` column, else the clip names
    ("common_voice_en_123.mp3" -> "en"). `client_id` becomes `speaker`; other non-empty
    columns (age, gender, accents, votes, …) go to `custom`.
    """
    tsv, clips_dir, out_manifest = Path(tsv), Path(clips_dir), Path(out_manifest)
    split = split or split_from_name(tsv.stem)
    records: list[Record] = []
    ids = _UniqueIds()
    for where, row in tqdm(read_tsv(tsv, ["path", "sentence"]), desc="common voice", unit="clip", disable=None):
        clip = _text(row["path"], where, "'path'")
        text = _text(row["sentence"], where, "'sentence'")
        audio, duration = _audio(clips_dir / clip, out_manifest.parent, where)
        record_id = Path(clip).stem
        ids.check(record_id, where)
        records.append(
            Record(
                id=record_id,
                split=split,
                lang=lang or row.get("locale") or _cv_lang(clip),
                audio=audio,
                duration=duration,
                text=text,
                speaker=row.get("client_id") or None,
                custom=_extra_columns(row, {"path", "sentence", "client_id", "locale"}),
            )
        )
    return write_manifest(out_manifest, records)


def import_covost2(
    covost_tsv: str | Path,
    cv_clips_dir: str | Path,
    out_manifest: str | Path,
    tgt_lang: str,
    *,
    split: str | None = None,
    cv_tsv: str | Path | None = None,
) -> int:
    """Import a CoVoST 2 TSV (`covost_v2.<src>_<tgt>.tsv`: `path sentence translation split`)
    joined onto its Common Voice clips; the translation goes to `translations[tgt_lang]`.

    Split values "train_covost" count as "train", as in CoVoST's `get_covost_splits.py`.
    `split` keeps only the rows of that split (or labels every row, for a TSV without a
    `split` column). When the TSV has no `sentence`/`client_id` columns, pass the Common
    Voice `validated.tsv` as `cv_tsv`: rows are then joined on `path`, and rows absent from
    it are skipped, like the official inner join.
    """
    covost_tsv, cv_clips_dir, out_manifest = Path(covost_tsv), Path(cv_clips_dir), Path(out_manifest)
    src_lang = None
    m = re.match(r"covost(?:_v2)?\.([A-Za-z-]+)_([A-Za-z-]+)(?:\.|$)", covost_tsv.name)
    if m:
        src_lang = m.group(1)
        if m.group(2) != tgt_lang:
            raise ManifestError(f"{covost_tsv}: the file translates into {m.group(2)!r}, not tgt_lang={tgt_lang!r}")

    joined: dict[str, dict[str, str]] | None = None
    if cv_tsv is not None:
        joined = {row["path"]: row for _, row in read_tsv(cv_tsv, ["path", "sentence"])}

    required = ["path", "translation"] if joined is not None else ["path", "sentence", "translation"]
    records: list[Record] = []
    ids = _UniqueIds()
    for where, row in tqdm(read_tsv(covost_tsv, required), desc="covost2", unit="clip", disable=None):
        row_split = row.get("split")
        row_split = row_split.strip().removesuffix("_covost") if row_split else split
        if split is not None and row_split != split:
            continue
        clip = _text(row["path"], where, "'path'")
        cv_row: dict[str, str] = {}
        if joined is not None:
            if clip not in joined:
                continue
            cv_row = joined[clip]
        text = _text(row.get("sentence") or cv_row.get("sentence"), where, "'sentence'")
        translation = _text(row["translation"], where, "'translation'")
        audio, duration = _audio(cv_clips_dir / clip, out_manifest.parent, where)
        record_id = Path(clip).stem
        ids.check(record_id, where)
        records.append(
            Record(
                id=record_id,
                split=row_split,
                lang=src_lang or _cv_lang(clip),
                audio=audio,
                duration=duration,
                text=text,
                translations={tgt_lang: translation},
                speaker=row.get("client_id") or cv_row.get("client_id") or None,
            )
        )
    return write_manifest(out_manifest, records)


# ---------------------------------------------------------------------------------------------
# Generic TSV


def import_tsv(
    tsv: str | Path,
    out_manifest: str | Path,
    *,
    split: str | None = None,
    lang: str | None = None,
) -> int:
    """Import a headed TSV `id<TAB>audio<TAB>text[<TAB>lang]`.

    Audio paths are relative to the TSV's folder (or absolute). Optional `lang`, `speaker`
    and `split` columns fill those fields (the arguments are defaults for rows without
    them); other non-empty columns go to `custom`.
    """
    tsv, out_manifest = Path(tsv), Path(out_manifest)
    records: list[Record] = []
    ids = _UniqueIds()
    for where, row in tqdm(read_tsv(tsv, ["id", "audio", "text"]), desc="tsv", unit="row", disable=None):
        record_id = _text(row["id"], where, "'id'")
        text = _text(row["text"], where, "'text'")
        audio, duration = _audio(tsv.parent / _text(row["audio"], where, "'audio'"), out_manifest.parent, where)
        ids.check(record_id, where)
        records.append(
            Record(
                id=record_id,
                split=row.get("split", "").strip() or split,
                lang=row.get("lang", "").strip() or lang,
                audio=audio,
                duration=duration,
                text=text,
                speaker=row.get("speaker", "").strip() or None,
                custom=_extra_columns(row, {"id", "audio", "text", "lang", "speaker", "split"}),
            )
        )
    return write_manifest(out_manifest, records)


# ---------------------------------------------------------------------------------------------
# COCO captions


def import_coco(
    captions_json: str | Path,
    images_dir: str | Path,
    out_manifest: str | Path,
    split: str | None = None,
) -> int:
    """Import COCO captions (`annotations/captions_train2017.json`): one record per image.

    `caption` is the image's first caption in file order, the others are in
    `custom["captions"]`. Images without captions are skipped. `split` defaults to the
    file's name ("captions_val2017" -> "dev").
    """
    captions_json, images_dir, out_manifest = Path(captions_json), Path(images_dir), Path(out_manifest)
    if not captions_json.is_file():
        raise ManifestError(f"{captions_json}: file not found")
    try:
        data = json.loads(captions_json.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ManifestError(f"{captions_json}:{e.lineno}: not valid JSON ({e.msg})") from None
    if not isinstance(data, dict):
        raise ManifestError(f"{captions_json}: expected a JSON object with 'images' and 'annotations'")
    for key in ("images", "annotations"):
        if not isinstance(data.get(key), list):
            raise ManifestError(f"{captions_json}: missing the {key!r} list")
    split = split or split_from_name(captions_json.stem)

    files: dict[object, tuple[str, str]] = {}  # image id -> (file_name, where)
    for i, image in enumerate(data["images"]):
        where = f"{captions_json}: images[{i}]"
        if not isinstance(image, dict) or "id" not in image or not image.get("file_name"):
            raise ManifestError(f"{where}: an image needs 'id' and 'file_name'")
        if image["id"] in files:
            raise ManifestError(f"{where}: duplicate image id {image['id']!r} (first at {files[image['id']][1]})")
        files[image["id"]] = (image["file_name"], where)

    captions: dict[object, list[str]] = {}
    for j, ann in enumerate(data["annotations"]):
        where = f"{captions_json}: annotations[{j}]"
        if not isinstance(ann, dict) or "image_id" not in ann:
            raise ManifestError(f"{where}: an annotation needs 'image_id' and 'caption'")
        if ann["image_id"] not in files:
            raise ManifestError(f"{where}: image_id {ann['image_id']!r} is not among the images")
        caption = ann.get("caption")
        captions.setdefault(ann["image_id"], []).append(
            _text(caption if isinstance(caption, str) else None, where, "'caption'")
        )

    records: list[Record] = []
    for image_id, (file_name, where) in tqdm(files.items(), desc="coco", unit="image", disable=None):
        if image_id not in captions:
            continue
        path = images_dir / file_name
        if not path.is_file():
            raise ManifestError(f"{where}: image file not found: {path}")
        first, *others = captions[image_id]
        records.append(
            Record(
                id=f"coco-{image_id}",
                split=split,
                lang="en",
                image=_relative(path, out_manifest.parent),
                caption=first,
                custom={"coco_id": image_id, "captions": others},
            )
        )
    return write_manifest(out_manifest, records)
