"""Image codebook: fit, encode/decode round trip, fingerprints, persistence, the speech/image
modality guard, external codes, and image token stores."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import save_file

from dmlm.data.miniworld import sample_scene
from dmlm.data.scenes import draw_scene, is_visual
from dmlm.tokenizers.image import ImageCodebook, ImageCodebookSettings, fit_image_codebook, read_external_codes
from dmlm.tokenizers.speech import Codebook, CodebookMismatch


def _scenes(n: int, seed: int) -> list[np.ndarray]:
    rng = random.Random(seed)
    out = []
    while len(out) < n:
        s = sample_scene(rng)
        if is_visual(s):
            out.append(np.asarray(draw_scene(s)))
    return out


@pytest.fixture(scope="module")
def images():
    return _scenes(48, seed=0)


@pytest.fixture(scope="module")
def held_out():
    return _scenes(12, seed=1)


@pytest.fixture(scope="module")
def settings():
    return ImageCodebookSettings(k=64, patch=8, seed=0)


@pytest.fixture(scope="module")
def codebook(images, settings):
    return fit_image_codebook(images, settings)


def test_defaults_suit_64px_scenes():
    s = ImageCodebookSettings()
    assert (s.backend, s.image_size, s.patch, s.codes_per_image) == ("patch-kmeans", 64, 8, 64)
    with pytest.raises(ValueError, match="multiple of patch"):
        ImageCodebookSettings(patch=7)
    with pytest.raises(ValueError, match="backend"):
        ImageCodebookSettings(backend="vqgan")
    with pytest.raises(ValueError, match="needs the name"):
        ImageCodebookSettings(backend="external")


def test_fit_is_deterministic_and_codes_are_in_range(codebook, images, held_out, settings):
    again = fit_image_codebook(images, ImageCodebookSettings(**settings.__dict__))
    np.testing.assert_array_equal(again.centroids, codebook.centroids)
    assert again.fingerprint == codebook.fingerprint
    assert codebook.modality == "image" and codebook.vocab_size == codebook.k == 64
    batched = codebook.encode_batch(held_out)
    assert batched == [codebook.encode(x) for x in held_out]
    for codes in batched:
        assert len(codes) == 64 and all(isinstance(c, int) and 0 <= c < 64 for c in codes)
    assert codebook.encode_batch([]) == []
    other = fit_image_codebook(images, ImageCodebookSettings(k=64, patch=8, seed=1))
    assert other.fingerprint != codebook.fingerprint


def test_decode_of_encode_is_close(codebook, held_out):
    x = np.stack(held_out).astype(float)
    rec = np.stack([codebook.decode(codebook.encode(im)) for im in held_out]).astype(float)
    assert rec.shape == x.shape
    mse = ((rec - x) ** 2).mean()
    flat = ((x - x.mean(axis=(1, 2), keepdims=True)) ** 2).mean()  # each image's mean colour
    assert mse < 0.35 * flat
    assert 10 * np.log10(255**2 / mse) > 18  # dB, with only 64 codes fitted on 48 scenes
    # the tiled centroids are the codebook's own view: encoding them gives the same codes back
    codes = codebook.encode(held_out[0])
    assert codebook.encode(codebook.decode(codes)) == codes


def test_patches_are_row_major():
    s = ImageCodebookSettings(k=4, patch=2, image_size=4)
    centroids = np.zeros((4, 12), np.float32)
    for i in range(4):
        centroids[i] = i / 3  # code i is a flat patch of grey level i/3
    cb = ImageCodebook(centroids, s)
    img = cb.decode([0, 1, 2, 3])
    assert img[0, 0, 0] == 0 and img[0, 2, 0] == 85 and img[2, 0, 0] == 170 and img[3, 3, 0] == 255
    assert cb.encode(img) == [0, 1, 2, 3]


def test_bad_input_is_refused(codebook):
    with pytest.raises(ValueError, match="image shape"):
        codebook.encode(np.zeros((32, 32, 3), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        codebook.encode(np.zeros((64, 64, 3), np.float32))
    with pytest.raises(ValueError, match=r"in \[0, 64\)"):
        codebook.decode([64] * 64)
    with pytest.raises(ValueError, match="expected 64 codes"):
        codebook.decode([0] * 10)
    with pytest.raises(ValueError, match="centroids must be"):
        ImageCodebook(np.zeros((3, 192), np.float32), ImageCodebookSettings(k=4))
    with pytest.raises(ValueError, match="only 64 patches"):
        fit_image_codebook([np.zeros((64, 64, 3), np.uint8)], ImageCodebookSettings(k=128))


def test_save_load_keeps_fingerprint_and_codes(codebook, held_out, tmp_path):
    path = codebook.save(tmp_path / "img.safetensors")
    back = ImageCodebook.load(path)
    assert back.fingerprint == codebook.fingerprint and back.settings == codebook.settings
    assert back.encode_batch(held_out) == codebook.encode_batch(held_out)
    with safe_open(str(path), "np") as f:
        meta = f.metadata()
    assert meta["modality"] == "image" and meta["fingerprint"] == codebook.fingerprint
    # the fingerprint follows the centroids and the code-changing settings, not fit-time knobs
    moved = codebook.centroids.copy()
    moved[0, 0] += 1e-3
    assert ImageCodebook(moved, codebook.settings).fingerprint != codebook.fingerprint
    knob = ImageCodebookSettings(**{**codebook.settings.__dict__, "max_patches": 7})
    assert ImageCodebook(codebook.centroids, knob).fingerprint == codebook.fingerprint
    # a tampered file is refused
    save_file({"centroids": moved}, str(tmp_path / "bad.safetensors"), metadata=meta)
    with pytest.raises(CodebookMismatch, match="fingerprint"):
        ImageCodebook.load(tmp_path / "bad.safetensors")
    with pytest.raises(FileNotFoundError):
        ImageCodebook.load(tmp_path / "missing.safetensors")
    (tmp_path / "junk.safetensors").write_text("junk")
    with pytest.raises(ValueError, match="junk.safetensors"):
        ImageCodebook.load(tmp_path / "junk.safetensors")


def test_check_names_the_store(codebook):
    codebook.check(codebook.fingerprint, "x")
    codebook.check(None, "legacy")
    with pytest.raises(CodebookMismatch, match="store y was made with image codebook 0123456789abcdef"):
        codebook.check("0123456789abcdef", "store y")


def test_speech_and_image_codebooks_refuse_each_others_files(codebook, mel_settings, tmp_path):
    speech = Codebook(np.random.default_rng(0).normal(size=(16, 80)).astype(np.float32), mel_settings())
    speech_path = speech.save(tmp_path / "speech.safetensors")
    image_path = codebook.save(tmp_path / "image.safetensors")
    with pytest.raises(CodebookMismatch, match=r"speech.safetensors: this is a codebook for speech, not for images"):
        ImageCodebook.load(speech_path)
    with pytest.raises(CodebookMismatch, match=r"image.safetensors: this is a codebook for image, not for speech"):
        Codebook.load(image_path)
    # speech codebooks written before the modality key existed still load as speech ...
    with safe_open(str(speech_path), "np") as f:
        meta = {k: v for k, v in f.metadata().items() if k != "modality"}
    save_file({"centroids": speech.centroids}, str(tmp_path / "old.safetensors"), metadata=meta)
    assert Codebook.load(tmp_path / "old.safetensors").fingerprint == speech.fingerprint
    # ... and are not image codebooks
    with pytest.raises(CodebookMismatch, match="codebook for speech"):
        ImageCodebook.load(tmp_path / "old.safetensors")


def test_registry_builds_the_image_tokenizer(codebook, held_out, tmp_path):
    from dmlm.tokenizers import REGISTRY, Tokenizer, load_tokenizer

    assert "image" in REGISTRY
    tok = load_tokenizer("image", str(codebook.save(tmp_path / "img.safetensors")))
    assert isinstance(tok, Tokenizer) and tok.modality == "image" and tok.vocab_size == 64
    codes = tok.encode(held_out[0])
    assert tok.decode(codes).shape == (64, 64, 3)
    with pytest.raises(ValueError, match="text, speech, image"):
        load_tokenizer("video", "x")


# -------------------------------------------------------------------------------- external

def test_external_codebook(tmp_path):
    ext = ImageCodebook.external(k=8192, name="vqgan-f16")
    assert ext.is_external and ext.vocab_size == 8192 and ext.modality == "image"
    assert ext.fingerprint == ImageCodebook.external(8192, "vqgan-f16").fingerprint
    assert ext.fingerprint != ImageCodebook.external(8192, "vqgan-f8").fingerprint
    assert ext.fingerprint != ImageCodebook.external(1024, "vqgan-f16").fingerprint
    with pytest.raises(ValueError, match="external.*no centroids to decode"):
        ext.decode([0] * 64)
    with pytest.raises(ValueError, match="external"):
        ext.encode(np.zeros((64, 64, 3), np.uint8))
    back = ImageCodebook.load(ext.save(tmp_path / "ext.safetensors"))
    assert back.is_external and back.fingerprint == ext.fingerprint and back.settings.name == "vqgan-f16"


def _jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_read_external_codes_validates_with_file_and_line(tmp_path):
    good = _jsonl(tmp_path / "codes.jsonl", [{"id": "a", "codes": [0, 1, 2, 3]}, "", {"id": "b", "codes": [7, 7, 7, 7]}])
    assert read_external_codes(good, k=8) == {"a": [0, 1, 2, 3], "b": [7, 7, 7, 7]}
    assert read_external_codes(good, k=8, length=4)["b"] == [7, 7, 7, 7]
    bad = {
        "out of range": ([{"id": "a", "codes": [0, 8]}], r"bad.jsonl:1: code 8 out of range \[0, 8\)"),
        "negative": ([{"id": "a", "codes": [0]}, {"id": "b", "codes": [-1]}], r"bad.jsonl:2: code -1"),
        "json": (["{oops"], "bad.jsonl:1: not valid JSON"),
        "no id": ([{"codes": [1]}], "bad.jsonl:1: expected an object with a non-empty string 'id'"),
        "floats": ([{"id": "a", "codes": [1.5]}], "bad.jsonl:1: 'codes' must be a list of integers"),
        "bools": ([{"id": "a", "codes": [True]}], "list of integers"),
        "empty": ([{"id": "a", "codes": []}], "'codes' is empty"),
        "duplicate": ([{"id": "a", "codes": [1]}, {"id": "a", "codes": [2]}], "bad.jsonl:2: duplicate id 'a'"),
    }
    for name, (rows, msg) in bad.items():
        with pytest.raises(ValueError, match=msg):
            read_external_codes(_jsonl(tmp_path / "bad.jsonl", rows), k=8)
    with pytest.raises(ValueError, match="bad.jsonl:1: 3 codes, expected 4"):
        read_external_codes(_jsonl(tmp_path / "bad.jsonl", [{"id": "a", "codes": [1, 2, 3]}]), k=8, length=4)
    with pytest.raises(FileNotFoundError):
        read_external_codes(tmp_path / "none.jsonl", k=8)


# ---------------------------------------------------------------------------------- stores

@pytest.fixture()
def manifest(tmp_path, held_out):
    from dmlm.data.manifest import Record, write_manifest
    from dmlm.util.images import save_image

    records = []
    for i, im in enumerate(held_out[:6]):
        save_image(tmp_path / "img" / f"r{i}.png", im)
        records.append(Record(id=f"r{i}", image=f"img/r{i}.png", caption="a caption"))
    records.insert(2, Record(id="text-only", text="no image here"))
    path = tmp_path / "train.jsonl"
    write_manifest(path, records)
    return path


def test_tokenize_images_writes_a_store_with_the_fingerprint(codebook, manifest, held_out, tmp_path):
    from dmlm.data.shards import TokenStore
    from dmlm.tokenizers.tokenize import tokenize_images

    store = tokenize_images(codebook, manifest, tmp_path / "units", chunk_size=4)
    assert store is not None and store.prefix == tmp_path / "units" / "train.image"
    assert store.meta["modality"] == "image" and store.fingerprint == codebook.fingerprint
    codebook.check(store.fingerprint, f"token store {store.prefix}")
    assert store.ids == [f"r{i}" for i in range(6)]  # records without an image are skipped
    for i in range(6):
        assert store.get(f"r{i}").tolist() == codebook.encode(held_out[i])
    again = TokenStore(tmp_path / "units" / "train.image")
    assert again.ids == store.ids
    # the image store sits beside a speech store of the same manifest without clobbering it
    assert sorted(p.name for p in (tmp_path / "units").iterdir()) == [
        "train.image.bin", "train.image.idx.npy", "train.image.json"]
    # a store made with another codebook is refused
    other = ImageCodebook(codebook.centroids[::-1].copy(), codebook.settings)
    with pytest.raises(ValueError, match="made with codebook"):
        tokenize_images(other, manifest, tmp_path / "units")


def test_tokenize_images_sharded_matches_unsharded(codebook, manifest, tmp_path):
    from dmlm.tokenizers.tokenize import tokenize_images

    whole = tokenize_images(codebook, manifest, tmp_path / "a", chunk_size=2)
    assert tokenize_images(codebook, manifest, tmp_path / "b", shard=0, num_shards=2, chunk_size=2) is None
    parts = tokenize_images(codebook, manifest, tmp_path / "b", shard=1, num_shards=2, chunk_size=2)
    assert parts.ids == whole.ids and np.array_equal(parts.tokens, whole.tokens)


def test_tokenize_images_with_external_codes(manifest, tmp_path):
    from dmlm.tokenizers.tokenize import tokenize_images

    ext = ImageCodebook.external(k=16, name="toy-vq")
    with pytest.raises(ValueError, match="external: give its codes"):
        tokenize_images(ext, manifest, tmp_path / "units")
    rows = [{"id": f"r{i}", "codes": [i, i + 1, i + 2]} for i in range(6)]
    store = tokenize_images(ext, manifest, tmp_path / "units", external_codes=_jsonl(tmp_path / "c.jsonl", rows))
    assert store.fingerprint == ext.fingerprint and store.get("r4").tolist() == [4, 5, 6]
    with pytest.raises(ValueError, match="have no external codes, e.g. 'r5'"):
        tokenize_images(ext, manifest, tmp_path / "u2", external_codes={r["id"]: r["codes"] for r in rows[:5]})
    with pytest.raises(ValueError, match="c2.jsonl:1: code 16 out of range"):
        tokenize_images(ext, manifest, tmp_path / "u3",
                        external_codes=_jsonl(tmp_path / "c2.jsonl", [{"id": "r0", "codes": [16]}]))


def test_unreadable_image_names_manifest_and_record(codebook, manifest, tmp_path):
    from dmlm.util.images import ImageError
    from dmlm.tokenizers.tokenize import tokenize_images

    (tmp_path / "img" / "r3.png").write_text("not a png")
    with pytest.raises(ImageError, match=r"train.jsonl: record 'r3': .*r3.png: not a readable image"):
        tokenize_images(codebook, manifest, tmp_path / "units")
