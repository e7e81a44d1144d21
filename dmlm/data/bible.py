"""The `bible` corpus: short English verses with Spanish translations, from public-domain Bibles.

Design decisions:
- Source: the SWORD modules of Debian's `sword-text-web` (World English Bible, `engWEB2015eb`)
  and `sword-text-sparv` (Reina-Valera 1909, `spaRV1909eb`), read through `diatheke`. Both are
  in the public domain. `ensure_installed()` apt-installs them when they are missing.
- We read diatheke's `internal` format (the module's own OSIS markup), one book per call, not
  `plain`: plain text glues adjacent tagged words ("Godcreated") and repeats each psalm's
  title before every one of its verses. From the markup we drop titles, speaker labels,
  notes and the glossary appended after Revelation 22:21, and keep the verse words.
- Alignment is on (book, chapter, verse), then checked. The RV module, though labelled KJV
  versification, numbers some passages the Hebrew/Spanish way (Num 13, 1 Sam 24, 1 Chr 21,
  Job 39-40, …: runs of verses shifted by one), and keeps psalm titles and the epistles'
  closing subscriptions inside verses. A Gale & Church length-based alignment of each chapter,
  blind to the numbers, must link verse k to verse k, and the length ratio must be plausible;
  about 1% of pairs fail and are dropped rather than kept misaligned. Psalm titles are cut
  from the Spanish verse 1. Books outside the 66-book canon (the WEB's deuterocanon) have no
  Spanish side and are skipped.
- English `text` is cleaned for speech: lowercased, punctuation removed (hyphens and dashes
  become spaces), only the characters [a-z' ] kept, an apostrophe only inside a word
  ("god's", "don't"). Numbers are not spelled out: the WEB already writes them as words, and a
  verse whose English has digits (none in this edition) is skipped, since "3:14" or "1/25th"
  have no single spoken form. Spanish keeps its normal orthography and punctuation, stripped
  of markup, with the capitals that open each chapter in the RV 1909 ("EN el principio")
  recased.
- The slow part (diatheke plus cleaning and alignment, ~20 s) runs once: the aligned verse list
  (every verse, before the length filter) is cached as JSONL under the cache dir
  (`$DMLM_CACHE`, else `~/.cache/dmlm`), written atomically, and named with a format version
  so a change in cleaning invalidates it.
- Splits are held out by whole chapters: dev and test verses come from chapters that train
  never sees, identical English texts are kept once only, and everything is a function of
  the seed. The test set depends only on (seed, n_test, max_words) and dev additionally on
  n_dev, so growing the training set never moves the held-out sets.
- Unpaired text (`n_unpaired`, for text_lm): verses as text only, from the chapters train draws
  from and from no other, none with the text of a verse in a held-out chapter or in any split
  (nor any text in `unpaired_exclude`: the held-out domain's sentences). They have no word limit:
  `max_words` keeps spoken verses short for the CPU's sake, while text is cheap, and a limit would
  leave only the few short verses train does not take (at 16 words, ~550 of the 7,555 outside the
  held-out chapters when train takes 7,000). Their order is one seeded shuffle of those verses
  with train's removed, so a larger n_unpaired extends a smaller one's list, and train, dev and
  test never depend on it.
"""

from __future__ import annotations

import html
import json
import math
import os
import random
import re
import shutil
import subprocess
import unicodedata
from collections import Counter
from collections.abc import Collection, Iterable
from pathlib import Path

from dmlm.data.corpus import Sentence
from dmlm.util.assets import cache_root
from dmlm.util.errors import UserError
from dmlm.util.io import write_jsonl

ENGLISH_MODULE = "engWEB2015eb"
SPANISH_MODULE = "spaRV1909eb"
APT_PACKAGES = ("diatheke", "sword-text-web", "sword-text-sparv")
CACHE_VERSION = 1  # bump when extraction or cleaning changes: old caches are then ignored

# Verse alignment check (see `length_alignment`). Spanish characters per English character and
# the variance of that per character, measured on this WEB/RV pair; link-type penalties in nats
# (-log prior) make the verse numbering win unless the lengths clearly say otherwise.
LENGTH_RATIO = 0.96
LENGTH_VARIANCE = 2.5
_LINK_PENALTY = {(1, 1): 0.02, (1, 0): 6.2, (0, 1): 6.2, (2, 1): 5.3, (1, 2): 5.3}
# A kept pair must also have len(es) / len(en) in this range (a last guard on lone outliers).
LENGTH_RATIO_RANGE = (0.5, 2.2)

# (OSIS abbreviation, name diatheke prints with `-l en`, display name) for the 66 books.
BOOKS: tuple[tuple[str, str, str], ...] = (
    ("Gen", "Genesis", "Genesis"),
    ("Exod", "Exodus", "Exodus"),
    ("Lev", "Leviticus", "Leviticus"),
    ("Num", "Numbers", "Numbers"),
    ("Deut", "Deuteronomy", "Deuteronomy"),
    ("Josh", "Joshua", "Joshua"),
    ("Judg", "Judges", "Judges"),
    ("Ruth", "Ruth", "Ruth"),
    ("1Sam", "I Samuel", "1 Samuel"),
    ("2Sam", "II Samuel", "2 Samuel"),
    ("1Kgs", "I Kings", "1 Kings"),
    ("2Kgs", "II Kings", "2 Kings"),
    ("1Chr", "I Chronicles", "1 Chronicles"),
    ("2Chr", "II Chronicles", "2 Chronicles"),
    ("Ezra", "Ezra", "Ezra"),
    ("Neh", "Nehemiah", "Nehemiah"),
    ("Esth", "Esther", "Esther"),
    ("Job", "Job", "Job"),
    ("Ps", "Psalms", "Psalms"),
    ("Prov", "Proverbs", "Proverbs"),
    ("Eccl", "Ecclesiastes", "Ecclesiastes"),
    ("Song", "Song of Solomon", "Song of Solomon"),
    ("Isa", "Isaiah", "Isaiah"),
    ("Jer", "Jeremiah", "Jeremiah"),
    ("Lam", "Lamentations", "Lamentations"),
    ("Ezek", "Ezekiel", "Ezekiel"),
    ("Dan", "Daniel", "Daniel"),
    ("Hos", "Hosea", "Hosea"),
    ("Joel", "Joel", "Joel"),
    ("Amos", "Amos", "Amos"),
    ("Obad", "Obadiah", "Obadiah"),
    ("Jonah", "Jonah", "Jonah"),
    ("Mic", "Micah", "Micah"),
    ("Nah", "Nahum", "Nahum"),
    ("Hab", "Habakkuk", "Habakkuk"),
    ("Zeph", "Zephaniah", "Zephaniah"),
    ("Hag", "Haggai", "Haggai"),
    ("Zech", "Zechariah", "Zechariah"),
    ("Mal", "Malachi", "Malachi"),
    ("Matt", "Matthew", "Matthew"),
    ("Mark", "Mark", "Mark"),
    ("Luke", "Luke", "Luke"),
    ("John", "John", "John"),
    ("Acts", "Acts", "Acts"),
    ("Rom", "Romans", "Romans"),
    ("1Cor", "I Corinthians", "1 Corinthians"),
    ("2Cor", "II Corinthians", "2 Corinthians"),
    ("Gal", "Galatians", "Galatians"),
    ("Eph", "Ephesians", "Ephesians"),
    ("Phil", "Philippians", "Philippians"),
    ("Col", "Colossians", "Colossians"),
    ("1Thess", "I Thessalonians", "1 Thessalonians"),
    ("2Thess", "II Thessalonians", "2 Thessalonians"),
    ("1Tim", "I Timothy", "1 Timothy"),
    ("2Tim", "II Timothy", "2 Timothy"),
    ("Titus", "Titus", "Titus"),
    ("Phlm", "Philemon", "Philemon"),
    ("Heb", "Hebrews", "Hebrews"),
    ("Jas", "James", "James"),
    ("1Pet", "I Peter", "1 Peter"),
    ("2Pet", "II Peter", "2 Peter"),
    ("1John", "I John", "1 John"),
    ("2John", "II John", "2 John"),
    ("3John", "III John", "3 John"),
    ("Jude", "Jude", "Jude"),
    ("Rev", "Revelation of John", "Revelation"),
)
_DISPLAY = {osis: display for osis, _, display in BOOKS}


class BibleError(UserError, RuntimeError):
    """diatheke or its modules are missing, cannot be installed, or gave unusable output."""


# ---------------------------------------------------------------------------------------------
# Installation and extraction


def installed_modules() -> set[str]:
    """Names of the SWORD text modules diatheke can see (empty when diatheke is missing)."""
    if shutil.which("diatheke") is None:
        return set()
    out = subprocess.run(["diatheke", "-b", "system", "-k", "modulelist"], capture_output=True, text=True).stdout
    return {m.group(1) for m in re.finditer(r"^(\S+) : ", out, flags=re.M)}


def ensure_installed() -> None:
    """Make sure diatheke and both Bible modules are present, apt-installing them if not."""
    needed = {ENGLISH_MODULE, SPANISH_MODULE}
    if needed <= installed_modules():
        return
    manual = f"apt-get install -y {' '.join(APT_PACKAGES)}"
    if shutil.which("apt-get") is None:
        raise BibleError(f"diatheke or the Bible modules are missing and there is no apt-get; install: {manual}")
    prefix: list[str] = []
    if os.geteuid() != 0:
        if shutil.which("sudo") is None:
            raise BibleError(f"diatheke or the Bible modules are missing; as root, run: {manual}")
        prefix = ["sudo", "-n"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = [*prefix, "apt-get", "install", "-y", *APT_PACKAGES]
    result = subprocess.run(install, capture_output=True, text=True, env=env)
    if result.returncode != 0:  # often a stale package list: refresh it once and retry
        subprocess.run([*prefix, "apt-get", "update"], capture_output=True, text=True, env=env)
        result = subprocess.run(install, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip()[-800:]
        raise BibleError(f"`{' '.join(install)}` failed (exit {result.returncode}):\n{tail}")
    missing = needed - installed_modules()
    if missing:
        raise BibleError(f"installed {' '.join(APT_PACKAGES)} but diatheke lacks module(s) {sorted(missing)}")


def _diatheke(module: str, key: str) -> str:
    cmd = ["diatheke", "-b", module, "-f", "internal", "-l", "en", "-k", key]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise BibleError(f"`{' '.join(cmd)}` failed (exit {result.returncode}): {result.stderr.strip()[-400:]}")
    return result.stdout


def split_verses(raw: str, book_name: str) -> dict[tuple[int, int], str]:
    """Cut one book's diatheke output into {(chapter, verse): markup}.

    Each verse starts with "<Book> C:V: "; what precedes the marker on its line (a psalm
    title) lands at the end of the previous verse's markup, where `strip_markup` removes it.
    """
    # A marker opens a line or follows a tag ("<l sID=…/> Psalms 133:1: "), never running text,
    # so "John 1:1: " is not found inside "I John 1:1: ".
    marker = re.compile(rf"(?:^|(?<=>))[ \t]*{re.escape(book_name)} (\d+):(\d+): ", flags=re.M)
    raw = re.sub(r"\n\(\w+\)\s*$", "", raw)  # diatheke's trailing "(moduleName)" line
    found = list(marker.finditer(raw))
    verses: dict[tuple[int, int], str] = {}
    for i, m in enumerate(found):
        end = found[i + 1].start() if i + 1 < len(found) else len(raw)
        verses[(int(m.group(1)), int(m.group(2)))] = raw[m.end() : end]
    return verses


_DROP_ELEMENTS = re.compile(r"<(title|speaker|note|rdg)\b[^>]*?(?<!/)>.*?</\1>", flags=re.S)
# Milestoned divs (<div sID="x" type="glossary"/> … <div eID="x" …/>) that hold no verse text.
_DROP_DIVS = re.compile(
    r'<div\b[^>]*\bsID="([^"]+)"[^>]*\btype="(?:glossary|introduction|preface|colophon)"[^>]*/>'
    r'.*?<div\b[^>]*\beID="\1"[^>]*/>',
    flags=re.S,
)


def strip_markup(markup: str) -> str:
    """Verse words from OSIS markup, with normal spacing; titles, labels and notes removed."""
    text = _DROP_DIVS.sub(" ", markup)
    text = _DROP_ELEMENTS.sub(" ", text)
    text = re.sub(r"</w>\s*<w\b", "</w> <w", text)  # adjacent tagged words are separate words
    text = re.sub(r"<[^>]*>", "", text)
    text = html.unescape(text)
    text = re.sub(r"\s+", " ", text).strip()
    return re.sub(r"\s+([,.;:!?”’»)])", r"\1", text)


def clean_english(text: str) -> str:
    """Speakable English: lowercase, [a-z' ] only, apostrophes only inside words."""
    text = unicodedata.normalize("NFKD", text)
    text = "".join(c for c in text if not unicodedata.combining(c)).lower()
    text = re.sub(r"[‘’ʼ`´]", "'", text)
    text = re.sub(r"[^a-z']+", " ", text)
    text = re.sub(r"(?<![a-z])'|'(?![a-z])", " ", text)
    return re.sub(r"\s+", " ", text).strip()


def spanish_proper_nouns(texts: Iterable[str]) -> frozenset[str]:
    """Lowercased words the texts capitalize mid-sentence more often than not ("jehová")."""
    capitalized: Counter[str] = Counter()
    lowercase: Counter[str] = Counter()
    for text in texts:
        # A word right after sentence punctuation (or opening the verse) is capitalized anyway.
        for m in re.finditer(r"(?<![.:;!?¿¡«“(]\s)(?<=\s)([^\W\d_]+)", text):
            word = m.group(1)
            if word[0].isupper() and not word.isupper():
                capitalized[word.lower()] += 1
            elif word.islower():
                lowercase[word] += 1
    return frozenset(w for w, n in capitalized.items() if n > lowercase[w])


def clean_spanish(text: str, proper_nouns: Collection[str] = frozenset()) -> str:
    """Normal Spanish text (markup already gone), the chapter-opening capitals recased.

    The RV 1909 sets the words opening each chapter in capitals: "EN el principio" ->
    "En el principio", "¿POR qué" -> "¿Por qué", "Y MURIÓ Samuel" -> "Y murió Samuel";
    a capitalized word after the first stays capitalized when it is in `proper_nouns`
    ("A JEHOVÁ llamé" -> "A Jehová llamé").
    """
    text = re.sub(r"\s+", " ", unicodedata.normalize("NFC", text)).strip()
    words = text.split(" ")
    for i, word in enumerate(words):
        letters = re.sub(r"\W", "", word)
        if not letters or not letters.isupper():
            break
        lead = len(word) - len(word.lstrip("¡¿(«“"))  # keep opening marks, recase what follows
        head, rest = word[:lead], word[lead:]
        capital = i == 0 or letters.lower() in proper_nouns
        words[i] = head + (rest.capitalize() if capital else rest.lower())
    return " ".join(words)


def strip_psalm_title(text: str) -> str:
    """Drop the superscription the RV 1909 keeps inside a psalm's verse 1.

    The WEB sets titles apart (and `strip_markup` removes them); the RV writes "Al Músico
    principal: Salmo de David. OYE, oh Dios, mi clamor". The psalm proper opens with the
    chapter's capitalized word, so everything before the sentence that holds it goes.
    """
    for m in re.finditer(r"[^\W\d_]{2,}", text):
        if m.group().isupper():
            head = text[: m.start()]
            if not re.search(r"[^\W\d_]", head):
                return text  # the capitals open the verse: no title
            cut = max(head.rfind(". "), head.rfind(": "))
            return text[cut + 2 :] if cut >= 0 else text[len(head.rstrip("¡¿")) :].lstrip()
    return text


def length_alignment(src: list[int], tgt: list[int]) -> list[tuple[range, range]]:
    """Gale & Church (1993) length-based alignment of two sequences of segment lengths.

    Returns links (source indexes, target indexes), each one of 1-1, 1-0, 0-1, 2-1, 1-2,
    covering both sequences in order. Used to check the verse numbering, not to replace it:
    a verse pair is kept only where this alignment, blind to the numbers, links verse k of
    one text to verse k of the other.
    """
    n, m = len(src), len(tgt)
    inf = float("inf")
    cost = [[inf] * (m + 1) for _ in range(n + 1)]  # (n+1, m+1)
    back: list[list[tuple[int, int]]] = [[(0, 0)] * (m + 1) for _ in range(n + 1)]
    cost[0][0] = 0.0
    for i in range(n + 1):
        for j in range(m + 1):
            for (di, dj), penalty in _LINK_PENALTY.items():
                if i < di or j < dj or cost[i - di][j - dj] == inf:
                    continue
                c = cost[i - di][j - dj] + penalty
                if di and dj:
                    a, b = sum(src[i - di : i]), sum(tgt[j - dj : j])
                    delta = (b - a * LENGTH_RATIO) / math.sqrt(max(a, 1) * LENGTH_VARIANCE)
                    c -= math.log(max(math.erfc(abs(delta) / math.sqrt(2)), 1e-300))
                if c < cost[i][j]:
                    cost[i][j], back[i][j] = c, (di, dj)
    links = []
    i, j = n, m
    while i or j:
        di, dj = back[i][j]
        links.append((range(i - di, i), range(j - dj, j)))
        i, j = i - di, j - dj
    return links[::-1]


def align(
    english: dict[tuple[int, int], str],
    spanish: dict[tuple[int, int], str],
    book: str,
    proper_nouns: Collection[str] = frozenset(),
) -> list[dict]:
    """Aligned verse dicts of one book from {(chapter, verse): plain text} of each side.

    Kept: both sides non-empty, verse k linked to verse k by `length_alignment` within its
    chapter, a plausible length ratio, and no digit in the English.
    """
    out = []
    for chapter in sorted({c for c, _ in english}):
        en = {v: t for (c, v), t in english.items() if c == chapter and t}
        es = {v: t for (c, v), t in spanish.items() if c == chapter and t}
        if book == "Ps" and 1 in es:
            es[1] = strip_psalm_title(es[1])
        en_nums, es_nums = sorted(en), sorted(es)
        links = length_alignment([len(en[v]) for v in en_nums], [len(es[v]) for v in es_nums])
        for src, tgt in links:
            if len(src) != 1 or len(tgt) != 1 or en_nums[src[0]] != es_nums[tgt[0]]:
                continue
            verse = en_nums[src[0]]
            en_text, es_text = en[verse], es[verse]
            lo, hi = LENGTH_RATIO_RANGE
            if re.search(r"\d", en_text) or not lo <= len(es_text) / len(en_text) <= hi:
                continue
            text = clean_english(en_text)
            if text:
                out.append(
                    {
                        "book": book,
                        "chapter": chapter,
                        "verse": verse,
                        "text": text,
                        "en": en_text,
                        "es": clean_spanish(es_text, proper_nouns),
                    }
                )
    return out


def extract() -> list[dict]:
    """Run diatheke over both modules and return every aligned verse, in canonical order."""
    ensure_installed()
    books = []
    for osis, name, _ in BOOKS:
        english = {k: strip_markup(v) for k, v in split_verses(_diatheke(ENGLISH_MODULE, osis), name).items()}
        spanish = {k: strip_markup(v) for k, v in split_verses(_diatheke(SPANISH_MODULE, osis), name).items()}
        if not english or not spanish:
            raise BibleError(f"diatheke returned no verses of {name} ({osis}); are the modules intact?")
        books.append((osis, english, spanish))
    proper_nouns = spanish_proper_nouns(t for _, _, spanish in books for t in spanish.values())
    return [row for osis, english, spanish in books for row in align(english, spanish, osis, proper_nouns)]


# ---------------------------------------------------------------------------------------------
# Cache and public API


def cache_path() -> Path:
    """The verse cache: `$DMLM_CACHE` (else `~/.cache/dmlm`), like the converted assets."""
    return cache_root() / f"bible-v{CACHE_VERSION}-{ENGLISH_MODULE}-{SPANISH_MODULE}.jsonl"


def aligned_verses() -> list[dict]:
    """Every aligned verse (no length filter), extracted once and then read from the cache."""
    path = cache_path()
    if path.is_file():
        try:
            with path.open(encoding="utf-8") as f:
                return [json.loads(line) for line in f if line.strip()]
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            pass  # an unreadable cache is rebuilt, not trusted
    rows = extract()
    write_jsonl(path, rows)
    return rows


def to_sentence(row: dict) -> Sentence:
    book, chapter, verse = row["book"], row["chapter"], row["verse"]
    return Sentence(
        id=f"bible-{book}-{chapter}-{verse}",
        text=row["text"],
        translations={"es": row["es"]},
        custom={
            "ref": f"{_DISPLAY.get(book, book)} {chapter}:{verse}",
            "book": book,
            "chapter": chapter,
            "verse": verse,
            "original": row["en"],
        },
    )


def verses(max_words: int = 20) -> list[Sentence]:
    """Aligned EN–ES verses whose cleaned English has at most `max_words` words, in Bible order."""
    if max_words < 1:
        raise UserError(f"max_words must be >= 1, got {max_words}")
    return [to_sentence(r) for r in aligned_verses() if len(r["text"].split()) <= max_words]


def generate_splits(
    n_train: int,
    n_dev: int,
    n_test: int,
    seed: int = 0,
    max_words: int = 20,
    pool: list[Sentence] | None = None,
    n_unpaired: int = 0,
    unpaired_exclude: Collection[str] = (),
) -> dict[str, list[Sentence]]:
    """Disjoint train/dev/test verse sets, held out by whole chapters (and `unpaired`, with `n_unpaired`).

    `pool` replaces the extracted verses (tests pass a small list); it is filtered by
    `max_words` like the real corpus. Identical English texts are kept once (the first in
    Bible order). Chapters are shuffled by `seed`; test takes whole chapters from the front
    until it has `n_test` verses, then dev likewise; the verses of the last chapter a
    held-out set opens beyond its count are discarded, never given to train. Train is a
    random sample of `n_train` verses from the remaining chapters. Each set is returned in
    Bible order. `n_unpaired` > 0 adds `unpaired`: that many text-only verses of any length
    from train's chapters (`unpaired_verses`), in their draw order; the other sets do not
    depend on it.
    """
    if min(n_train, n_dev, n_test, n_unpaired) < 0:
        raise UserError(f"split sizes must be >= 0, got {n_train}, {n_dev}, {n_test}, {n_unpaired}")
    every = [to_sentence(r) for r in aligned_verses()] if pool is None and n_unpaired else pool
    pool = verses(max_words) if pool is None else [s for s in pool if len(s.text.split()) <= max_words]

    seen: set[str] = set()
    chapters: dict[tuple[str, int], list[Sentence]] = {}
    order: dict[str, int] = {}
    for i, s in enumerate(pool):
        if s.text in seen:
            continue
        seen.add(s.text)
        order[s.id] = i
        chapters.setdefault((s.custom["book"], s.custom["chapter"]), []).append(s)

    keys = list(chapters)  # insertion order is Bible order: shuffling it is reproducible
    random.Random(seed).shuffle(keys)
    available = sum(len(v) for v in chapters.values())

    def take_chapters(n: int, name: str) -> list[Sentence]:
        taken: list[Sentence] = []
        while len(taken) < n:
            if not keys:
                raise UserError(
                    f"bible: not enough verses for {name}={n} (max_words={max_words}, {available} unique verses in all)"
                )
            taken.extend(chapters[keys.pop(0)])
        return taken[:n]

    test = take_chapters(n_test, "n_test")
    dev = take_chapters(n_dev, "n_dev")
    rest = [s for k in keys for s in chapters[k]]
    if n_train > len(rest):
        raise UserError(
            f"bible: not enough verses for n_train={n_train}: {len(rest)} left outside the "
            f"held-out chapters (max_words={max_words}, {available} unique verses in all)"
        )
    train = random.Random(f"{seed}-train").sample(rest, n_train)
    splits = {"train": train, "dev": dev, "test": test}
    splits = {name: sorted(split, key=lambda s: order[s.id]) for name, split in splits.items()}
    if n_unpaired:
        taken = {s.text for split in splits.values() for s in split} | set(unpaired_exclude)
        splits["unpaired"] = unpaired_verses(every or [], set(keys), taken, n_unpaired, seed)
    return splits


def _chapter(s: Sentence) -> tuple[str, int]:
    return s.custom["book"], s.custom["chapter"]


def unpaired_verses(every: list[Sentence], train_chapters: set[tuple[str, int]], taken: Collection[str],
                    n: int, seed: int = 0) -> list[Sentence]:
    """`n` verses of `every` (all lengths, Bible order) as unpaired text: only from `train_chapters`, none
    whose text is in `taken` (the splits' texts, and whatever else must stay unseen) or in a verse outside
    those chapters (a held-out chapter's verse, spoken or not, stays unseen in any chapter), each text once.
    The order is a shuffle seeded by `seed` of every such verse, with `taken`'s removed only then, so a
    larger `n` extends a smaller one's list and a larger train set only takes its verses out."""
    unseen = {s.text for s in every if _chapter(s) not in train_chapters}
    seen: set[str] = set()
    candidates = []
    for s in every:
        if _chapter(s) in train_chapters and s.text not in unseen and s.text not in seen:
            seen.add(s.text)
            candidates.append(s)
    random.Random(f"{seed}-unpaired").shuffle(candidates)
    taken = set(taken)
    left = [s for s in candidates if s.text not in taken]
    if n > len(left):
        raise UserError(f"bible: prepare.n_unpaired={n}, but only {len(left)} verses are available (of any length, "
                        f"from the chapters train draws from, in no split, and no sentence of a held-out chapter or "
                        f"of the held-out domain)")
    return left[:n]
