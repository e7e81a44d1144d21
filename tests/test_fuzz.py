"""Property-based tests (Hypothesis) over what users hand dmlm: manifest lines, config files and
overrides, audio files with mangled headers, image files with mangled bytes.

The property, for each: the call succeeds, or raises a `UserError` (the CLI: exit 2, one line)
whose message names the input (the file, or the config key); never another exception, and
nothing written outside the output folder. Derandomized (the same examples in every run, so CI
is reproducible) and sized to run in well under a minute; `DMLM_FUZZ_EXAMPLES=2000` hunts longer
with fresh random examples.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dmlm.cli import main
from dmlm.data.manifest import read_manifest
from dmlm.training.config import RunConfig
from dmlm.util.audio import load_audio
from dmlm.util.config import load_config
from dmlm.util.errors import UserError
from dmlm.util.images import load_image

EXAMPLES = int(os.environ.get("DMLM_FUZZ_EXAMPLES", "0"))  # > 0: that many random examples per test, for a longer hunt
FUZZ = settings(max_examples=EXAMPLES or 60, deadline=None, derandomize=not EXAMPLES, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
# (capsys is read, so emptied, by every example)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
FIELDS = ["id", "audio", "text", "lang", "duration", "speaker", "split", "translations", "image", "caption", "custom"]
records = st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=6)


def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*")}


def _names_input(e: UserError, *names: str) -> bool:
    """The message is not empty and holds one of `names`, as typed or quoted (repr: control characters escaped)."""
    msg = str(e)
    return bool(msg.strip()) and any((n and n in msg) or repr(n) in msg for n in names)


# -- manifests ----------------------------------------------------------------------------------

@FUZZ
@given(line=st.one_of(records.map(json.dumps), st.text(max_size=60)), ok_first=st.booleans())
def test_a_manifest_line_reads_or_is_an_error_naming_the_manifest(line, ok_first):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "m.jsonl"
        good = json.dumps({"id": "a", "text": "hello", "audio": "a.wav"})
        path.write_text("\n".join([good, line] if ok_first else [line]) + "\n", encoding="utf-8", errors="surrogatepass")
        try:
            recs = read_manifest(path)
            for r in recs:
                for m in ("audio", "image"):
                    if getattr(r, m) is not None:
                        r.audio_path(path) if m == "audio" else r.image_path(path)
        except UserError as e:
            assert _names_input(e, str(path)), str(e)


@FUZZ
@given(rid=st.text(min_size=1, max_size=200))
def test_record_ids_never_name_a_path_outside_the_output_folder(rid):
    from dmlm.evaluation.speech import safe_name

    name = safe_name(rid)
    out = Path("/tmp/out")
    assert name and "/" not in name and "\x00" not in name and not name.startswith(".") and len(name) <= 120
    assert (out / f"{name}.wav").resolve().parent == out.resolve()


# -- configs ------------------------------------------------------------------------------------

def _keys(cls=RunConfig, prefix="") -> list[str]:
    from dataclasses import fields, is_dataclass

    out = []
    for f in fields(cls):
        t = f.default_factory() if f.default_factory is not __import__("dataclasses").MISSING else None
        if t is not None and is_dataclass(t):
            out += _keys(type(t), f"{prefix}{f.name}.")
        else:
            out.append(prefix + f.name)
    return out


KEYS = _keys()
yaml_scalars = st.one_of(st.integers(-5, 10**5), st.floats(allow_nan=True), st.booleans(), st.none(),
                         st.text(max_size=12), st.lists(st.integers(-2, 3), max_size=3))


@FUZZ
@given(pairs=st.lists(st.tuples(st.sampled_from(KEYS) | st.text(max_size=10), st.text(max_size=12)), max_size=4))
def test_config_overrides_load_or_are_an_error_naming_the_key(pairs):
    items = [f"{k}={v}" for k, v in pairs]
    try:
        cfg = load_config(None, items, RunConfig)
        cfg.validate()
    except UserError as e:
        assert _names_input(e, *(k for k, _ in pairs), *items, "train.out", "data.train"), str(e)


@FUZZ
@given(doc=st.one_of(
    st.dictionaries(st.sampled_from(["data", "model", "train", "bogus"]),
                    st.dictionaries(st.sampled_from([k.split(".", 1)[1] for k in KEYS] + ["nope"]), yaml_scalars,
                                    max_size=4) | yaml_scalars, max_size=3).map(json.dumps),
    st.text(max_size=80)))
def test_a_config_file_loads_or_is_an_error_naming_the_file_or_key(doc):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "run.yaml"
        path.write_text(doc, encoding="utf-8", errors="surrogatepass")
        try:
            load_config(path, [], RunConfig).validate()
        except UserError as e:
            assert _names_input(e, str(path), *KEYS, "data", "model", "train", "bogus", "nope"), str(e)


@settings(FUZZ, max_examples=15)
@given(pairs=st.lists(st.tuples(st.sampled_from([k for k in KEYS if k.startswith(("train.", "model."))
                                                 and k != "train.out"]), yaml_scalars.map(json.dumps)),
                      min_size=1, max_size=3))
def test_dmlm_train_with_fuzzed_overrides_exits_0_or_2_and_writes_only_its_output(pairs, capsys):
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        before = _files(root)
        argv = ["train", f"data.train={root / 'missing.jsonl'}", f"data.units={root / 'units'}",
                f"train.out={root / 'out' / 'model'}", *(f"{k}={v}" for k, v in pairs)]
        assert main(argv) == 2  # data.train does not exist: never trains, always a one-line error
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) >= 1 and err[-1].startswith("dmlm train: error: ")
        assert {p for p in _files(root) - before if root / "out" not in p.parents and p != root / "out"} == set()


# -- audio --------------------------------------------------------------------------------------

def _wav_bytes() -> bytes:
    buf = io.BytesIO()
    sf.write(buf, (np.sin(np.arange(3200) / 5) * 0.3).astype(np.float32), 16000, format="WAV", subtype="PCM_16")
    return buf.getvalue()


WAV = _wav_bytes()
mangles = st.lists(st.tuples(st.integers(0, 63), st.integers(0, 255)), min_size=1, max_size=6)


def _mangle(data: bytes, edits, cut: int | None) -> bytes:
    b = bytearray(data)
    for pos, val in edits:
        b[pos % len(b)] = val
    return bytes(b[:cut] if cut is not None else b)


@FUZZ
@given(edits=mangles, cut=st.none() | st.integers(0, len(WAV)))
def test_a_wav_with_a_mangled_header_loads_or_is_an_error_naming_the_file(edits, cut):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "clip.wav"
        path.write_bytes(_mangle(WAV, edits, cut))
        try:
            wav = load_audio(path)
            assert wav.dtype == np.float32 and wav.ndim == 1 and np.isfinite(wav).all()
        except UserError as e:
            assert _names_input(e, str(path)), str(e)


@settings(FUZZ, max_examples=20)
@given(edits=mangles, cut=st.none() | st.integers(40, len(WAV)), k=st.sampled_from(["2", "0", "-1", "x"]))
def test_codebook_fit_on_a_mangled_clip_exits_0_or_2_and_writes_only_its_output(edits, cut, k, capsys):
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        (root / "clip.wav").write_bytes(_mangle(WAV, edits, cut))
        (root / "m.jsonl").write_text(json.dumps({"id": "c", "audio": "clip.wav", "text": "a"}) + "\n")
        before = _files(root)
        cwd = os.getcwd()
        os.chdir(root)  # nothing may land in the working directory either
        try:
            code = main(["codebook", "fit", str(root / "m.jsonl"), "-o", str(root / "out" / "cb.safetensors"),
                         "backend=mel", f"k={k}", "pooling=1"])
        finally:
            os.chdir(cwd)
        assert code in (0, 2)
        if code == 2:
            assert capsys.readouterr().err.strip().splitlines()[-1].startswith("dmlm codebook: error: ")
        assert all(root / "out" in p.parents or p == root / "out" for p in _files(root) - before)


# -- images -------------------------------------------------------------------------------------

def _png_bytes() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.arange(16 * 16 * 3, dtype=np.uint8).reshape(16, 16, 3)).save(buf, format="PNG")
    return buf.getvalue()


PNG = _png_bytes()


@FUZZ
@given(data=st.one_of(st.tuples(mangles, st.none() | st.integers(0, len(PNG))).map(lambda a: _mangle(PNG, *a)),
                      st.binary(max_size=200)))
def test_a_mangled_image_file_loads_or_is_an_error_naming_the_file(data):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "img.png"
        path.write_bytes(data)
        try:
            img = load_image(path, size=16)
            assert img.shape == (16, 16, 3) and img.dtype == np.uint8
        except UserError as e:
            assert _names_input(e, str(path)), str(e)


@pytest.mark.parametrize("w, h", [(100_000, 100_000), (70_000, 1)])
def test_a_png_header_claiming_a_huge_image_is_refused_before_decoding(tmp_path, w, h):
    """An image header is a few bytes: one claiming 10^10 pixels must not make dmlm allocate them."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)) + chunk(b"IEND", b"")
    path = tmp_path / "bomb.png"
    path.write_bytes(png)
    with pytest.raises(UserError, match="bomb.png"):
        load_image(path)
