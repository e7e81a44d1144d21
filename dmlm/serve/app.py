"""The FastAPI app of `dmlm serve`: dmlm's routes, the OpenAI-compatible ones, the web page.

    GET  /health                  model name, tasks, fingerprints, vocoder, version, limits
    POST /v1/transcribe           multipart `audio` (+ `lang`, decoding fields) -> {"text", "duration", "seconds"}
    POST /v1/translate            multipart `audio`, `to` (+ `src`) -> {"text", "duration", "seconds"}
    POST /v1/caption              multipart `image` -> {"text", "seconds"}
    POST /v1/synthesize-units     JSON {"text", ...} -> {"units", "seconds"}
    POST /v1/speak                JSON {"text", ...} -> audio/wav
    POST /v1/translate-speech     multipart `audio` (+ `to`, `src`, `how`) -> audio/wav (S2ST)
    /v1/audio/..., /v1/models     OpenAI's audio API (`dmlm.serve.openai_routes`)
    GET  /                        the page (`static/`), /docs, /redoc and /openapi.json (FastAPI's)

Design decisions:
- Every route exists whatever the model was trained for (the schema does not change with the
  model); a route whose task the model lacks answers 400 `task_not_trained`, and the page shows
  only what /health says the model can do.
- One error shape for everything that can go wrong with a request (ours, FastAPI's validation,
  Starlette's 404/405/400): OpenAI's `{"error": {...}}` (see `dmlm.serve.media`). A bug still
  answers 500, with a message and a logged traceback, never a closed connection.
- What a request may be (its Host, its body's size and time to arrive) is checked by ASGI
  middlewares in front of everything (`dmlm.serve.guards`), before any route runs.
- Nothing a client can read without the key names a path on the server: /health gives the
  model's folder name, and an error that names the model's path names its folder instead.
- /docs and /redoc load their scripts from this server (the `fastapi-offline` package's copies),
  not a CDN, so they work offline like the page.
- `--api-key` guards `/v1` only: the page, /health and the docs stay readable, and the page asks
  for the key when /health says one is needed.
- Decoding (CPU-heavy, on the model thread) never runs on the event loop, and neither does
  reading audio or images (the threadpool), so /health answers during a long batch.
"""

from __future__ import annotations

import hmac
import json
import logging
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, FastAPI, File, Form, Request, UploadFile
from fastapi_offline import FastAPIOffline
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from dmlm.api import DMLM
from dmlm.decoding.options import BOUNDS, DecodingOptions
from dmlm.serve.batching import Busy
from dmlm.serve.config import ServeConfig
from dmlm.serve.guards import BodyLimit, HostCheck
from dmlm.serve.media import (
    RequestError,
    encode_audio,
    error_response,
    read_audio,
    read_image,
    read_text,
    read_upload,
)
from dmlm.serve.service import Service
from dmlm.util.errors import UserError

STATIC = Path(__file__).parent / "static"
log = logging.getLogger("dmlm.serve")

# what a missing field should have been, for the 422 message
EXPECTED = {"audio": "an audio file (multipart field 'audio')", "file": "an audio file (multipart field 'file')",
            "image": "an image file (multipart field 'image')", "text": "the text (a JSON string)",
            "input": "the text to speak (a JSON string)", "to": "a target language code, e.g. es"}
WAYS = Literal["direct", "chained", "cascade"]


# -- request bodies -------------------------------------------------------------------------------
_D = DecodingOptions()  # the defaults; the bounds are `dmlm.decoding.options.BOUNDS`, shared with the CLI and API


class Decoding(BaseModel):
    """The decoding options a request may set (`dmlm.decoding.DecodingOptions`, bounded)."""

    model_config = ConfigDict(extra="forbid")
    strategy: Literal["greedy", "beam", "sample"] = "greedy"
    beam_size: int = Field(_D.beam_size, **BOUNDS["beam_size"].pydantic())
    max_new_tokens: int = Field(_D.max_new_tokens, **BOUNDS["max_new_tokens"].pydantic())
    temperature: float = Field(_D.temperature, **BOUNDS["temperature"].pydantic())
    top_k: int = Field(_D.top_k, **BOUNDS["top_k"].pydantic())
    top_p: float = Field(_D.top_p, **BOUNDS["top_p"].pydantic())
    seed: int = Field(_D.seed, **BOUNDS["seed"].pydantic())


class TextIn(Decoding):
    text: str = Field(description="the text to speak")
    lang: str = Field("en", description="its language code")
    rerank: int = Field(0, ge=0, description="T2S candidates; the one the model's own ASR finds likeliest is kept")


def form_decoding(strategy: Annotated[Literal["greedy", "beam", "sample"], Form()] = "greedy",
                  beam_size: Annotated[int, Form(**BOUNDS["beam_size"].pydantic())] = _D.beam_size,
                  max_new_tokens: Annotated[int, Form(**BOUNDS["max_new_tokens"].pydantic())] = _D.max_new_tokens,
                  temperature: Annotated[float, Form(**BOUNDS["temperature"].pydantic())] = _D.temperature,
                  top_k: Annotated[int, Form(**BOUNDS["top_k"].pydantic())] = _D.top_k,
                  top_p: Annotated[float, Form(**BOUNDS["top_p"].pydantic())] = _D.top_p,
                  seed: Annotated[int, Form(**BOUNDS["seed"].pydantic())] = _D.seed) -> dict:
    """The decoding fields of a multipart request (the same bounds as `Decoding`)."""
    return {"strategy": strategy, "beam_size": beam_size, "max_new_tokens": max_new_tokens,
            "temperature": temperature, "top_k": top_k, "top_p": top_p, "seed": seed}


# -- errors ---------------------------------------------------------------------------------------
def _validation_message(errors: list[dict]) -> tuple[str, str | None]:
    parts, first = [], None
    for e in errors:
        loc = [str(x) for x in e.get("loc", ()) if x not in ("body", "query", "path", "header")]
        name = ".".join(loc) or "body"
        first = first or (loc[-1] if loc else None)
        msg = e.get("msg", "invalid")
        if e.get("type") == "missing" and loc and loc[-1] in EXPECTED:
            msg += f"; expected {EXPECTED[loc[-1]]}"
        elif e.get("type") == "json_invalid":
            msg = "the body is not valid JSON; expected a JSON object"
        parts.append(f"{name}: {msg}")
    return "; ".join(parts), first


def install_error_handlers(app: FastAPI, public=lambda message: message) -> None:
    """Every error as `error_response`; `public(message)` takes out what a client must not read (the model's path)."""

    def reply(status: int, message: str, *args, **kwargs) -> JSONResponse:
        return error_response(status, public(message), *args, **kwargs)

    @app.exception_handler(RequestError)
    async def request_error(request: Request, e: RequestError):
        return reply(e.status, str(e), e.param, e.code, e.kind)

    @app.exception_handler(UserError)
    async def user_error(request: Request, e: UserError):  # the model refused an input (e.g. no units made)
        return reply(400, str(e))

    @app.exception_handler(Busy)
    async def busy(request: Request, e: Busy):
        return reply(503, f"the server is busy: {e}; retry shortly", None, "busy", "server_busy", {"Retry-After": "1"})

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, e: RequestValidationError):
        message, param = _validation_message(e.errors())
        return reply(422, message, param, "invalid_field")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException):
        message = e.detail if isinstance(e.detail, str) else json.dumps(e.detail)
        if e.status_code == 404:
            message = f"{request.url.path}: no such route (the routes are listed at /docs)"
        return reply(e.status_code, message, None, None, "invalid_request_error")

    @app.exception_handler(Exception)
    async def bug(request: Request, e: Exception):
        log.exception("%s %s failed", request.method, request.url.path)
        return reply(500, f"internal error ({type(e).__name__}); this is a bug in dmlm serve, see the server log",
                     None, None, "server_error")


def _hide_path(path: Path):
    """message -> the message with `path` (the model's folder, absolute or as given) replaced by its name."""
    forms = sorted({str(path), str(path.resolve()), str(path.absolute())}, key=len, reverse=True)

    def public(message: str) -> str:
        for form in forms:
            message = message.replace(form, path.name)
        return message

    return public


# -- the app ---------------------------------------------------------------------------------------
def create_app(model: DMLM, cfg: ServeConfig | None = None) -> FastAPI:
    """The app over a loaded model; run it with uvicorn (`dmlm.serve.server.serve`) or a test client."""
    import dmlm

    cfg = cfg or ServeConfig()
    svc = Service(model, cfg)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await svc.start()
        yield
        await svc.stop()  # uvicorn has let the requests in flight finish first

    app = FastAPIOffline(title="dmlm serve", version=dmlm.__version__, lifespan=lifespan,
                         description="A dmlm model's tasks over HTTP, with OpenAI-compatible audio routes.")
    app.state.service = svc
    app.add_middleware(BodyLimit, max_bytes=cfg.max_upload_bytes, seconds=cfg.receive_seconds)
    app.add_middleware(HostCheck, allowed=cfg.host_names())  # added last: the outermost, so checked first
    install_error_handlers(app, _hide_path(model.path))

    async def auth(request: Request) -> None:
        if not cfg.api_key:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), cfg.api_key.encode()):
            raise RequestError("a missing or wrong API key: send `Authorization: Bearer KEY` with the key given to "
                               "`dmlm serve --api-key`", 401, None, "invalid_api_key", "authentication_error")

    v1 = APIRouter(prefix="/v1", dependencies=[Depends(auth)])

    @app.get("/health", summary="What the server holds")
    async def health() -> dict:
        info = svc.info
        return {"status": "ok", "version": dmlm.__version__, "model": model.path.name, "model_name": cfg.model_name,
                "tasks": model.tasks, "routes": svc.routes(), "targets": svc.targets, "languages": svc.languages,
                "speech_ways": svc.ways,
                "fingerprints": info["fingerprints"], "vocoder": svc.has_vocoder, "params": info["params"],
                "auth": bool(cfg.api_key), "limits": cfg.limits(),
                "batching": {"max_batch": cfg.max_batch, "max_wait_ms": cfg.max_wait_ms,
                             "calls": svc.batcher.calls, "largest": svc.batcher.largest,
                             "pending": svc.batcher.pending}}

    v1.include_router(_media_routes(svc, cfg))
    v1.include_router(_text_routes(svc, cfg))
    from dmlm.serve.openai_routes import openai_router

    v1.include_router(openai_router(svc))
    app.include_router(v1)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse((STATIC / "index.html").read_text(encoding="utf-8"))

    return app


def _media_routes(svc: Service, cfg: ServeConfig) -> APIRouter:
    """The routes that take an upload: speech (ASR, S2TT) and images (I2T)."""
    r = APIRouter()

    @r.post("/transcribe", summary="Speech -> text (ASR)")
    async def transcribe(audio: Annotated[UploadFile, File(description="wav, flac, ogg or mp3; any rate and channels")],
                         decoding: Annotated[dict, Depends(form_decoding)], lang: Annotated[str, Form()] = "en") -> dict:
        t0 = time.perf_counter()
        svc.require("transcribe")
        lang, decoding = svc.check_lang(lang, "lang"), svc.check_decoding(decoding)
        wav, seconds = await run_in_threadpool(read_audio, await read_upload(audio), "audio", cfg.max_audio_seconds,
                                               cfg.max_audio_samples)
        done = await svc.transcribe(wav, lang, decoding)
        return {"text": done.value, "duration": round(seconds, 3), "seconds": round(time.perf_counter() - t0, 4),
                "batch_size": done.batch_size}

    @r.post("/translate", summary="Speech -> text in another language (S2TT)")
    async def translate(audio: Annotated[UploadFile, File(description="wav, flac, ogg or mp3; any rate and channels")],
                        decoding: Annotated[dict, Depends(form_decoding)], to: Annotated[str | None, Form()] = None,
                        src: Annotated[str, Form()] = "en") -> dict:
        t0 = time.perf_counter()
        svc.require("translate")
        to = svc.check_lang(to or svc.targets[0], "to", targets=True)
        src, decoding = svc.check_lang(src, "src"), svc.check_decoding(decoding)
        wav, seconds = await run_in_threadpool(read_audio, await read_upload(audio), "audio", cfg.max_audio_seconds,
                                               cfg.max_audio_samples)
        done = await svc.translate(wav, to, src, decoding)
        return {"text": done.value, "to": to, "duration": round(seconds, 3),
                "seconds": round(time.perf_counter() - t0, 4), "batch_size": done.batch_size}

    @r.post("/caption", summary="Image -> caption (I2T)")
    async def caption(image: Annotated[UploadFile, File(description="png, jpeg, gif, bmp or webp")],
                      decoding: Annotated[dict, Depends(form_decoding)], lang: Annotated[str, Form()] = "en") -> dict:
        t0 = time.perf_counter()
        svc.require("caption")
        lang, decoding = svc.check_lang(lang, "lang"), svc.check_decoding(decoding)
        img = await run_in_threadpool(read_image, await read_upload(image), "image", cfg.max_image_pixels)
        done = await svc.caption(img, lang, decoding)
        return {"text": done.value, "width": img.width, "height": img.height,
                "seconds": round(time.perf_counter() - t0, 4), "batch_size": done.batch_size}

    @r.post("/translate-speech", summary="Speech -> speech in another language (S2ST + the vocoder), audio/wav",
            responses={200: {"content": {"audio/wav": {}}, "description": "16-bit PCM wav, 16 kHz mono"}})
    async def translate_speech(audio: Annotated[UploadFile, File(description="wav, flac, ogg or mp3; any rate and "
                                                                             "channels")],
                               decoding: Annotated[dict, Depends(form_decoding)],
                               to: Annotated[str | None, Form(description="target language (default: the first)")] = None,
                               src: Annotated[str, Form()] = "en",
                               how: Annotated[WAYS | None, Form(description="direct (s2st), chained (s2st_chain: text, "
                                              "then units, one decode) or cascade (s2tt, then t2s); default: the "
                                              "first the model was trained for (/health `speech_ways`)")] = None
                               ) -> Response:
        t0 = time.perf_counter()
        svc.require("translate-speech")
        how, to = svc.check_way(how, to)
        src, decoding = svc.check_lang(src, "src"), svc.check_decoding(decoding, speech_out=True)
        wav, seconds = await run_in_threadpool(read_audio, await read_upload(audio), "audio", cfg.max_audio_seconds,
                                               cfg.max_audio_samples)
        done = await svc.translate_speech(wav, to, src, how, decoding)
        data, mime = await run_in_threadpool(encode_audio, done.value.samples, done.value.sample_rate, "wav")
        return Response(data, media_type=mime, headers={
            "X-Dmlm-Seconds": f"{time.perf_counter() - t0:.4f}", "X-Dmlm-Duration": f"{done.value.seconds:.3f}",
            "X-Dmlm-Input-Duration": f"{seconds:.3f}", "X-Dmlm-To": to, "X-Dmlm-How": how,
            "X-Dmlm-Batch-Size": str(done.batch_size), "Content-Disposition": 'inline; filename="translation.wav"'})
    return r


def _text_routes(svc: Service, cfg: ServeConfig) -> APIRouter:
    """The routes that take text: speech units and speech (T2S)."""
    r = APIRouter()

    def text_request(body: TextIn) -> tuple[str, str, dict]:
        text = read_text(body.text, "text", cfg.max_text_chars)
        decoding = svc.check_decoding(body.model_dump(exclude={"text", "lang"}), speech_out=True)
        return text, svc.check_lang(body.lang, "lang"), decoding

    @r.post("/synthesize-units", summary="Text -> speech units (T2S)")
    async def synthesize_units(body: TextIn) -> dict:
        t0 = time.perf_counter()
        svc.require("synthesize-units")
        done = await svc.synthesize_units(*text_request(body))
        return {"units": [int(u) for u in done.value], "seconds": round(time.perf_counter() - t0, 4),
                "batch_size": done.batch_size}

    @r.post("/speak", summary="Text -> speech (T2S + the vocoder), audio/wav",
             responses={200: {"content": {"audio/wav": {}}, "description": "16-bit PCM wav, 16 kHz mono"}})
    async def speak(body: TextIn) -> Response:
        t0 = time.perf_counter()
        svc.require("speak")
        done = await svc.speak(*text_request(body))
        data, mime = await run_in_threadpool(encode_audio, done.value.samples, done.value.sample_rate, "wav")
        return Response(data, media_type=mime, headers={
            "X-Dmlm-Seconds": f"{time.perf_counter() - t0:.4f}", "X-Dmlm-Duration": f"{done.value.seconds:.3f}",
            "X-Dmlm-Batch-Size": str(done.batch_size), "Content-Disposition": 'inline; filename="speech.wav"'})
    return r
