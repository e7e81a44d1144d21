"""Image I/O (errors, conversions with warnings, atomic writes) and the digits image corpus."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from PIL import Image

from dmlm.util.images import ImageError, load_image, save_image


def _rgb(size=64, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def test_round_trip_is_lossless_and_quiet(tmp_path, caplog):
    x = _rgb()
    path = save_image(tmp_path / "a" / "x.png", x)
    with caplog.at_level(logging.WARNING):
        y = load_image(path)
    assert y.dtype == np.uint8 and y.shape == (64, 64, 3)
    np.testing.assert_array_equal(x, y)
    assert not caplog.records
    assert [p.name for p in path.parent.iterdir()] == ["x.png"]  # no temp file left behind


def test_missing_file_and_non_images_name_the_file(tmp_path):
    with pytest.raises(ImageError, match="missing.png: image file not found"):
        load_image(tmp_path / "missing.png")
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(ImageError, match="notes.png: not a readable image"):
        load_image(text)
    truncated = tmp_path / "cut.png"
    save_image(truncated, _rgb())
    truncated.write_bytes(truncated.read_bytes()[:200])
    with pytest.raises(ImageError, match="cut.png"):
        load_image(truncated)
    with pytest.raises(ImageError, match="not found"):
        load_image(tmp_path)  # a folder is not an image file


@pytest.mark.parametrize("mode,what", [("L", "mode L, converting to RGB"), ("P", "mode P, converting to RGB"),
                                       ("RGBA", "alpha channel, compositing on white")])
def test_other_modes_are_converted_with_a_warning(tmp_path, caplog, mode, what):
    img = Image.fromarray(_rgb()).convert(mode)
    path = tmp_path / f"{mode}.png"
    img.save(path)
    with caplog.at_level(logging.WARNING, logger="dmlm.util.images"):
        y = load_image(path)
    assert y.shape == (64, 64, 3) and y.dtype == np.uint8
    assert what in caplog.text and str(path) in caplog.text


def test_alpha_is_composited_on_white(tmp_path):
    rgba = np.zeros((64, 64, 4), np.uint8)
    rgba[..., 0] = 255  # red ...
    rgba[:, 32:, 3] = 255  # ... opaque on the right half only
    path = save_image(tmp_path / "a.png", rgba)
    y = load_image(path)
    np.testing.assert_array_equal(y[:, :32], 255)  # transparent -> white
    assert (y[:, 32:] == [255, 0, 0]).all()


def test_other_sizes_are_centre_cropped_and_resized_with_a_warning(tmp_path, caplog):
    wide = np.zeros((40, 80, 3), np.uint8)
    wide[:, 20:60] = 200  # the centre square is grey, the margins black
    path = save_image(tmp_path / "wide.png", wide)
    with caplog.at_level(logging.WARNING, logger="dmlm.util.images"):
        y = load_image(path, size=64)
    assert y.shape == (64, 64, 3)
    assert np.abs(y.astype(int) - 200).max() <= 2  # only the centre square survived
    assert "size 80x40, expected 64x64, centre-cropped to 40x40 and resized" in caplog.text
    assert load_image(path, size=None).shape == (40, 80, 3)  # None keeps the file's size


def test_save_rejects_bad_arrays_and_suffixes(tmp_path):
    with pytest.raises(ValueError, match="uint8"):
        save_image(tmp_path / "x.png", np.zeros((8, 8, 3), np.float32))
    with pytest.raises(ValueError, match="suffix"):
        save_image(tmp_path / "x.nope", _rgb())
    assert not list(tmp_path.iterdir())


# ----------------------------------------------------------------------------- digits corpus

def test_digit_splits_are_seeded_disjoint_and_captioned():
    from dmlm.data.digits import NUMBER_WORDS, generate_splits

    a = generate_splits(50, 10, 20, seed=0)
    assert {k: len(v) for k, v in a.items()} == {"train": 50, "dev": 10, "test": 20}
    src = {s: {ex.custom["source_index"] for ex in v} for s, v in a.items()}
    assert not (src["train"] & src["dev"] or src["train"] & src["test"] or src["dev"] & src["test"])
    for ex in a["train"]:
        assert ex.image.shape == (64, 64, 3) and ex.image.dtype == np.uint8
        assert NUMBER_WORDS[ex.custom["label"]] in ex.caption.split()
    assert len({ex.caption.replace(NUMBER_WORDS[ex.custom["label"]], "#") for ex in a["train"]}) > 1  # templates
    b = generate_splits(50, 10, 20, seed=0)
    assert [ex.caption for ex in a["test"]] == [ex.caption for ex in b["test"]]
    np.testing.assert_array_equal(a["dev"][3].image, b["dev"][3].image)
    # held-out sets do not move when train grows
    c = generate_splits(200, 10, 20, seed=0)
    assert [ex.custom["source_index"] for ex in c["test"]] == [ex.custom["source_index"] for ex in a["test"]]
    other = generate_splits(50, 10, 20, seed=1)
    assert [ex.custom["source_index"] for ex in other["test"]] != [ex.custom["source_index"] for ex in a["test"]]
    with pytest.raises(ValueError, match="leaves none for training"):
        generate_splits(10, 1000, 797)


def test_digit_image_is_dark_ink_on_white():
    from dmlm.data.digits import digit_image

    pixels = np.zeros((8, 8))
    pixels[2:6, 3:5] = 16
    img = digit_image(pixels)
    assert img[0, 0].tolist() == [255, 255, 255]  # paper
    assert img[32, 32].max() < 60  # ink
    assert (img[..., 0] == img[..., 1]).all()  # grey, as RGB


def test_prepare_digits_writes_images_and_captions_without_audio(tmp_path):
    from dmlm.data.manifest import read_manifest
    from dmlm.data.prepare import PrepareConfig, prepare

    cfg = PrepareConfig(corpus="digits", n_train=30, n_dev=5, n_test=5, seed=0)
    manifests = prepare(cfg, tmp_path)
    records = {s: read_manifest(p) for s, p in manifests.items()}
    assert {s: len(r) for s, r in records.items()} == {"train": 30, "dev": 5, "test": 5}
    for split, rs in records.items():
        for r in rs:
            assert r.split == split and r.audio is None and r.caption and r.lang == "en"
            assert r.image == f"img/{r.id}.png"
            img = load_image(r.image_path(manifests[split]))
            assert img.shape == (64, 64, 3)
    assert json.loads((tmp_path / "prepare.json").read_text())["corpus"] == "digits"
    # a re-run finds everything done and changes nothing
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "img").iterdir()}
    assert prepare(cfg, tmp_path) == manifests
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "img").iterdir()} == before
    with pytest.raises(ValueError, match="other settings"):
        prepare(PrepareConfig(corpus="digits", n_train=31, n_dev=5, n_test=5), tmp_path)


def test_prepare_rejects_an_unknown_corpus_before_writing(tmp_path):
    from dmlm.data.prepare import PrepareConfig, prepare

    with pytest.raises(ValueError, match="unknown corpus 'nope'.*digits"):
        prepare(PrepareConfig(corpus="nope"), tmp_path / "out")
    assert not (tmp_path / "out" / "prepare.json").exists()
