"""A held-out text domain that is not scripture: English sentences for testing only.

Design decisions:
- Source: Ambrose Bierce's *The Devil's Dictionary* (1911), Debian's `dict-devil`. Its
  copyright file: "The Devil's Dictionary is in the public domain, its copyright has expired".
  Chosen among the public-domain English texts a Debian package carries (the Jargon File,
  `dict-jargon`, also public domain, is mostly hacker terms and acronyms with no single spoken
  form; Jane Austen, `r-cran-janeaustenr`, is MIT-licensed R data that needs R to read) because
  it is ordinary prose on everyday subjects (money, marriage, politics, manners: "A place of
  retirement for woman who wish for leisure to meditate upon the vice of idleness."), written
  for a newspaper, with a vocabulary far from the Bible's, and 180 KB to fetch.
- Fetched, not installed: the package depends on `dictd`, a dictionary server daemon, which
  nothing here needs. `source_files()` reads an installed copy (/usr/share/dictd) when there is
  one, else fetches the .deb with `apt-get download` (no root, nothing installed; a stale
  package list is refreshed once, like `dmlm.data.bible.ensure_installed`) and reads the two
  files out of it with `dpkg-deb`.
- Extraction: dictd's index gives each entry's offset and length (dictd's base64) in the
  gzip-compatible `.dict.dz`. Per entry, the headword ("ABASEMENT, n.") is cut; indented
  paragraphs (verse, quotations, attributions) are dropped; the prose is split into sentences at
  . ! ? followed by a capital, not after an abbreviation ("Mr.") or an initial ("S. J.").
- Cleaning is the bible corpus's English cleaning (`dmlm.data.bible.clean_english`: lowercase,
  [a-z' ], apostrophes inside words); a sentence with a digit is skipped, since digits have no
  single spoken form. Kept: `MIN_WORDS`..`max_words` words, each text once (the first).
- The extraction runs once: every extracted sentence (before the length filter) is cached as JSONL
  under the cache dir (`$DMLM_CACHE`, else `~/.cache/dmlm`), written atomically, its name
  versioned so a change in extraction or cleaning invalidates it.
- `draw(n, seed, exclude)`: `n` sentences none of whose texts is in `exclude` (the corpus's
  train/dev/test texts), in a seeded order where a larger `n` extends a smaller one's list.
"""

from __future__ import annotations

import gzip
import io
import os
import random
import re
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Collection
from pathlib import Path

from dmlm.data.bible import clean_english
from dmlm.data.corpus import Sentence
from dmlm.util.assets import cache_root
from dmlm.util.errors import UserError
from dmlm.util.io import read_jsonl, write_jsonl

NAME = "devil"
"""The domain's name: sentence ids start with it, records carry it in `custom.domain`."""
TITLE = "The Devil's Dictionary (Ambrose Bierce, 1911)"
APT_PACKAGE = "dict-devil"
DICT_FILES = ("usr/share/dictd/devil.dict.dz", "usr/share/dictd/devil.index")
CACHE_VERSION = 1  # bump when extraction or cleaning changes: old caches are then ignored
MIN_WORDS = 4


class HeldoutDomainError(UserError, RuntimeError):
    """The held-out domain's package cannot be fetched or read."""


# ---------------------------------------------------------------------------------------------
# Fetching


def _installed() -> tuple[bytes, str] | None:
    data, index = (Path("/") / f for f in DICT_FILES)
    if data.is_file() and index.is_file():
        return data.read_bytes(), index.read_text(encoding="utf-8")
    return None


def _apt_download(folder: Path) -> Path:
    """`apt-get download` the package into `folder`; its .deb."""
    cmd = ["apt-get", "download", APT_PACKAGE]
    if shutil.which("apt-get") is None:
        raise HeldoutDomainError(f"the held-out domain needs Debian's {APT_PACKAGE} and there is no apt-get: "
                                 f"install {APT_PACKAGE}, or set $DMLM_CACHE to a cache that has its sentences")
    result = subprocess.run(cmd, cwd=folder, capture_output=True, text=True)
    if result.returncode != 0:  # often a stale package list: refresh it once (as root) and retry
        prefix = [] if os.geteuid() == 0 else ["sudo", "-n"] if shutil.which("sudo") else None
        if prefix is not None:
            env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
            subprocess.run([*prefix, "apt-get", "update"], capture_output=True, text=True, env=env)
            result = subprocess.run(cmd, cwd=folder, capture_output=True, text=True)
    debs = sorted(folder.glob(f"{APT_PACKAGE}_*.deb"))
    if result.returncode != 0 or not debs:
        tail = (result.stderr or result.stdout).strip()[-800:]
        raise HeldoutDomainError(f"`{' '.join(cmd)}` failed (exit {result.returncode}):\n{tail}")
    return debs[-1]


def _deb_members(deb: Path, names: tuple[str, ...]) -> list[bytes]:
    tar = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], capture_output=True)
    if tar.returncode != 0:
        tail = tar.stderr.decode(errors="replace")[-400:]
        raise HeldoutDomainError(f"`dpkg-deb --fsys-tarfile {deb}` failed: {tail}")
    with tarfile.open(fileobj=io.BytesIO(tar.stdout)) as t:
        members = {m.name.removeprefix("./"): m for m in t.getmembers()}
        missing = [n for n in names if n not in members]
        if missing:
            raise HeldoutDomainError(f"{deb.name} lacks {missing}")
        return [t.extractfile(members[n]).read() for n in names]


def source_files() -> tuple[bytes, str]:
    """The dictionary's `.dict.dz` bytes and index text: the installed package's, else its fetched .deb's."""
    found = _installed()
    if found is not None:
        return found
    with tempfile.TemporaryDirectory(prefix="dmlm-heldout-") as tmp:
        data, index = _deb_members(_apt_download(Path(tmp)), DICT_FILES)
    return data, index.decode("utf-8")


# ---------------------------------------------------------------------------------------------
# Extraction

_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def _dictd_number(text: str) -> int:
    """dictd's index numbers: base64 digits, most significant first."""
    n = 0
    for c in text:
        n = n * 64 + _B64.index(c)
    return n


def entries(data: bytes, index: str) -> list[tuple[str, str]]:
    """(index headword, entry text) of every dictionary entry, in the order of the text."""
    text = gzip.decompress(data)  # dictzip is gzip with a random-access table in an extra field
    spans: dict[int, tuple[str, int]] = {}
    for line in index.splitlines():
        parts = line.split("\t")
        if len(parts) != 3 or parts[0].startswith("00database") or parts[0].startswith("00-database"):
            continue
        spans.setdefault(_dictd_number(parts[1]), (parts[0], _dictd_number(parts[2])))
    return [(headword, text[off : off + n].decode("utf-8")) for off, (headword, n) in sorted(spans.items())]


# "ABASEMENT, n.", "ZIGZAG, v.t.", "CUI BONO?  [Latin]", "ABRACADABRA." (not "I is the first letter")
_HEADWORD = re.compile(r"^[A-Z][A-Z0-9' ()\-,]*?(?:,\s*(?:[a-z]+\.)+|\.|\?\s*\[\w+\])\s*")
_ABBREVIATIONS = ("Mr", "Mrs", "Dr", "St", "Messrs", "Jr", "Sr", "Prof", "Rev", "Hon", "Capt", "Col", "Gen", "vs", "viz",
                  "etc", "cf", r"i\.e", r"e\.g")
_NO_BREAK = re.compile(rf"(?:\b(?:{'|'.join(_ABBREVIATIONS)})|\b[A-Z])$")
_BREAK = re.compile(r"[.!?]+[\"')\]]*(?=\s+[\"'(]?[A-Z])")


def split_sentences(paragraph: str) -> list[str]:
    """Sentences of one paragraph (whitespace already collapsed)."""
    out, start = [], 0
    for m in _BREAK.finditer(paragraph):
        if m.group()[0] == "." and _NO_BREAK.search(paragraph[start : m.start()]):
            continue  # "Mr. Smith", "S. J. Jape": not a sentence end
        out.append(paragraph[start : m.end()].strip())
        start = m.end()
    out.append(paragraph[start:].strip())
    return [s for s in out if s]


def entry_sentences(entry: str) -> list[str]:
    """The prose sentences of one entry: headword cut, indented paragraphs (verse, quotations) dropped."""
    body = _HEADWORD.sub("", entry, count=1)
    out = []
    for paragraph in re.split(r"\n[ \t]*\n", body):
        if paragraph.strip() and not paragraph[:1].isspace():
            out += split_sentences(re.sub(r"\s+", " ", paragraph).strip())
    return out


def _slug(headword: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", headword.lower()).strip("_") or "entry"


def extract(data: bytes | None = None, index: str | None = None) -> list[dict]:
    """Every cleaned sentence, in text order: {"id", "entry", "text", "original"} (no length filter).

    `data`, `index`: the dictionary's files (default: `source_files()`)."""
    if data is None or index is None:
        data, index = source_files()
    rows, ids = [], set()
    for headword, entry in entries(data, index):
        slug = _slug(headword)
        if slug in ids:
            slug = f"{slug}_{len(ids)}"
        ids.add(slug)
        k = 0
        for original in entry_sentences(entry):
            text = clean_english(original)
            if re.search(r"\d", original) or not text:
                continue
            k += 1
            rows.append({"id": f"{NAME}-{slug}-{k}", "entry": headword, "text": text, "original": original})
    if not rows:
        raise HeldoutDomainError(f"{APT_PACKAGE}: no sentences extracted; is the package intact?")
    return rows


# ---------------------------------------------------------------------------------------------
# Cache and public API


def cache_path() -> Path:
    """The sentence cache: `$DMLM_CACHE` (else `~/.cache/dmlm`), like the bible corpus's."""
    return cache_root() / f"heldout-domain-v{CACHE_VERSION}-{NAME}.jsonl"


def all_sentences() -> list[dict]:
    """Every extracted sentence (no length filter), extracted once and then read from the cache."""
    path = cache_path()
    if path.is_file():
        try:
            return read_jsonl(path)
        except (OSError, UnicodeDecodeError, UserError):
            pass  # an unreadable cache is rebuilt, not trusted
    rows = extract()
    write_jsonl(path, rows)
    return rows


def to_sentence(row: dict) -> Sentence:
    return Sentence(id=row["id"], text=row["text"],
                    custom={"domain": NAME, "entry": row["entry"], "original": row["original"]})


def sentences(max_words: int = 20, pool: list[Sentence] | None = None) -> list[Sentence]:
    """The domain's sentences of `MIN_WORDS`..`max_words` words, each text once, in text order.

    `pool` replaces the extracted sentences (tests pass a small list)."""
    if max_words < MIN_WORDS:
        raise UserError(f"held-out domain: max_words must be >= {MIN_WORDS}, got {max_words}")
    pool = [to_sentence(r) for r in all_sentences()] if pool is None else pool
    seen: set[str] = set()
    out = []
    for s in pool:
        if MIN_WORDS <= len(s.text.split()) <= max_words and s.text not in seen:
            seen.add(s.text)
            out.append(s)
    return out


def draw(n: int, seed: int = 0, exclude: Collection[str] = (), max_words: int = 20,
         pool: list[Sentence] | None = None) -> list[Sentence]:
    """`n` sentences whose texts are not in `exclude`, in a seeded order (the first `n` of one shuffle, so a
    larger `n` extends a smaller one's list). An error when fewer are left."""
    if n < 0:
        raise UserError(f"held-out domain: n must be >= 0 sentences, got {n}")
    excluded = set(exclude)
    candidates = [s for s in sentences(max_words, pool) if s.text not in excluded]
    if n > len(candidates):
        raise UserError(f"held-out domain ({TITLE}): {n} sentences asked for, {len(candidates)} of "
                        f"{MIN_WORDS}..{max_words} words are not in the corpus")
    random.Random(f"{seed}-{NAME}").shuffle(candidates)
    return candidates[:n]
