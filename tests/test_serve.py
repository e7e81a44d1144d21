"""`dmlm serve`'s app in process (Starlette's test client): every route, every limit and bad input,
the API key, and the batcher on its own.

The model is conftest's `speaking_model`: the tiny every-task model with a 3-step vocoder, so
speech out runs end to end. The live server (a real process: the `openai` client, the browser,
load, SIGTERM) is tests/test_serve_live.py.
"""

from __future__ import annotations

import asyncio
import io
import json
import tempfile
import wave
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import soundfile as sf
import soxr
from fastapi.testclient import TestClient
from PIL import Image

import dmlm
from dmlm.serve import ServeConfig, create_app
from dmlm.serve.batching import Batcher, Busy
from dmlm.util.errors import UserError

LIMITS = dict(max_audio_seconds=5.0, max_text_chars=60, max_image_pixels=64 * 64, max_upload_bytes=2_000_000, max_rerank=2)


def local_client(app) -> TestClient:
    """A test client that calls the app by a name it answers to (TestClient's own, `testserver`, is refused)."""
    return TestClient(app, base_url="http://localhost")


@pytest.fixture(scope="module")
def m(speaking_model):
    return dmlm.load(speaking_model)


@pytest.fixture(scope="module")
def client(m):
    with local_client(create_app(m, ServeConfig(**LIMITS))) as c:
        yield c


@pytest.fixture(scope="module")
def rec(first_record):
    return first_record


def _error(r, status: int, *, param: str | None = None, code: str | None = None, says: str = "") -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    if param is not None:
        assert err["param"] == param, err
    if code is not None:
        assert err["code"] == code, err
    assert says.lower() in err["message"].lower(), err
    return err


def _wav_bytes(samples: np.ndarray, rate: int, fmt: str = "WAV", subtype: str | None = "PCM_16") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, samples, rate, format=fmt, subtype=subtype)
    return buf.getvalue()


# -- what works -----------------------------------------------------------------------------
def test_health_docs_and_schema(client, m):
    h = client.get("/health").json()
    assert h["status"] == "ok" and h["version"] == dmlm.__version__ and h["model"] == m.path.name
    assert h["tasks"] == m.tasks and h["fingerprints"] == m.info["fingerprints"] and h["vocoder"] is True
    assert all(h["routes"].values()) and h["targets"] == ["es"] and h["limits"]["max_text_chars"] == 60
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    for p in ("/v1/transcribe", "/v1/translate", "/v1/caption", "/v1/synthesize-units", "/v1/speak",
              "/v1/audio/transcriptions", "/v1/audio/translations", "/v1/audio/speech", "/v1/models"):
        assert p in paths, p
    page = client.get("/")
    assert page.status_code == 200 and 'src="/static/app.js"' in page.text
    for name in ("app.js", "style.css", "recorder-worklet.js"):  # everything the page needs is served here: no CDN
        r = client.get(f"/static/{name}")
        assert r.status_code == 200 and "http://" not in r.text and "https://" not in r.text
    assert "https://" not in page.text and "http://" not in page.text


@pytest.mark.parametrize("variant", ["wav16k", "wav44k_stereo", "flac", "ogg", "mp3", "float_wav_8k"])
def test_transcribe_reads_any_format_rate_and_channels(client, m, rec, variant, tmp_path):
    """The server's decoding of an upload equals `dmlm.load(...).transcribe(path)` of the same file."""
    wav_path, text, _, _ = rec
    wav, rate = sf.read(wav_path, dtype="float32")
    if variant == "wav16k":
        data = wav_path.read_bytes()
    elif variant == "wav44k_stereo":
        w = soxr.resample(wav, rate, 44_100)
        data = _wav_bytes(np.stack([w, 0.5 * w], axis=1), 44_100)
    elif variant == "float_wav_8k":
        data = _wav_bytes(soxr.resample(wav, rate, 8000), 8000, subtype="FLOAT")
    else:
        fmt, sub = {"flac": ("FLAC", "PCM_16"), "ogg": ("OGG", "VORBIS"), "mp3": ("MP3", "MPEG_LAYER_III")}[variant]
        data = _wav_bytes(wav, rate, fmt, sub)
    path = tmp_path / f"clip.{variant}"
    path.write_bytes(data)
    r = client.post("/v1/transcribe", files={"audio": (path.name, data)})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["text"] == m.transcribe(path) and out["seconds"] > 0 and out["batch_size"] == 1
    assert out["duration"] == pytest.approx(len(wav) / rate, abs=0.08)
    if variant in ("wav16k", "flac"):
        assert out["text"] == text  # the tiny model memorized this clip


def test_translate_caption_units_and_speech(client, m, rec):
    wav_path, text, es, image = rec
    r = client.post("/v1/translate", files={"audio": ("a.wav", wav_path.read_bytes())}, data={"to": "es"})
    assert r.status_code == 200 and r.json()["text"] == m.translate(wav_path, to="es") == es
    r = client.post("/v1/caption", files={"image": ("i.png", image.read_bytes())})
    assert r.status_code == 200 and r.json()["text"] == m.caption(image) == text
    r = client.post("/v1/synthesize-units", json={"text": text})
    assert r.status_code == 200 and r.json()["units"] == m.synthesize_units(text).tolist()
    r = client.post("/v1/speak", json={"text": text, "strategy": "sample", "seed": 3})
    assert r.status_code == 200 and r.headers["content-type"] == "audio/wav"
    with wave.open(io.BytesIO(r.content)) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (16000, 1, 2)
        seconds = w.getnframes() / 16000
    assert seconds == pytest.approx(float(r.headers["x-dmlm-duration"]), abs=1e-3) and seconds > 0.1
    assert float(r.headers["x-dmlm-seconds"]) > 0 and r.headers["x-dmlm-batch-size"] == "1"


def test_translate_speech_by_the_cascade(client, m, rec):
    """The every-task model translates speech into speech one way, the cascade (s2tt:es, then t2s): the route's wav
    is the API's audio; the ways it was not trained for, and languages it does not speak, are refused by field."""
    wav_path, _, _, _ = rec
    h = client.get("/health").json()
    assert h["routes"]["translate-speech"] is True and h["speech_ways"] == {"cascade": ["es"]}
    audio = {"audio": ("a.wav", wav_path.read_bytes())}
    r = client.post("/v1/translate-speech", files=audio, data={"strategy": "sample", "seed": "3"})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "audio/wav" and (r.headers["x-dmlm-how"], r.headers["x-dmlm-to"]) == ("cascade", "es")
    got, rate = sf.read(io.BytesIO(r.content), dtype="float32")
    want = m.translate(wav_path, to="es", speech=True, how="cascade", strategy="sample", seed=3)
    assert rate == want.sample_rate == 16000 and len(got) == len(want.samples) > 1600
    assert np.abs(got - np.clip(want.samples, -1, 1)).max() < 1e-3  # the same speech, as 16-bit PCM
    assert float(r.headers["x-dmlm-duration"]) == pytest.approx(want.seconds, abs=1e-3)
    assert float(r.headers["x-dmlm-input-duration"]) == pytest.approx(sf.info(wav_path).duration, abs=0.01)
    _error(client.post("/v1/translate-speech", files=audio, data={"how": "direct"}), 400, param="how",
           code="task_not_trained", says="s2st")
    _error(client.post("/v1/translate-speech", files=audio, data={"how": "telepathy"}), 422, param="how")
    _error(client.post("/v1/translate-speech", files=audio, data={"to": "en"}), 400, param="to", says="into es")
    _error(client.post("/v1/translate-speech", files=audio, data={"src": "xx"}), 400, param="src")
    _error(client.post("/v1/translate-speech", data={"to": "es"}), 422, param="audio", says="audio file")


def test_openai_routes_in_process(client, rec):
    wav_path, text, es, _ = rec
    files = {"file": ("a.wav", wav_path.read_bytes())}
    assert client.post("/v1/audio/transcriptions", files=files, data={"model": "whisper-1"}).json()["text"] == text
    r = client.post("/v1/audio/transcriptions", files=files, data={"response_format": "srt"})
    assert r.text.startswith("1\n00:00:00,000 --> 00:00:01,") and text in r.text
    assert client.post("/v1/audio/transcriptions", files=files, data={"response_format": "vtt"}).text.startswith("WEBVTT")
    assert client.post("/v1/audio/translations", files=files).json()["text"] == es
    for fmt, magic in (("wav", b"RIFF"), ("flac", b"fLaC"), ("opus", b"OggS"), ("mp3", b"")):
        r = client.post("/v1/audio/speech", json={"model": "tts-1", "voice": "alloy", "input": text, "response_format": fmt})
        assert r.status_code == 200 and r.content.startswith(magic) and len(r.content) > 500, fmt
    pcm = client.post("/v1/audio/speech", json={"input": text, "response_format": "pcm"}).content
    wav = client.post("/v1/audio/speech", json={"input": text, "response_format": "wav"}).content
    assert len(pcm) // 2 == pytest.approx((len(wav) - 44) // 2 * 24 / 16, rel=0.01)  # raw 16-bit at 24 kHz
    assert client.get("/v1/models").json()["data"][0]["id"] == "dmlm"
    _error(client.get("/v1/models/gpt-4"), 404, code="model_not_found")


# -- limits and bad input ------------------------------------------------------------------------
def _tone(seconds: float, rate: int = 16000) -> np.ndarray:
    return (0.1 * np.sin(np.arange(int(seconds * rate)) / rate * 2 * np.pi * 220)).astype(np.float32)


def test_limits_answer_413_naming_the_limit(client):
    _error(client.post("/v1/transcribe", files={"audio": ("a.wav", _wav_bytes(_tone(6), 16000))}), 413,
           param="audio", code="max_audio_seconds", says="--max-audio-seconds")
    big = np.zeros(2_100_000, np.uint8).tobytes()
    _error(client.post("/v1/transcribe", files={"audio": ("a.wav", big)}), 413, code="max_upload_bytes",
           says="--max-upload-bytes")
    _error(client.post("/v1/speak", json={"text": "the red cat runs " * 10}), 413, param="text", code="max_text_chars")
    _error(client.post("/v1/audio/speech", json={"input": "a" * 61}), 413, param="input", code="max_text_chars")
    png = io.BytesIO()
    Image.new("RGB", (65, 64)).save(png, "PNG")
    _error(client.post("/v1/caption", files={"image": ("i.png", png.getvalue())}), 413, param="image",
           code="max_image_pixels")
    _error(client.post("/v1/speak", json={"text": "a cat", "rerank": 3}), 413, param="rerank", code="max_rerank")


def test_a_chunked_body_over_the_limit_is_refused(client):
    def chunks():
        for _ in range(30):
            yield b"x" * 100_000

    r = client.post("/v1/speak", content=chunks(), headers={"content-type": "application/json"})
    _error(r, 413, code="max_upload_bytes", says="at least")


BAD = [  # (method, path, request kwargs, status, param, words in the message)
    ("post", "/v1/transcribe", {}, 422, "audio", "expected an audio file"),
    ("post", "/v1/transcribe", {"files": {"audio": ("a.wav", b"")}}, 400, "audio", "empty"),
    ("post", "/v1/transcribe", {"files": {"audio": ("a.wav", b"RIFF....WAVEfmt garbage" * 20)}}, 400, "audio",
     "cannot read the upload as audio"),
    ("post", "/v1/transcribe", {"files": {"audio": ("a.wav", _wav_bytes(_tone(0.01), 16000))}}, 400, "audio", "at least"),
    ("post", "/v1/transcribe", {"files": {"audio": ("a.wav", _wav_bytes(np.full(8000, np.nan, np.float32), 16000,
                                                                        subtype="FLOAT"))}}, 400, "audio", "NaN"),
    ("post", "/v1/transcribe", {"files": {"audio": ("a.wav", _wav_bytes(_tone(1), 16000))}, "data": {"lang": "xx"}},
     400, "lang", "not in the model's vocabulary"),
    ("post", "/v1/transcribe", {"files": {"audio": ("a.wav", _wav_bytes(_tone(1), 16000))},
                                "data": {"strategy": "fast"}}, 422, "strategy", "greedy"),
    ("post", "/v1/transcribe", {"files": {"audio": ("a.wav", _wav_bytes(_tone(1), 16000))},
                                "data": {"beam_size": "99"}}, 422, "beam_size", "less than or equal to 16"),
    ("post", "/v1/transcribe", {"data": {"audio": "not a file"}}, 422, "audio", ""),
    ("post", "/v1/translate", {"files": {"audio": ("a.wav", _wav_bytes(_tone(1), 16000))}, "data": {"to": "de"}},
     400, "to", "translates into es"),
    ("post", "/v1/caption", {"files": {"image": ("i.png", b"\x89PNG\r\n\x1a\nnot really")}}, 400, "image",
     "cannot read the upload as an image"),
    ("post", "/v1/caption", {"files": {"image": ("i.png", b"")}}, 400, "image", "empty"),
    ("post", "/v1/speak", {"json": {"text": "   "}}, 400, "text", "empty"),
    ("post", "/v1/speak", {"json": {"txt": "a cat"}}, 422, "text", "field required"),
    ("post", "/v1/speak", {"json": {"text": "a cat", "colour": "red"}}, 422, "colour", "extra inputs"),
    ("post", "/v1/speak", {"json": {"text": 5}}, 422, "text", "valid string"),
    ("post", "/v1/speak", {"content": b"{not json", "headers": {"content-type": "application/json"}}, 422, None,
     "not valid JSON"),
    ("post", "/v1/speak", {"json": {"text": "a cat", "top_p": 0}}, 422, "top_p", "greater than 0"),
    ("post", "/v1/synthesize-units", {"json": ["a", "list"]}, 422, None, "valid dictionary"),
    ("post", "/v1/audio/speech", {"json": {"input": "a cat", "response_format": "aac"}}, 400, "response_format",
     "not supported"),
    ("post", "/v1/audio/speech", {"json": {"input": "a cat", "speed": 2}}, 400, "speed", "one speed"),
    ("post", "/v1/audio/speech", {"json": {"input": "a cat", "instructions": "whisper"}}, 400, "instructions", ""),
    ("post", "/v1/audio/speech", {"json": {"voice": "alloy"}}, 422, "input", "expected the text to speak"),
    ("post", "/v1/audio/transcriptions", {"files": {"file": ("a.wav", _wav_bytes(_tone(1), 16000))},
                                          "data": {"response_format": "xml"}}, 422, "response_format", "json"),
    ("post", "/v1/audio/transcriptions", {"files": {"file": ("a.wav", _wav_bytes(_tone(1), 16000))},
                                          "data": {"stream": "true"}}, 400, "stream", "not supported"),
    ("post", "/v1/nowhere", {}, 404, None, "no such route"),
    ("get", "/v1/speak", {}, 405, None, ""),
]


@pytest.mark.parametrize("method,path,kwargs,status,param,says", BAD, ids=[f"{b[1]}-{i}" for i, b in enumerate(BAD)])
def test_bad_input_gets_a_json_error_naming_the_field(client, method, path, kwargs, status, param, says):
    _error(getattr(client, method)(path, **kwargs), status, param=param, says=says)


def test_junk_never_gets_a_500(client):
    rng = np.random.default_rng(0)
    routes = ["/v1/transcribe", "/v1/translate", "/v1/caption", "/v1/audio/transcriptions", "/v1/audio/translations"]
    for i in range(40):
        junk = rng.integers(0, 256, int(rng.integers(0, 3000)), dtype=np.uint8).tobytes()
        if i % 4 == 0:  # a real header in front of junk
            junk = (b"RIFF" + junk[:4] + b"WAVEfmt " if i % 8 else b"\x89PNG\r\n\x1a\n") + junk
        field = "file" if "audio/" in routes[i % 5] else ("image" if "caption" in routes[i % 5] else "audio")
        r = client.post(routes[i % 5], files={field: ("x", junk)})
        assert r.status_code in (400, 413, 422), (routes[i % 5], r.status_code, r.text)
        body = {"text": junk[:30].decode("latin-1"), "input": junk[:30].decode("latin-1")}
        for p in ("/v1/speak", "/v1/synthesize-units", "/v1/audio/speech"):
            r = client.post(p, content=json.dumps(body if i % 3 else {"input": i}).encode())
            assert r.status_code != 500 and r.status_code < 600, (p, r.text)
    assert client.get("/health").status_code == 200


def test_uploads_leave_no_temporary_files(client, rec, tmp_path, monkeypatch):
    """A large upload spools to a temporary file (Starlette's, over 1 MB); none is left behind."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    wav, rate = sf.read(rec[0], dtype="float32")
    data = _wav_bytes(np.tile(wav, 2), rate, subtype="FLOAT")
    data += b"\0" * (1_200_000 - len(data))  # trailing bytes past the data chunk: still a readable wav
    assert client.post("/v1/transcribe", files={"audio": ("a.wav", data)}).status_code == 200
    assert client.post("/v1/transcribe", files={"audio": ("a.wav", b"junk" * 300_000)}).status_code == 400
    assert list(tmp_path.iterdir()) == []


# -- models that lack a task, the API key ---------------------------------------------------------
def test_a_model_without_a_vocoder_or_a_task(multitask_model, trained, rec):
    wav_path, text, _, image = rec
    with local_client(create_app(dmlm.load(multitask_model))) as c:  # every task, no vocoder
        h = c.get("/health").json()
        assert h["vocoder"] is False and h["routes"]["speak"] is False and h["routes"]["synthesize-units"] is True
        _error(c.post("/v1/speak", json={"text": text}), 400, code="no_vocoder", says="dmlm vocoder train")
        _error(c.post("/v1/audio/speech", json={"input": text}), 400, code="no_vocoder")
        assert h["routes"]["translate-speech"] is False and h["speech_ways"] == {"cascade": ["es"]}
        _error(c.post("/v1/translate-speech", files={"audio": ("a.wav", wav_path.read_bytes())}), 400,
               code="no_vocoder", says="dmlm vocoder train")
        assert c.post("/v1/synthesize-units", json={"text": text}).status_code == 200
    with local_client(create_app(dmlm.load(trained))) as c:  # ASR only
        assert c.get("/health").json()["routes"] == {"transcribe": True, "translate": False, "caption": False,
                                                     "synthesize-units": False, "speak": False,
                                                     "translate-speech": False}
        _error(c.post("/v1/caption", files={"image": ("i.png", image.read_bytes())}), 400, code="task_not_trained",
               says="its tasks: asr")
        _error(c.post("/v1/audio/translations", files={"file": ("a.wav", wav_path.read_bytes())}), 400,
               code="task_not_trained")
        _error(c.post("/v1/translate-speech", files={"audio": ("a.wav", wav_path.read_bytes())}), 400,
               code="task_not_trained", says="s2st_chain")
        assert c.post("/v1/transcribe", files={"audio": ("a.wav", wav_path.read_bytes())}).status_code == 200


def test_api_key_guards_every_v1_route(m, rec):
    with local_client(create_app(m, ServeConfig(api_key="s3cret"))) as c:
        assert c.get("/health").json()["auth"] is True and c.get("/").status_code == 200
        for path in ("/v1/models", "/v1/audio/speech", "/v1/speak", "/v1/transcribe"):
            r = c.post(path, json={"text": "a"}) if path != "/v1/models" else c.get(path)
            _error(r, 401, code="invalid_api_key", says="Bearer")
            assert r.headers["www-authenticate"] == "Bearer"
        _error(c.get("/v1/models", headers={"Authorization": "Bearer wrong"}), 401)
        _error(c.get("/v1/models", headers={"Authorization": "s3cret"}), 401)
        assert c.get("/v1/models", headers={"Authorization": "Bearer s3cret"}).status_code == 200


def test_cli_flags_come_from_the_config(monkeypatch):
    from dmlm.cli import build_parser
    from dmlm.serve import config_from_args

    monkeypatch.setenv("DMLM_API_KEY", "from-env")
    args = build_parser().parse_args(["serve", "M", "--port", "0", "--max-batch", "4", "--max-wait-ms", "2.5"])
    cfg = config_from_args(args)
    assert (cfg.port, cfg.max_batch, cfg.max_wait_ms, cfg.api_key, cfg.host) == (0, 4, 2.5, "from-env", "127.0.0.1")
    with pytest.raises(UserError, match="--max-batch"):
        ServeConfig(max_batch=0)


def test_serving_a_folder_that_is_no_model_is_a_one_line_error(tmp_path, capsys):
    from dmlm.cli import main

    assert main(["serve", str(tmp_path / "nowhere"), "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dmlm serve: error:") and "not a dmlm checkpoint" in err and "Traceback" not in err


# -- the batcher ------------------------------------------------------------------------------------
def _batcher(**kw) -> Batcher:
    return Batcher(ThreadPoolExecutor(1), **{"max_batch": 4, "max_wait": 0.05, **kw})


def test_concurrent_requests_share_one_model_call():
    calls = []

    def fn(items):
        calls.append(list(items))
        return [x * 10 for x in items]

    async def main():
        b = _batcher()
        done = await asyncio.gather(*(b.submit("k", fn, i) for i in range(10)))
        other = await b.submit("other", fn, 7)  # another key: its own call
        await b.close()
        return done, other

    done, other = asyncio.run(main())
    assert [d.value for d in done] == [i * 10 for i in range(10)] and other.value == 70
    assert [len(c) for c in calls] == [4, 4, 2, 1]  # max_batch 4, in submission order
    assert [d.batch_size for d in done] == [4] * 8 + [2, 2]


def test_a_bad_item_fails_alone_and_a_cancelled_one_is_dropped():
    seen = []

    def fn(items):
        seen.append(list(items))
        if "bad" in items:
            raise UserError("no units for 'bad'")
        return [x.upper() for x in items]

    async def main():
        b = _batcher(max_wait=0.1, max_batch=8)
        gone = asyncio.ensure_future(b.submit("k", fn, "gone"))
        jobs = [asyncio.ensure_future(b.submit("k", fn, x)) for x in ("a", "bad", "c")]
        await asyncio.sleep(0.01)
        gone.cancel()
        out = await asyncio.gather(*jobs, return_exceptions=True)
        await b.close()
        return out

    a, bad, c = asyncio.run(main())
    assert (a.value, c.value) == ("A", "C") and isinstance(bad, UserError)
    assert seen[0] == ["a", "bad", "c"] and ["gone"] not in seen and "gone" not in seen[0]


def test_past_max_pending_requests_are_refused():
    async def main():
        b = _batcher(max_pending=2, max_wait=0.2)
        first = [asyncio.ensure_future(b.submit("k", lambda xs: xs, i)) for i in range(2)]
        await asyncio.sleep(0.01)
        with pytest.raises(Busy, match="--max-pending 2"):
            await b.submit("k", lambda xs: xs, 3)
        await asyncio.gather(*first)
        await b.close()
        with pytest.raises(Busy, match="shutting down"):
            await b.submit("k", lambda xs: xs, 4)

    asyncio.run(main())
