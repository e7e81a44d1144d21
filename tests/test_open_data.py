"""Open-vocabulary test data: the held-out text domain (extraction, cleaning, `prepare bible n_test_domain=N`,
no sentence shared with train/dev/test) and the Whisper baseline scored like `dmlm evaluate --task asr`.
The real package fetch and the real Whisper-base run carry the `slow` marker."""

from __future__ import annotations

import gzip
import json
import re
import subprocess
from dataclasses import replace

import pytest

from dmlm.data import bible, heldout_domain
from dmlm.data.manifest import HELDOUT_VOICE, Record, is_heldout_voice, read_manifest, write_manifest
from dmlm.data.synth import NEURAL_VOICE
from dmlm.metrics import error_rates
from dmlm.tasks import get_task
from dmlm.util.errors import UserError

# ---------------------------------------------------------------------------------------------
# Extraction and cleaning (entries as dict-devil's devil.dict.dz holds them)

ENTRIES = [
    "ABASEMENT, n.  A decent and customary mental attitude in the presence\nof wealth of power.  Peculiarly "
    "appropriate in an employee when\naddressing an employer.\n",
    "ABDICATION, n.  An act whereby a sovereign attests his sense of the\nhigh temperature of the throne.\n\n"
    "    Poor Isabella's Dead, whose abdication\n    Set all tongues wagging in the Spanish nation.\n"
    "                                                                  G.J.\n",
    "ZIGZAG, v.t.  To move forward uncertainly, from side to side, as one\ncarrying the white man's burden.  "
    "In 1881 Mr. Jape wrote of it.  Father S. J. Jape said so, and nobody laughed at him.\n",
    "CUI BONO?  [Latin]  What good would that do _me_?\n",
    "I is the first letter of the alphabet in most languages.  Its uses are many.\n",
]
_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def _b64(n: int) -> str:
    out = ""
    while True:
        out = _B64[n % 64] + out
        n //= 64
        if not n:
            return out


def _dictd(entries: list[str]) -> tuple[bytes, str]:
    """A dictd database of `entries` (after a header entry), its index in alphabetical, not text, order."""
    header = "00-database-info\nThe original data is available from the author.\n"
    text, spans = header, [("00databaseinfo", 0, len(header))]
    for e in entries:
        spans.append((re.split(r"[,.?]", e)[0].lower(), len(text.encode()), len(e.encode())))
        text += e
    index = "".join(f"{hw}\t{_b64(off)}\t{_b64(n)}\n" for hw, off, n in sorted(spans))
    return gzip.compress(text.encode()), index


def test_entry_sentences_cut_the_headword_and_drop_verse():
    assert heldout_domain.entry_sentences(ENTRIES[1]) == [
        "An act whereby a sovereign attests his sense of the high temperature of the throne."]
    assert heldout_domain.entry_sentences(ENTRIES[3]) == ["What good would that do _me_?"]
    assert heldout_domain.entry_sentences(ENTRIES[4])[0].startswith("I is the first letter")  # no headword to cut


def test_split_sentences_keeps_abbreviations_and_initials():
    para = "In 1881 Mr. Jape wrote of it. Father S. J. Jape said so, and nobody laughed! Why? \"No.\" Then it ended."
    assert heldout_domain.split_sentences(para) == [
        "In 1881 Mr. Jape wrote of it.", "Father S. J. Jape said so, and nobody laughed!", "Why?", "\"No.\"",
        "Then it ended."]


def test_extract_reads_the_index_cleans_like_the_bible_and_skips_digits():
    rows = heldout_domain.extract(*_dictd(ENTRIES))
    assert [r["entry"] for r in rows][:3] == ["abasement", "abasement", "abdication"]  # text order, header skipped
    assert rows[0] == {"id": "devil-abasement-1", "entry": "abasement",
                       "text": "a decent and customary mental attitude in the presence of wealth of power",
                       "original": "A decent and customary mental attitude in the presence of wealth of power."}
    texts = [r["text"] for r in rows]
    assert "carrying the white man's burden" in texts[3] and "to move forward uncertainly" in texts[3]
    assert not any("1881" in r["original"] for r in rows)  # a sentence with digits has no single spoken form
    assert "father s j jape said so and nobody laughed at him" in texts
    assert "what good would that do me" in texts
    for r in rows:
        assert r["text"] == bible.clean_english(r["original"]) and re.fullmatch(r"[a-z' ]+", r["text"])
    assert len({r["id"] for r in rows}) == len(rows)


def _pool(texts: list[str]) -> list:
    return [heldout_domain.to_sentence({"id": f"devil-x-{i}", "entry": "x", "text": t, "original": t})
            for i, t in enumerate(texts)]


def test_sentences_keep_four_to_max_words_once_each():
    pool = _pool(["too short here", "four words are enough", "four words are enough", " ".join(["long"] * 21),
                  "a sentence of exactly six words"])
    assert [s.text for s in heldout_domain.sentences(20, pool)] == ["four words are enough",
                                                                    "a sentence of exactly six words"]
    assert [s.text for s in heldout_domain.sentences(5, pool)] == ["four words are enough"]
    with pytest.raises(UserError, match="max_words"):
        heldout_domain.sentences(3, pool)


def test_draw_excludes_the_corpus_is_seeded_and_grows_by_extension():
    pool = _pool([f"sentence number {w} of the domain" for w in "abcdefghijklmnop"])
    taken = {pool[0].text, pool[5].text}
    five = heldout_domain.draw(5, seed=1, exclude=taken, pool=pool)
    ten = heldout_domain.draw(10, seed=1, exclude=taken, pool=pool)
    assert [s.id for s in ten[:5]] == [s.id for s in five]
    assert not {s.text for s in ten} & taken
    assert [s.id for s in heldout_domain.draw(10, seed=2, exclude=taken, pool=pool)] != [s.id for s in ten]
    assert len(heldout_domain.draw(14, exclude=taken, pool=pool)) == 14
    with pytest.raises(UserError, match="15 sentences asked for, 14"):
        heldout_domain.draw(15, exclude=taken, pool=pool)


def test_the_cache_is_written_once_atomically(tmp_path, monkeypatch):
    monkeypatch.setenv("DMLM_CACHE", str(tmp_path))
    calls = []
    monkeypatch.setattr(heldout_domain, "source_files", lambda: calls.append(1) or _dictd(ENTRIES))
    first = heldout_domain.sentences()
    assert [s.id for s in heldout_domain.sentences()] == [s.id for s in first] and len(calls) == 1
    assert heldout_domain.cache_path().parent == tmp_path and "-v1-devil" in heldout_domain.cache_path().name
    assert not list(tmp_path.glob(".*.tmp"))


def test_a_failed_apt_get_download_is_reported(monkeypatch):
    monkeypatch.setattr(heldout_domain, "_installed", lambda: None)
    monkeypatch.setattr(heldout_domain.shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(heldout_domain.os, "geteuid", lambda: 0)
    calls = []

    def fake_run(cmd, **kwargs):
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 100, "", "E: Can't select candidate version from package dict-devil")

    monkeypatch.setattr(heldout_domain.subprocess, "run", fake_run)
    with pytest.raises(heldout_domain.HeldoutDomainError, match="(?s)apt-get download dict-devil.*candidate"):
        heldout_domain.source_files()
    assert ["apt-get", "update"] in calls  # retried once after refreshing the package lists


@pytest.mark.slow
def test_the_real_devils_dictionary(tmp_path, monkeypatch):
    """Fetches dict-devil with `apt-get download` (or reads an installed copy): 1,251 sentences of 4..20 words."""
    monkeypatch.setenv("DMLM_CACHE", str(tmp_path))
    found = heldout_domain.sentences(20)
    assert len(found) > 1000
    assert all(re.fullmatch(r"[a-z' ]+", s.text) and 4 <= len(s.text.split()) <= 20 for s in found)
    assert any(s.text.startswith("a decent and customary mental attitude") for s in found)


# ---------------------------------------------------------------------------------------------
# prepare bible n_test_domain=N

_NUMBERS = "one two three four five six seven eight nine ten".split()


def _bible_rows() -> list[dict]:
    rows = []
    for book in ("Gen", "Exod", "Matt"):
        for c in range(1, 7):
            for v in range(1, 5):
                text = f"{book.lower()} says chapter {_NUMBERS[c]} verse {_NUMBERS[v]} here"
                rows.append({"book": book, "chapter": c, "verse": v, "text": text, "en": text, "es": f"v {c}:{v}"})
    rows.append({**rows[0], "chapter": 6, "verse": 9})  # Gen 1:1's text again, in another chapter
    return rows


@pytest.fixture
def small_bible(tmp_path, monkeypatch):
    """A fake bible cache (72 verses) and a prepared corpus: 12 train, 4 dev, 4 test (each also in the held-out voice)."""
    from dmlm.data.prepare import PrepareConfig, prepare

    monkeypatch.setenv("DMLM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(bible, "extract", _bible_rows)
    cfg = PrepareConfig(corpus="bible", n_train=12, n_dev=4, n_test=4, seed=3, workers=1)
    out = tmp_path / "data"
    manifests = prepare(cfg, out)
    return cfg, out, manifests


def test_prepare_writes_a_held_out_domain_that_shares_no_sentence(small_bible, monkeypatch):
    from dmlm.data.prepare import prepare

    cfg, out, manifests = small_bible
    splits = {k: read_manifest(p) for k, p in manifests.items()}
    texts = {k: {r.text for r in rs} for k, rs in splits.items()}
    # the held-out chapters never share a sentence with training (the repeated verse is kept once)
    assert not texts["train"] & texts["test"] and not texts["train"] & texts["dev"] and not texts["dev"] & texts["test"]
    assert not {(r.custom["book"], r.custom["chapter"]) for r in splits["train"]} & {
        (r.custom["book"], r.custom["chapter"]) for r in splits["test"] + splits["dev"]}

    # the domain: six sentences of its own, and three that are sentences of train, dev and test
    taken = [splits["train"][0].text, splits["dev"][0].text, splits["test"][0].text]
    own = [f"a plain sentence of the other domain number {w}" for w in _NUMBERS[:6]]
    domain_rows = [{"id": f"devil-t-{i}", "entry": "t", "text": t, "original": t} for i, t in enumerate(taken + own)]
    monkeypatch.setattr(heldout_domain, "extract", lambda: domain_rows)
    before = {k: p.read_bytes() for k, p in manifests.items()}
    more = prepare(replace(cfg, n_test_domain=6), out)  # added to a prepared folder: a re-run may add it
    assert {k: p.read_bytes() for k, p in manifests.items()} == before  # the splits are untouched

    records = read_manifest(more["test_domain"])
    assert len(records) == 12 and {r.text for r in records} == set(own)  # every overlap dropped
    seen, held = records[:6], records[6:]
    assert not any(is_heldout_voice(r) for r in seen) and all(is_heldout_voice(r) for r in held)
    assert [r.id for r in held] == [f"{r.id}-hv" for r in seen]
    assert {r.speaker for r in held} == {"en-gb+f4"} and "en-gb+f4" not in {r.speaker for r in seen}
    assert all(r.split == "test" and r.custom["domain"] == "devil" and r.duration > 0 and not r.translations
               and r.audio_path(more["test_domain"]).is_file() for r in records)
    assert prepare(replace(cfg, n_test_domain=6), out)["test_domain"] == more["test_domain"]  # resumes
    with pytest.raises(UserError, match="7 sentences asked for, 6"):
        prepare(replace(cfg, n_test_domain=7), out)


def test_prepare_writes_bible_unpaired_text_from_train_chapters_only(small_bible, monkeypatch):
    from dmlm.data.prepare import prepare

    cfg, out, manifests = small_bible
    splits = {k: read_manifest(p) for k, p in manifests.items()}
    before = {k: p.read_bytes() for k, p in manifests.items()}
    more = prepare(replace(cfg, n_unpaired=20), out)  # added to a prepared folder: a re-run may add it
    assert {k: p.read_bytes() for k, p in manifests.items()} == before  # the splits are untouched
    unpaired = read_manifest(more["unpaired"])
    assert len(unpaired) == 20 and all(r.audio is None and r.text and r.translations["es"] and r.custom["unpaired"]
                                       for r in unpaired)

    def chapter(r):  # "bible-Gen-3-2": Genesis 3
        return tuple(r.id.split("-")[1:3])

    held = {chapter(r) for r in splits["dev"] + splits["test"]}
    assert not {chapter(r) for r in unpaired} & held  # never a dev or test chapter
    texts = {r.text for r in unpaired}
    assert len(texts) == 20 and not texts & {r.text for rs in splits.values() for r in rs}

    # the held-out domain: three of its sentences are unpaired verses, so unpaired.jsonl loses them
    shared = [r.text for r in unpaired[:3]]
    own = [f"a plain sentence of the other domain number {w}" for w in _NUMBERS[:6]]
    domain_rows = [{"id": f"devil-t-{i}", "entry": "t", "text": t, "original": t} for i, t in enumerate(shared + own)]
    monkeypatch.setattr(heldout_domain, "extract", lambda: domain_rows)
    both = prepare(replace(cfg, n_unpaired=20, n_test_domain=8), out)
    again = read_manifest(both["unpaired"])
    domain = {r.text for r in read_manifest(both["test_domain"])}
    assert len(again) == 20 and not {r.text for r in again} & (set(shared) | domain)
    assert [r.id for r in again][:17] == [r.id for r in unpaired[3:]]  # the others keep their order
    assert {k: p.read_bytes() for k, p in manifests.items()} == before
    stamp = both["unpaired"].stat().st_mtime_ns
    assert prepare(replace(cfg, n_unpaired=20, n_test_domain=8), out)["unpaired"].stat().st_mtime_ns == stamp
    # 72 distinct texts, less 2 held-out chapters of 4 verses, the 12 of train and the 3 of the domain
    with pytest.raises(UserError, match=r"prepare\.n_unpaired=500, but only 49 verses are available"):
        prepare(replace(cfg, n_unpaired=500, n_test_domain=8), out)
    with pytest.raises(UserError, match="prepare.n_unpaired_speech"):  # bible's unpaired data is text only
        prepare(replace(cfg, n_unpaired=20, n_unpaired_speech=2), out)


def test_n_test_domain_is_bible_only_and_not_negative(small_bible):
    from dmlm.data.prepare import PrepareConfig, check_settings, prepare

    cfg, out, manifests = small_bible
    assert set(manifests) == {"train", "dev", "test"}  # the default writes nothing new
    check_settings(PrepareConfig(corpus="bible", n_test_domain=5))
    for bad in (PrepareConfig(corpus="mini-world", n_test_domain=5), PrepareConfig(corpus="bible", n_test_domain=-1)):
        with pytest.raises(UserError, match="prepare.n_test_domain"):
            check_settings(bad)
    with pytest.raises(UserError, match="prepare.n_test_domain"):
        prepare(replace(cfg, n_test_domain=-2), out)


# ---------------------------------------------------------------------------------------------
# Whisper beside the DMLM


class _Echo:
    """A judge that hears every clip as its reference, except the ones in `wrong` (one word off)."""

    model_name, engine = "fake-whisper", "fake"

    def __init__(self, texts: list[str], wrong: set[int]):
        self.out = [t if i not in wrong else t.rsplit(" ", 1)[0] + " wrong" for i, t in enumerate(texts)]
        self.calls = 0

    def transcribe(self, wavs):
        got = self.out[self.calls : self.calls + len(wavs)]
        self.calls += len(wavs)
        return got


def _voices_manifest(corpus, tmp_path):
    """Six training records of the toy corpus: two in training voices, two in the neural voice, two in the
    held-out voice."""
    records = []
    for i, r in enumerate(read_manifest(corpus.train)[:6]):
        speaker = (r.speaker, NEURAL_VOICE, "en-gb+f4")[i // 2]
        records.append(Record(id=r.id, split="test", lang="en", audio=str(r.audio_path(corpus.train)), text=r.text,
                              speaker=speaker, custom={HELDOUT_VOICE: i >= 4}))
    path = tmp_path / "voices.jsonl"
    write_manifest(path, records)
    return path, records


def test_whisper_baseline_scores_like_the_asr_task_by_voice_group(corpus, tmp_path):
    from dmlm.evaluation.whisper_baseline import evaluate_whisper

    path, records = _voices_manifest(corpus, tmp_path)
    judge = _Echo([r.text for r in records], wrong={1, 4})
    rep = evaluate_whisper(path, judge=judge, out=tmp_path / "whisper.json", progress=False)
    refs, hyps = [r.text for r in records], judge.out
    asr = get_task("asr")
    rows = [{"ref": a, "hyp": b} for a, b in zip(refs, hyps)]
    assert rep["utterances"] == 4 and rep["wer"] == asr.evaluate(rows[:4])["wer"] == pytest.approx(100 / 16)
    assert rep["wer"] == error_rates(refs[:4], hyps[:4])["wer"]  # the ASR task's scoring, dmlm's normalizer
    assert rep[HELDOUT_VOICE]["utterances"] == 2 and rep[f"wer_{HELDOUT_VOICE}"] == asr.evaluate(rows[4:])["wer"]
    assert rep["neural_voice"]["utterances"] == 2 and rep["neural_voice"]["wer"] == 0.0
    assert rep["ci95"][0] <= rep["wer"] <= rep["ci95"][1] and "wer" in rep["whisper_english"]
    assert rep["system"] == "fake-whisper" and rep["decoding"]["strategy"] == "greedy"
    saved = [json.loads(x) for x in (tmp_path / "whisper.hyps.jsonl").read_text().splitlines()]
    assert [(r["id"], r["ref"], r["hyp"], r[HELDOUT_VOICE]) for r in saved] == [
        (r.id, r.text, h, i >= 4) for i, (r, h) in enumerate(zip(records, hyps))]
    assert json.loads((tmp_path / "whisper.json").read_text())["wer"] == rep["wer"]


def test_whisper_baseline_limit_takes_each_voice_group(corpus, tmp_path):
    from dmlm.evaluation.grouping import limit_per_group
    from dmlm.evaluation.whisper_baseline import evaluate_whisper, scored_records

    path, records = _voices_manifest(corpus, tmp_path)
    assert [r.id for r in scored_records(path, 1)] == [r.id for r in limit_per_group(records, 1)]
    rep = evaluate_whisper(path, judge=_Echo([records[i].text for i in (0, 4)], set()), limit=1, progress=False)
    assert rep["utterances"] == 1 and rep[HELDOUT_VOICE]["utterances"] == 1
    with pytest.raises(UserError, match="limit"):
        evaluate_whisper(path, judge=_Echo([], set()), limit=-1)
    write_manifest(tmp_path / "es.jsonl", [replace(records[0], lang="es"), records[1]])
    with pytest.raises(UserError, match="no record with audio in language 'de'"):
        evaluate_whisper(tmp_path / "es.jsonl", judge=_Echo([], set()), language="de")
    # another language: only its recordings, scored against their own text, no English normalizer
    es = evaluate_whisper(tmp_path / "es.jsonl", judge=_Echo([records[0].text], set()), language="es", progress=False)
    assert es["utterances"] == 1 and es["wer"] == 0.0 and es["task"] == "asr:es" and "whisper_english" not in es


def test_evaluate_whisper_verb(corpus, tmp_path, monkeypatch, capsys):
    from dmlm.cli import main
    from dmlm.evaluation import whisper_baseline

    path, records = _voices_manifest(corpus, tmp_path)
    monkeypatch.setattr(whisper_baseline, "WhisperJudge",
                        lambda model, language: _Echo([r.text for r in records], set()))
    assert main(["evaluate-whisper", str(path), "--out", str(tmp_path / "w.json")]) == 0
    out = capsys.readouterr().out
    assert json.loads(out.splitlines()[0])["wer"] == 0.0 and (tmp_path / "w.hyps.jsonl").is_file()


@pytest.mark.slow
def test_whisper_base_on_two_clips(corpus, tmp_path):
    """The real Whisper-base (CTranslate2 preset) on two toy clips, training voice and held-out group."""
    from dmlm.evaluation.whisper_baseline import evaluate_whisper

    recs = read_manifest(corpus.train)[:2]
    path = tmp_path / "two.jsonl"
    write_manifest(path, [replace(r, audio=str(r.audio_path(corpus.train)), custom={HELDOUT_VOICE: i == 1})
                          for i, r in enumerate(recs)])
    rep = evaluate_whisper(path, out=tmp_path / "w.json", progress=False)
    rows = [json.loads(x) for x in (tmp_path / "w.hyps.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == [r.id for r in recs] and all(r["hyp"] for r in rows)
    assert rep["utterances"] == 1 and rep[HELDOUT_VOICE]["utterances"] == 1
    assert rep["wer"] == error_rates([rows[0]["ref"]], [rows[0]["hyp"]])["wer"]
    assert rep["system"] == "whisper-base" and rep["decoding"]["engine"] == "ctranslate2"
