"""Corpus importers on tiny fixtures written here: layouts, schema, relative paths, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from dmlm.data.importers import (
    import_coco,
    import_common_voice,
    import_covost2,
    import_librispeech,
    import_tsv,
    split_from_name,
)
from dmlm.data.manifest import ManifestError, read_manifest

SR = 16_000


def write_audio(path: Path, seconds: float) -> Path:
    """A short tone; the format follows the extension (.wav, .flac, .mp3)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(SR * seconds)) / SR
    sf.write(str(path), 0.1 * np.sin(2 * np.pi * 440 * t), SR)
    return path


def write_text(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def check_paths_resolve(manifest: Path) -> None:
    for r in read_manifest(manifest):
        if r.audio is not None:
            assert not Path(r.audio).is_absolute()
            assert r.audio_path(manifest).is_file()
        if r.image is not None:
            assert not Path(r.image).is_absolute()
            assert r.image_path(manifest).is_file()


@pytest.mark.parametrize(
    ("name", "split"),
    [
        ("train-clean-100", "train"),
        ("dev-other", "dev"),
        ("test", "test"),
        ("captions_val2017", "dev"),
        ("captions_train2017", "train"),
        ("validated", None),
        ("covost_v2.en_es", None),
    ],
)
def test_split_from_name(name, split):
    assert split_from_name(name) == split


# ---------------------------------------------------------------------------------------------
# LibriSpeech


def librispeech(root: Path) -> Path:
    ls = root / "LibriSpeech"
    chapter = ls / "dev-clean" / "84" / "121123"
    write_text(
        chapter / "84-121123.trans.txt", "84-121123-0000 GO DO YOU HEAR\n84-121123-0001 BUT IN LESS THAN FIVE MINUTES\n"
    )
    write_audio(chapter / "84-121123-0000.flac", 0.5)
    write_audio(chapter / "84-121123-0001.flac", 0.75)
    chapter = ls / "train-clean-100" / "19" / "198"
    write_text(chapter / "19-198.trans.txt", "19-198-0001 NORTHANGER ABBEY\n")
    write_audio(chapter / "19-198-0001.flac", 0.25)
    return ls


def test_librispeech(tmp_path):
    root = librispeech(tmp_path / "corpora")
    out = tmp_path / "manifests" / "ls.jsonl"
    assert import_librispeech(root, out) == 3
    records = {r.id: r for r in read_manifest(out)}
    r = records["84-121123-0001"]
    assert r.text == "but in less than five minutes"
    assert (r.split, r.lang, r.speaker) == ("dev", "en", "84")
    assert r.duration == pytest.approx(0.75, abs=1e-3)
    assert r.audio == "../corpora/LibriSpeech/dev-clean/84/121123/84-121123-0001.flac"
    assert r.custom == {"subset": "dev-clean", "chapter": "121123"}
    assert records["19-198-0001"].split == "train"
    check_paths_resolve(out)


def test_librispeech_subsets_split_and_subset_root(tmp_path):
    root = librispeech(tmp_path)
    out = tmp_path / "ls.jsonl"
    assert import_librispeech(root, out, split="test", subsets=["train-clean-100"]) == 1
    (r,) = read_manifest(out)
    assert (r.id, r.split) == ("19-198-0001", "test")
    assert import_librispeech(root / "dev-clean", out) == 2  # a subset folder as root
    with pytest.raises(ManifestError, match="not found"):
        import_librispeech(root, out, subsets=["train-other-500"])


def test_librispeech_errors(tmp_path):
    root = librispeech(tmp_path)
    (root / "dev-clean/84/121123/84-121123-0001.flac").unlink()
    with pytest.raises(ManifestError, match=r"84-121123\.trans\.txt:2: audio file not found"):
        import_librispeech(root, tmp_path / "ls.jsonl")
    write_text(root / "dev-clean/84/121123/84-121123.trans.txt", "84-121123-0000 GO DO YOU HEAR\n84-121123-0001\n")
    with pytest.raises(ManifestError, match=r"trans\.txt:2: empty transcript"):
        import_librispeech(root, tmp_path / "ls.jsonl")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ManifestError, match="no <speaker>"):
        import_librispeech(empty, tmp_path / "ls.jsonl")
    assert not (tmp_path / "ls.jsonl").exists()  # nothing half-written


# ---------------------------------------------------------------------------------------------
# Common Voice and CoVoST 2

CV_HEADER = "client_id\tpath\tsentence\tup_votes\tdown_votes\tage\tgender\taccents\tlocale\tsegment\n"


def common_voice(root: Path) -> Path:
    cv = root / "cv-corpus" / "en"
    write_audio(cv / "clips" / "common_voice_en_1.mp3", 1.0)
    write_audio(cv / "clips" / "common_voice_en_2.wav", 0.5)
    write_audio(cv / "clips" / "common_voice_en_3.wav", 0.5)
    write_text(
        cv / "train.tsv",
        CV_HEADER
        + 'abc123\tcommon_voice_en_1.mp3\tHe said "hello" to me.\t2\t0\ttwenties\tmale\t\ten\t\n'
        + "def456\tcommon_voice_en_2.wav\tIt's fine.\t3\t1\t\t\t\ten\t\n",
    )
    return cv


def test_common_voice(tmp_path):
    cv = common_voice(tmp_path)
    out = tmp_path / "cv.jsonl"
    assert import_common_voice(cv / "train.tsv", cv / "clips", out) == 2
    first, second = read_manifest(out)
    assert first.id == "common_voice_en_1"
    assert first.text == 'He said "hello" to me.'  # quotes are text, not TSV quoting
    assert (first.split, first.lang, first.speaker) == ("train", "en", "abc123")
    assert first.duration == pytest.approx(1.0, abs=0.1)  # mp3 read through libsndfile
    assert first.custom == {"up_votes": "2", "down_votes": "0", "age": "twenties", "gender": "male"}
    assert second.audio == "cv-corpus/en/clips/common_voice_en_2.wav"
    check_paths_resolve(out)


def test_common_voice_lang_from_clip_names_and_no_split_for_validated(tmp_path):
    cv = tmp_path / "cv"
    write_audio(cv / "clips" / "common_voice_es_7.wav", 0.25)
    write_text(cv / "validated.tsv", "client_id\tpath\tsentence\nx\tcommon_voice_es_7.wav\tHola.\n")
    out = tmp_path / "cv.jsonl"
    assert import_common_voice(cv / "validated.tsv", cv / "clips", out) == 1
    (r,) = read_manifest(out)
    assert (r.lang, r.split) == ("es", None)


def test_common_voice_errors(tmp_path):
    cv = common_voice(tmp_path)
    out = tmp_path / "cv.jsonl"
    write_text(cv / "bad.tsv", "client_id\tpath\ttext\nx\tcommon_voice_en_2.wav\tHi\n")
    with pytest.raises(ManifestError, match=r"bad\.tsv:1: missing column\(s\) \['sentence'\]"):
        import_common_voice(cv / "bad.tsv", cv / "clips", out)
    write_text(
        cv / "bad.tsv", "client_id\tpath\tsentence\nx\tcommon_voice_en_2.wav\tHi\ny\tcommon_voice_en_9.wav\tHo\n"
    )
    with pytest.raises(ManifestError, match=r"bad\.tsv:3: audio file not found"):
        import_common_voice(cv / "bad.tsv", cv / "clips", out)
    write_text(cv / "bad.tsv", "client_id\tpath\tsentence\nx\tcommon_voice_en_2.wav\t  \n")
    with pytest.raises(ManifestError, match=r"bad\.tsv:2: empty 'sentence'"):
        import_common_voice(cv / "bad.tsv", cv / "clips", out)
    write_text(cv / "bad.tsv", "client_id\tpath\tsentence\nx\tcommon_voice_en_2.wav\n")
    with pytest.raises(ManifestError, match=r"bad\.tsv:2: expected 3 tab-separated fields, got 2"):
        import_common_voice(cv / "bad.tsv", cv / "clips", out)
    write_text(cv / "bad.tsv", "client_id\tpath\tsentence\nx\tcommon_voice_en_2.wav\tA\ny\tcommon_voice_en_2.wav\tB\n")
    with pytest.raises(ManifestError, match=r"bad\.tsv:3: duplicate id 'common_voice_en_2'"):
        import_common_voice(cv / "bad.tsv", cv / "clips", out)
    write_text(cv / "clips" / "common_voice_en_5.wav", "not audio")
    write_text(cv / "bad.tsv", "client_id\tpath\tsentence\nx\tcommon_voice_en_5.wav\tA\n")
    with pytest.raises(ManifestError, match=r"bad\.tsv:2: cannot read audio"):
        import_common_voice(cv / "bad.tsv", cv / "clips", out)
    assert not out.exists()


def covost(root: Path, cv: Path) -> Path:
    return write_text(
        root / "covost_v2.en_es.tsv",
        "path\tsentence\ttranslation\tclient_id\tsplit\n"
        'common_voice_en_1.mp3\tHe said "hello" to me.\tMe dijo "hola".\tabc123\ttrain\n'
        "common_voice_en_2.wav\tIt's fine.\tEstá bien.\tdef456\ttrain_covost\n"
        "common_voice_en_3.wav\tGood night.\tBuenas noches.\tghi789\ttest\n",
    )


def test_covost2(tmp_path):
    cv = common_voice(tmp_path)
    tsv = covost(tmp_path / "covost", cv)
    out = tmp_path / "manifests" / "covost.jsonl"
    assert import_covost2(tsv, cv / "clips", out, "es") == 3
    records = {r.id: r for r in read_manifest(out)}
    r = records["common_voice_en_2"]
    assert (r.lang, r.split, r.text, r.speaker) == ("en", "train", "It's fine.", "def456")
    assert r.translations == {"es": "Está bien."}
    assert records["common_voice_en_3"].split == "test"
    check_paths_resolve(out)
    assert import_covost2(tsv, cv / "clips", out, "es", split="train") == 2
    assert {r.split for r in read_manifest(out)} == {"train"}


def test_covost2_joined_on_common_voice_tsv(tmp_path):
    cv = common_voice(tmp_path)
    tsv = write_text(
        tmp_path / "covost_v2.en_es.tsv",
        "path\ttranslation\tsplit\n"
        "common_voice_en_2.wav\tEstá bien.\tdev\n"
        "common_voice_en_99.wav\tNo está.\tdev\n",  # not in train.tsv: skipped, as CoVoST's own join
    )
    out = tmp_path / "covost.jsonl"
    assert import_covost2(tsv, cv / "clips", out, "es", cv_tsv=cv / "train.tsv") == 1
    (r,) = read_manifest(out)
    assert (r.text, r.speaker, r.split, r.translations) == ("It's fine.", "def456", "dev", {"es": "Está bien."})


def test_covost2_errors(tmp_path):
    cv = common_voice(tmp_path)
    tsv = covost(tmp_path, cv)
    out = tmp_path / "covost.jsonl"
    with pytest.raises(ManifestError, match="not tgt_lang='de'"):
        import_covost2(tsv, cv / "clips", out, "de")
    write_text(tsv, "path\tsentence\ttranslation\tsplit\ncommon_voice_en_2.wav\tIt's fine.\t\ttrain\n")
    with pytest.raises(ManifestError, match=r"covost_v2\.en_es\.tsv:2: empty 'translation'"):
        import_covost2(tsv, cv / "clips", out, "es")
    write_text(tsv, "path\tsentence\tsplit\ncommon_voice_en_2.wav\tIt's fine.\ttrain\n")
    with pytest.raises(ManifestError, match=r":1: missing column\(s\) \['translation'\]"):
        import_covost2(tsv, cv / "clips", out, "es")
    assert not out.exists()


# ---------------------------------------------------------------------------------------------
# Generic TSV


def test_tsv(tmp_path):
    data = tmp_path / "data"
    write_audio(data / "wav" / "a.wav", 0.5)
    write_audio(data / "wav" / "b.flac", 0.25)
    tsv = write_text(
        data / "list.tsv",
        "id\taudio\ttext\tlang\tspeaker\tnote\n"
        "utt-a\twav/a.wav\tin the beginning\ten\tspk1\tclean\n"
        "utt-b\twav/b.flac\ten el principio\tes\t\t\n",
    )
    out = tmp_path / "manifests" / "list.jsonl"
    assert import_tsv(tsv, out) == 2
    a, b = read_manifest(out)
    assert (a.id, a.text, a.lang, a.speaker, a.custom) == ("utt-a", "in the beginning", "en", "spk1", {"note": "clean"})
    assert a.audio == "../data/wav/a.wav" and a.duration == pytest.approx(0.5, abs=1e-3)
    assert (b.lang, b.speaker, b.custom) == ("es", None, {})
    check_paths_resolve(out)


def test_tsv_without_lang_column_and_errors(tmp_path):
    write_audio(tmp_path / "a.wav", 0.5)
    tsv = write_text(tmp_path / "l.tsv", "id\taudio\ttext\nu1\ta.wav\thello\n")
    out = tmp_path / "l.jsonl"
    assert import_tsv(tsv, out, split="dev", lang="en") == 1
    (r,) = read_manifest(out)
    assert (r.lang, r.split) == ("en", "dev")

    write_text(tsv, "id\taudio\nu1\ta.wav\n")
    with pytest.raises(ManifestError, match=r"l\.tsv:1: missing column\(s\) \['text'\]"):
        import_tsv(tsv, out)
    write_text(tsv, "id\taudio\ttext\nu1\ta.wav\thello\nu2\tmissing.wav\tbye\n")
    with pytest.raises(ManifestError, match=r"l\.tsv:3: audio file not found"):
        import_tsv(tsv, out)
    write_text(tsv, "id\taudio\ttext\nu1\ta.wav\t\n")
    with pytest.raises(ManifestError, match=r"l\.tsv:2: empty 'text'"):
        import_tsv(tsv, out)
    write_text(tsv, "id\taudio\ttext\nu1\ta.wav\thi\nu1\ta.wav\tho\n")
    with pytest.raises(ManifestError, match=r"l\.tsv:3: duplicate id 'u1'"):
        import_tsv(tsv, out)
    write_text(tsv, "")
    with pytest.raises(ManifestError, match="expected a header"):
        import_tsv(tsv, out)


# ---------------------------------------------------------------------------------------------
# COCO captions


def coco(root: Path, annotations: list[dict] | None = None) -> tuple[Path, Path]:
    images = root / "train2017"
    for name in ("000000000009.jpg", "000000000025.jpg", "000000000030.jpg"):
        write_text(images / name, "jpeg bytes")
    data = {
        "info": {},
        "images": [
            {"id": 9, "file_name": "000000000009.jpg", "width": 640, "height": 480},
            {"id": 25, "file_name": "000000000025.jpg", "width": 640, "height": 426},
            {"id": 30, "file_name": "000000000030.jpg", "width": 640, "height": 428},
        ],
        "annotations": annotations
        if annotations is not None
        else [
            {"image_id": 9, "id": 1, "caption": "A plate of food."},
            {"image_id": 25, "id": 2, "caption": "A giraffe eating leaves."},
            {"image_id": 9, "id": 3, "caption": "Some vegetables on a plate."},
            {"image_id": 9, "id": 4, "caption": "A meal in a bowl."},
        ],
    }
    captions = write_text(root / "annotations" / "captions_train2017.json", json.dumps(data))
    return captions, images


def test_coco(tmp_path):
    captions, images = coco(tmp_path / "coco")
    out = tmp_path / "coco.jsonl"
    assert import_coco(captions, images, out) == 2  # image 30 has no caption
    first, second = read_manifest(out)
    assert (first.id, first.split, first.lang) == ("coco-9", "train", "en")
    assert first.caption == "A plate of food."
    assert first.custom == {"coco_id": 9, "captions": ["Some vegetables on a plate.", "A meal in a bowl."]}
    assert first.image == "coco/train2017/000000000009.jpg"
    assert first.audio is None and first.text is None
    assert (second.caption, second.custom["captions"]) == ("A giraffe eating leaves.", [])
    check_paths_resolve(out)
    assert import_coco(captions, images, out, split="dev") == 2
    assert {r.split for r in read_manifest(out)} == {"dev"}


def test_coco_errors(tmp_path):
    out = tmp_path / "coco.jsonl"
    captions, images = coco(tmp_path, [{"image_id": 77, "id": 1, "caption": "Nothing."}])
    with pytest.raises(ManifestError, match=r"annotations\[0\]: image_id 77 is not among the images"):
        import_coco(captions, images, out)
    captions, images = coco(
        tmp_path, [{"image_id": 9, "id": 1, "caption": "Fine."}, {"image_id": 25, "id": 2, "caption": " "}]
    )
    with pytest.raises(ManifestError, match=r"captions_train2017\.json: annotations\[1\]: empty 'caption'"):
        import_coco(captions, images, out)
    captions, images = coco(tmp_path)
    (images / "000000000025.jpg").unlink()
    with pytest.raises(ManifestError, match=r"images\[1\]: image file not found"):
        import_coco(captions, images, out)
    write_text(captions, json.dumps({"images": []}))
    with pytest.raises(ManifestError, match="missing the 'annotations' list"):
        import_coco(captions, images, out)
    write_text(captions, "{not json")
    with pytest.raises(ManifestError, match=r"captions_train2017\.json:1: not valid JSON"):
        import_coco(captions, images, out)
    assert not out.exists()
