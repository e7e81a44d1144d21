"""Every input form a library reads, at every depth (issue 32): image modes and bit depths Pillow
opens give the pixels a viewer shows (alpha on a white page, EXIF rotation applied, 16-bit and
float scaled) or a refusal naming the file; audio at 8..192 kHz, 1..8 channels, every sample
format, gives the same 16 kHz mono signal; a manifest that is not UTF-8 is refused naming its
encoding (a UTF-8 byte-order mark is read); a missing model folder is named as missing.
"""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from dmlm.util.images import ImageError, load_image


def _png16(path: Path, arr: np.ndarray, color_type: int) -> Path:
    """A 16-bit PNG written byte by byte (Pillow writes 16-bit grayscale only): 0 gray, 2 RGB, 4 gray+alpha, 6 RGBA."""
    h, w = arr.shape[:2]
    raw = b"".join(b"\x00" + arr[i].astype(">u2").tobytes() for i in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    return path


GRAY16 = np.full((8, 8), 32896, np.uint16)  # 128 * 257: mid-gray at 16 bits
OPAQUE16 = np.full((8, 8), 65535, np.uint16)


@pytest.mark.parametrize("color_type, planes", [(0, [GRAY16]), (2, [GRAY16] * 3), (4, [GRAY16, OPAQUE16]),
                                                (6, [GRAY16] * 3 + [OPAQUE16])])
def test_16_bit_pngs_give_the_gray_a_viewer_shows(tmp_path, color_type, planes):
    arr = planes[0] if len(planes) == 1 else np.stack(planes, -1)
    px = load_image(_png16(tmp_path / "g.png", arr, color_type), size=None)
    assert px.shape == (8, 8, 3) and np.abs(px.astype(int) - 128).max() <= 1, px[0, 0]  # before: white for gray


def _modes() -> dict[str, tuple[Image.Image, tuple[int, int, int]]]:
    """An image of each mode Pillow opens, filled with a colour, and the RGB a viewer shows for it."""
    return {
        "1": (Image.new("1", (8, 8), 1), (255, 255, 255)),
        "L": (Image.new("L", (8, 8), 100), (100, 100, 100)),
        "LA": (Image.new("LA", (8, 8), (0, 0)), (255, 255, 255)),  # transparent black: the white page
        "P": (Image.new("RGB", (8, 8), (10, 200, 30)).convert("P", palette=Image.Palette.ADAPTIVE), (10, 200, 30)),
        "PA": (Image.new("PA", (8, 8), (0, 255)), None),  # palette entry 0, opaque: checked only to load
        "RGB": (Image.new("RGB", (8, 8), (10, 200, 30)), (10, 200, 30)),
        "RGBA": (Image.new("RGBA", (8, 8), (255, 0, 0, 128)), (255, 127, 127)),  # half red over white
        "CMYK": (Image.new("CMYK", (8, 8), (0, 255, 255, 0)), (255, 0, 0)),
        "I;16": (Image.fromarray(np.full((8, 8), 65535, np.uint16)), (255, 255, 255)),
        "I": (Image.fromarray(np.full((8, 8), 32896, np.int32)), (128, 128, 128)),
        "F": (Image.fromarray(np.full((8, 8), 0.5, np.float32)), (128, 128, 128)),  # before: black
    }


@pytest.mark.parametrize("mode", list(_modes()))
def test_every_mode_gives_the_pixels_a_viewer_shows(tmp_path, mode):
    img, rgb = _modes()[mode]
    assert img.mode == mode
    path = tmp_path / f"m.{'tiff' if mode in ('I', 'F', 'CMYK', 'PA') else 'png'}"
    img.save(path)
    px = load_image(path, size=None)
    assert px.shape == (8, 8, 3) and px.dtype == np.uint8
    if rgb is not None:
        assert np.abs(px[0, 0].astype(int) - rgb).max() <= 1, (mode, px[0, 0])


def test_images_a_viewer_cannot_show_as_they_are_are_refused_naming_the_file(tmp_path):
    f = tmp_path / "hdr.tiff"
    Image.fromarray(np.full((8, 8), 7.5, np.float32)).save(f)
    with pytest.raises(ImageError, match=r"hdr.tiff: a floating-point image .* \[7.5, 7.5\]; dmlm reads float images in \[0, 1\]"):
        load_image(f)
    f = tmp_path / "big.tiff"
    Image.fromarray(np.full((8, 8), 1 << 20, np.int32)).save(f)
    with pytest.raises(ImageError, match=r"big.tiff: a I image with values in \[1.04858e\+06"):
        load_image(f)
    from dmlm.util.images import to_image

    with pytest.raises(ImageError, match="mode LAB images are not read"):
        to_image(Image.new("LAB", (8, 8)), where="lab")


def test_a_cameras_rotation_flag_is_applied_as_a_viewer_does(tmp_path):
    arr = np.zeros((8, 16, 3), np.uint8)
    arr[:, :8] = (255, 0, 0)  # left half red, right half blue: stored landscape
    arr[:, 8:] = (0, 0, 255)
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    path = tmp_path / "photo.png"
    img.save(path, exif=exif)
    px = load_image(path, size=None)
    assert px.shape == (16, 8, 3)  # shown portrait: before, read landscape
    assert px[0, 4, 0] > 200 and px[15, 4, 2] > 200  # the red half on top


# -- audio ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("rate", [8000, 11025, 22050, 44100, 48000, 96000, 192000])
@pytest.mark.parametrize("channels", [1, 2, 6, 8])
@pytest.mark.parametrize("subtype", ["PCM_U8", "PCM_16", "PCM_24", "PCM_32", "FLOAT"])
def test_audio_at_every_rate_channel_count_and_sample_format_reads_as_the_same_signal(tmp_path, rate, channels,
                                                                                      subtype):
    from dmlm.util.audio import SAMPLE_RATE, load_audio

    t = np.arange(int(0.25 * rate)) / rate
    tone = 0.5 * np.sin(2 * np.pi * 440 * t)
    path = tmp_path / "a.wav"
    sf.write(path, np.repeat(tone[:, None], channels, 1), rate, subtype=subtype)
    wav = load_audio(path)
    want = 0.5 * np.sin(2 * np.pi * 440 * np.arange(int(0.25 * SAMPLE_RATE)) / SAMPLE_RATE)
    assert wav.dtype == np.float32 and abs(len(wav) - len(want)) <= 1
    n = min(len(wav), len(want)) - 200  # away from the resampler's edges
    tol = 0.02 if subtype == "PCM_U8" else 0.005
    assert np.abs(wav[100:n] - want[100:n]).max() < tol, (rate, channels, subtype)


def test_unsigned_samples_from_a_caller_are_centred_like_an_8_bit_wav():
    from dmlm.util.audio import to_mono

    tone = 0.5 * np.sin(2 * np.pi * 440 * np.arange(1600) / 16000)
    u8 = np.clip(np.rint(tone * 128 + 128), 0, 255).astype(np.uint8)
    wav = to_mono(u8, 16000)
    assert abs(float(wav.mean())) < 0.01 and np.abs(wav - tone).max() < 0.01  # before: offset by +0.5
    i16 = (tone * 32768).astype(np.int16)
    assert np.abs(to_mono(i16, 16000) - tone).max() < 1e-3


# -- text encodings of manifests ------------------------------------------------------------------

RECORD = json.dumps({"id": "u1", "text": "héllo wörld", "lang": "en"}, ensure_ascii=False)


@pytest.mark.parametrize("encoding, name", [("utf-16", "UTF-16"), ("utf-32", "UTF-32"), ("utf-16-le", "UTF-16"),
                                            ("utf-16-be", "UTF-16")])
def test_wide_encodings_are_refused_naming_the_encoding(tmp_path, encoding, name):
    from dmlm.data.manifest import ManifestError, read_manifest

    path = tmp_path / "m.jsonl"
    path.write_bytes((RECORD + "\n").encode(encoding))
    with pytest.raises(ManifestError, match=rf"m.jsonl: the manifest is {name}.*iconv -f {name.lower()} -t utf-8"):
        read_manifest(path)


def test_utf8_with_a_byte_order_mark_or_crlf_reads_and_latin1_names_the_line(tmp_path):
    from dmlm.data.manifest import ManifestError, read_manifest

    path = tmp_path / "m.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + (RECORD + "\r\n" + RECORD.replace("u1", "u2") + "\r\n").encode())
    assert [r.text for r in read_manifest(path)] == ["héllo wörld"] * 2  # before: "not valid JSON" at line 1
    path.write_bytes((RECORD + "\n").encode() + (RECORD.replace("u1", "u2") + "\n").encode("latin-1"))
    with pytest.raises(ManifestError, match=r"m.jsonl:2: not UTF-8"):
        read_manifest(path)


def test_a_missing_model_folder_is_named_as_missing(tmp_path, capsys):
    from dmlm.cli import main

    assert main(["transcribe", str(tmp_path / "nomodel"), str(tmp_path / "a.wav")]) == 2
    assert "nomodel: not a dmlm checkpoint (no such folder)" in capsys.readouterr().err
