"""`dmlm serve` against hostile-but-fair clients, in process (issue 32; the live server's half, with raw
sockets, is tests/test_serve_hostile_live.py):

- audio is bounded by what it decodes to (rate x channels x seconds), not only by its bytes and length,
  and what is accepted is decoded a block at a time;
- no field value gets a 500: a seed of 2**80, a lone surrogate, and a Hypothesis fuzz over every
  route's fields;
- the decoding bounds are one definition (`dmlm.decoding.options.BOUNDS`) that the routes use;
- hygiene: nothing readable without a key names the model's path, the Host header is checked
  (DNS rebinding), /docs and /redoc load nothing from a CDN.

The model is conftest's `speaking_model` (every task, a 3-step vocoder).
"""

from __future__ import annotations

import io
import json
import os
import re
import socket
import tracemalloc

import numpy as np
import pytest
import soundfile as sf
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import dmlm
from dmlm.decoding.options import BOUNDS
from dmlm.serve import ServeConfig, create_app
from dmlm.serve.media import read_audio
from dmlm.util.audio import to_mono

CFG = dict(max_audio_seconds=60.0, max_audio_samples=8_000_000, max_text_chars=200, max_rerank=2)


@pytest.fixture(scope="module")
def m(speaking_model):
    return dmlm.load(speaking_model)


@pytest.fixture(scope="module")
def client(m):
    with TestClient(create_app(m, ServeConfig(**CFG)), base_url="http://localhost") as c:
        yield c


def flac(rate: int, channels: int, seconds: int, tone: bool = False) -> bytes:
    """A FLAC of silence (a 220 Hz tone in channel 0 if `tone`): tiny, whatever it decodes to."""
    buf = io.BytesIO()
    with sf.SoundFile(buf, "w", samplerate=rate, channels=channels, format="FLAC", subtype="PCM_16") as f:
        block = np.zeros((rate, channels), np.int16)
        if tone:
            block[:, 0] = (3000 * np.sin(np.arange(rate) / rate * 2 * np.pi * 220)).astype(np.int16)
        for _ in range(seconds):
            f.write(block)
    return buf.getvalue()


def _error(r, status: int, param: str | None = None, code: str | None = None, says: str = "") -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    assert param is None or err["param"] == param, err
    assert code is None or err["code"] == code, err
    assert says.lower() in err["message"].lower(), err
    return err


# -- what audio decodes to -------------------------------------------------------------------
@pytest.fixture(scope="module")
def bomb() -> bytes:
    """The issue's file: 59 s of silence at 655,350 Hz x 8 channels, 338 KB that decode to 1.2 GB."""
    return flac(655_350, 8, 59)


def test_an_absurd_rate_is_refused_before_decoding(client, bomb):
    assert len(bomb) < 400_000
    tracemalloc.start()
    try:
        r = client.post("/v1/transcribe", files={"audio": ("silence.flac", bomb)})
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    _error(r, 400, "audio", says="655350 Hz; expected 1000 to 384000 Hz")
    assert peak < 16 * 2**20, f"{peak / 2**20:.0f} MiB"  # the upload's bytes and their copies, no samples


def test_decoded_size_is_bounded_by_max_audio_samples(client):
    data = flac(96_000, 8, 11)  # 11 s, under max_audio_seconds, but 8.4 M samples
    err = _error(client.post("/v1/transcribe", files={"audio": ("a.flac", data)}), 413, "audio", "max_audio_samples",
                 "--max-audio-samples")
    assert "96000 Hz x 8 channels" in err["message"]
    _error(client.post("/v1/audio/transcriptions", files={"file": ("a.flac", data)}), 413, "file", "max_audio_samples")
    many = io.BytesIO()
    sf.write(many, np.zeros((1600, 9), np.float32), 16000, format="WAV")
    _error(client.post("/v1/transcribe", files={"audio": ("a.wav", many.getvalue())}), 400, "audio",
           says="9 channels; expected 1 to 8")
    assert client.get("/health").json()["limits"]["max_audio_samples"] == 8_000_000


def test_accepted_audio_is_decoded_a_block_at_a_time(client):
    """192 kHz x 8 channels x 4 s (24 MiB as float32) is read with a few MiB, into bitwise what a one-shot
    read + `to_mono` gives, and transcribed."""
    data = flac(192_000, 8, 4, tone=True)
    tracemalloc.start()
    try:
        wav, seconds = read_audio(data, "audio", 60.0, 8_000_000)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    decoded = 192_000 * 8 * 4 * 4
    assert peak < decoded / 4, f"peak {peak / 2**20:.1f} MiB for {decoded / 2**20:.0f} MiB of samples"
    whole, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    assert np.array_equal(wav, to_mono(whole, rate, quiet=True)) and seconds == pytest.approx(4.0)
    assert client.post("/v1/transcribe", files={"audio": ("a.flac", data)}).status_code == 200


# -- values that used to get a 500 ------------------------------------------------------------
def test_a_huge_seed_and_a_lone_surrogate_are_refused_by_field(client):
    for seed in (2**80, -1):
        _error(client.post("/v1/speak", json={"text": "a cat", "strategy": "sample", "seed": seed}), 422, "seed")
        _error(client.post("/v1/transcribe", files={"audio": ("a.wav", b"x")},
                           data={"strategy": "sample", "seed": str(seed)}), 422, "seed")
    for path, field in (("/v1/speak", "text"), ("/v1/synthesize-units", "text"), ("/v1/audio/speech", "input")):
        body = '{"%s": "the red \\ud800 cat"}' % field  # JSON's escape for a lone surrogate
        _error(client.post(path, content=body, headers={"content-type": "application/json"}), 400, field,
               says="lone surrogate")


def test_the_routes_bounds_are_the_shared_ones(client):
    """Every bounded decoding field of the JSON and the multipart routes has BOUNDS' range, no other."""
    schema = client.get("/openapi.json").json()["components"]["schemas"]
    keys = {"ge": "minimum", "gt": "exclusiveMinimum", "le": "maximum"}
    forms = [s for name, s in schema.items() if name.startswith("Body_transcribe")]
    assert forms, sorted(schema)
    for props in (schema["TextIn"]["properties"], forms[0]["properties"]):
        for name, bound in BOUNDS.items():
            want = {keys[k]: v for k, v in bound.pydantic().items()}
            assert {k: props[name][k] for k in want} == want, (name, props[name])


# -- hygiene ----------------------------------------------------------------------------------
def test_nothing_without_a_key_names_the_models_path(m, multitask_model):
    secret = str(m.path.resolve().parent)
    for cfg in (ServeConfig(), ServeConfig(api_key="k")):
        with TestClient(create_app(m, cfg), base_url="http://localhost") as c:
            h = c.get("/health")
            assert h.json()["model"] == m.path.name and secret not in h.text
    with TestClient(create_app(dmlm.load(multitask_model)), base_url="http://localhost") as c:  # no vocoder
        err = _error(c.post("/v1/speak", json={"text": "a cat"}), 400, code="no_vocoder")
        assert str(multitask_model.resolve().parent) not in err["message"] and "dmlm vocoder train" in err["message"]


@pytest.mark.parametrize("host,ok", [("testserver", False), ("evil.example:8000", False), ("localhost.evil.example", False),
                                     ("localhost:8000", True), ("LOCALHOST.", True), ("127.0.0.1:8000", True),
                                     ("[::1]:8000", True), ("10.1.2.3", True), (socket.gethostname(), True)])
def test_the_host_header_must_name_this_server(m, host, ok):
    with TestClient(create_app(m, ServeConfig()), base_url="http://localhost") as c:
        r = c.get("/health", headers={"host": host})
        if ok:
            assert r.status_code == 200, r.text
        else:
            _error(r, 400, code="host_not_allowed", says="--allowed-hosts")
            assert c.get("/", headers={"host": host}).status_code == 400


def test_more_host_names_are_a_flag(m):
    from dmlm.cli import build_parser
    from dmlm.serve import config_from_args

    cfg = config_from_args(build_parser().parse_args(["serve", "M", "--allowed-hosts", "models.lab, Other.lab."]))
    with TestClient(create_app(m, cfg), base_url="http://localhost") as c:
        assert c.get("/health", headers={"host": "other.lab:80"}).status_code == 200
        assert c.get("/health", headers={"host": "models.lab"}).status_code == 200
        assert c.get("/health", headers={"host": "evil.example"}).status_code == 400
    with TestClient(create_app(m, ServeConfig(allowed_hosts="*"))) as c:  # TestClient's own name, `testserver`
        assert c.get("/health").status_code == 200


def test_docs_and_redoc_load_nothing_from_elsewhere(client):
    for page in ("/docs", "/redoc"):
        html = client.get(page)
        assert html.status_code == 200
        urls = re.findall(r"""(?:src|href|url)\s*[=:]\s*['"]([^'"]+)['"]""", html.text)
        assert urls and not re.search(r"https?://", html.text), (page, urls, html.text)
        for url in urls:
            r = client.get(url)
            assert r.status_code == 200 and len(r.content) > 100, (page, url)


# -- no 500, whatever the fields --------------------------------------------------------------
EXAMPLES = int(os.environ.get("DMLM_FUZZ_EXAMPLES", "0"))
FUZZ = settings(max_examples=EXAMPLES or 40, deadline=None, derandomize=not EXAMPLES, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

any_text = st.text(st.characters(codec=None, exclude_categories=()), max_size=12)  # lone surrogates included
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**90, 2**90) | st.floats(allow_nan=True) | any_text,
    lambda inner: st.lists(inner, max_size=2) | st.dictionaries(any_text, inner, max_size=2), max_leaves=4)


def _bounded(name: str):
    b = BOUNDS[name]
    if name in ("temperature", "top_p"):
        return st.floats(b.low, b.high, exclude_min=not b.low_inclusive)
    return st.integers(int(b.low), int(b.high))


DECODING = {"strategy": st.sampled_from(["greedy", "beam", "sample"]), **{name: _bounded(name) for name in BOUNDS}}
LANGS = st.sampled_from(["en", "en", "en", "es", "xx", "", "EN", "\ud800"])
TEXT = st.sampled_from(["the red cat runs", "a big dog sees", "", "a" * 201, "a \ud800 b", "1 2 3"]) | any_text
JSON_ROUTES = {  # route -> (required fields, optional fields)
    "/v1/speak": ({"text": TEXT}, {"lang": LANGS, "rerank": st.integers(0, 3), **DECODING}),
    "/v1/synthesize-units": ({"text": TEXT}, {"lang": LANGS, "rerank": st.integers(0, 3), **DECODING}),
    "/v1/audio/speech": ({"input": TEXT}, {
        "lang": LANGS, "model": any_text, "voice": any_text | st.dictionaries(any_text, any_text), "instructions": any_text,
        "speed": st.sampled_from([1.0, 1, 0.5]), "stream_format": st.sampled_from(["audio", "sse"]),
        "response_format": st.sampled_from(["mp3", "opus", "aac", "flac", "wav", "pcm", "ogg"])}),
}
FORM_DECODING = {name: s.map(str) for name, s in DECODING.items()}
FORM_ROUTES = {  # (route, upload field) -> optional form fields
    ("/v1/transcribe", "audio"): {"lang": LANGS, **FORM_DECODING},
    ("/v1/translate", "audio"): {"to": LANGS, "src": LANGS, **FORM_DECODING},
    ("/v1/caption", "image"): {"lang": LANGS, **FORM_DECODING},
    ("/v1/translate-speech", "audio"): {"to": LANGS, "src": LANGS, **FORM_DECODING,
                                        "how": st.sampled_from(["cascade", "cascade", "direct", "chained", "x", ""])},
    ("/v1/audio/transcriptions", "file"): {
        "language": LANGS, "model": any_text, "prompt": any_text, "stream": st.sampled_from(["true", "false", "x"]),
        "response_format": st.sampled_from(["json", "text", "srt", "vtt", "verbose_json", "xml"]),
        "temperature": st.floats(-0.5, 1.5).map(str), "timestamp_granularities[]": st.sampled_from(["word", "segment"])},
    ("/v1/audio/translations", "file"): {
        "to": LANGS, "model": any_text, "prompt": any_text, "temperature": st.floats(-0.5, 1.5).map(str),
        "response_format": st.sampled_from(["json", "text", "srt", "vtt", "verbose_json"])},
}


def _tone_wav(rate: int, channels: int) -> bytes:
    t = np.arange(int(rate * 0.8)) / rate
    buf = io.BytesIO()
    sf.write(buf, np.repeat((0.2 * np.sin(2 * np.pi * 220 * t))[:, None], channels, 1), rate, format="WAV")
    return buf.getvalue()


def _png(size: int, mode: str) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, (size, size)).save(buf, "PNG")
    return buf.getvalue()


def _uploads(field: str) -> st.SearchStrategy:
    good = [_tone_wav(16000, 1), _tone_wav(44100, 2), _tone_wav(8000, 8)] if field != "image" else [
        _png(8, "RGB"), _png(16, "L"), _png(12, "RGBA")]
    bad = st.sampled_from([b"", b"RIFF\x00\x00\x00\x00WAVEfmt ", b"\x89PNG\r\n\x1a\n"]) | st.binary(max_size=300)
    return st.sampled_from(good) | bad


def _requests(required: dict, optional: dict) -> st.SearchStrategy:
    """Mostly well formed (the required fields, some optional ones, each a value of its kind); now and then one
    field (or an unknown one, `colour`) is any JSON value instead."""
    names = [None, None, None, *required, *optional, "colour"]
    return st.tuples(st.fixed_dictionaries(required, optional=optional), st.sampled_from(names), json_values).map(
        lambda t: {**t[0], t[1]: t[2]} if t[1] else t[0])


def _no_500(r) -> None:
    assert r.status_code < 500 or (r.status_code == 503 and "retry-after" in r.headers), (r.status_code, r.text)
    if r.status_code >= 400:
        assert set(r.json()["error"]) == {"message", "type", "param", "code"}, r.text


@pytest.fixture(scope="module")
def short(monkeypatch_module):
    """Generation capped at 160 positions (the model has 1,024): a sampled 2,048-token request costs a tenth of a
    second instead of seconds. The property is about fields, not lengths."""
    import importlib

    gen = importlib.import_module("dmlm.decoding.generate")  # the module (the package exports a function of its name)
    monkeypatch_module.setattr(gen, "model_positions", lambda model: 160)


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


@FUZZ
@given(route=st.sampled_from(sorted(JSON_ROUTES)), data=st.data())
def test_json_routes_never_answer_500(client, short, route, data):
    body = data.draw(_requests(*JSON_ROUTES[route]) | json_values)
    _no_500(client.post(route, content=json.dumps(body).encode(), headers={"content-type": "application/json"}))


@FUZZ
@given(route=st.sampled_from(sorted(FORM_ROUTES)), data=st.data())
def test_upload_routes_never_answer_500(client, short, route, data):
    path, upload = route
    form = data.draw(_requests({}, FORM_ROUTES[route]))
    form = {k: (v if isinstance(v, str) else json.dumps(v)).encode("utf-8", "surrogatepass") for k, v in form.items()}
    files = {data.draw(st.sampled_from([upload, upload, upload, "other"])): ("x", data.draw(_uploads(upload)))}
    _no_500(client.post(path, data=form, files=files))


@FUZZ
@given(model_id=any_text, junk=st.binary(max_size=40))
def test_other_routes_never_answer_500(client, model_id, junk):
    from urllib.parse import quote

    _no_500(client.get("/v1/models/" + quote(model_id.encode("utf-8", "surrogatepass"), safe="")))
    _no_500(client.post("/v1/speak", content=junk, headers={"content-type": "application/json"}))
    _no_500(client.post("/v1/transcribe", content=junk, headers={"content-type": "multipart/form-data; boundary=x"}))
