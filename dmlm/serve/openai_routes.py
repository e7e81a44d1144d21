"""OpenAI's audio API over the served model, so OpenAI clients and SDKs work unchanged.

    POST /v1/audio/transcriptions   multipart `file`, `model`, `language`, `response_format`, `temperature`
    POST /v1/audio/translations     the same (+ dmlm's `to`: the target language; default the model's first)
    POST /v1/audio/speech           JSON `input`, `model`, `voice`, `response_format`, `speed`
    GET  /v1/models, /v1/models/ID  the one model, named by `--model-name`

Design decisions:
- The fields follow the OpenAI API reference; what this model cannot honour is refused with a
  400 naming the field (streaming, `instructions`, a `speed` other than 1, aac, word
  timestamps) rather than ignored, so a client never gets something other than it asked for.
  Two fields are accepted and have no effect, because clients send them by habit: `model`
  (the server holds one model; any name is served by it) and `voice` (the model has the one
  voice it was trained on). `prompt` is accepted and unused (the model has no prompt context).
- `temperature` 0 (OpenAI's default) is greedy decoding; above 0 it samples at that temperature.
- OpenAI's translations always produce English; a dmlm model translates from the language it
  was trained on, so the target is `to` (an extra field: `extra_body={"to": "es"}` in the
  `openai` client), by default the model's first S2TT target.
- Responses: `json` {"text"}; `text`; `verbose_json` with language, duration and one segment
  (the model gives no timestamps inside a clip); `srt`/`vtt` with that one cue. Speech: mp3
  (OpenAI's default), opus, flac, wav (16 kHz) and pcm (raw 16-bit at OpenAI's 24 kHz).
"""

from __future__ import annotations

import math
import os
import time
from typing import Annotated, Literal

from fastapi import APIRouter, File, Form, UploadFile
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from dmlm.serve.media import SPEECH_FORMATS, RequestError, encode_audio, read_audio, read_text, read_upload
from dmlm.serve.service import Service

TextFormat = Literal["json", "text", "verbose_json", "srt", "vtt"]


class SpeechIn(BaseModel):
    """POST /v1/audio/speech (OpenAI's `CreateSpeechRequest`, plus `lang`)."""

    model_config = ConfigDict(extra="forbid")
    input: str = Field(description="the text to speak")
    model: str | None = Field(None, description="accepted, unused: the server holds one model")
    voice: str | dict | None = Field(None, description="accepted, unused: the model has one voice")
    instructions: str | None = None
    response_format: Literal["mp3", "opus", "aac", "flac", "wav", "pcm"] = "mp3"
    speed: float = Field(1.0, ge=0.25, le=4.0)
    stream_format: Literal["audio", "sse"] | None = None
    lang: str = Field("en", description="dmlm: the language of `input`")


def _timestamp(seconds: float, sep: str) -> str:
    ms = int(round(seconds * 1000))
    return f"{ms // 3_600_000:02d}:{ms // 60_000 % 60:02d}:{ms // 1000 % 60:02d}{sep}{ms % 1000:03d}"


def text_response(text: str, fmt: str, task: str, lang: str, duration: float, temperature: float, seconds: float):
    """The body OpenAI gives for `response_format` = fmt."""
    headers = {"X-Dmlm-Seconds": f"{seconds:.4f}"}
    if fmt == "text":
        return PlainTextResponse(text + "\n", headers=headers)
    if fmt == "srt":
        return PlainTextResponse(f"1\n{_timestamp(0, ',')} --> {_timestamp(duration, ',')}\n{text}\n\n", headers=headers)
    if fmt == "vtt":
        return PlainTextResponse(f"WEBVTT\n\n{_timestamp(0, '.')} --> {_timestamp(duration, '.')}\n{text}\n\n",
                                 headers=headers, media_type="text/vtt")
    if fmt == "verbose_json":
        segment = {"id": 0, "seek": 0, "start": 0.0, "end": round(duration, 3), "text": text, "temperature": temperature}
        return JSONResponse({"task": task, "language": lang, "duration": round(duration, 3), "text": text,
                             "segments": [segment]}, headers=headers)
    return JSONResponse({"text": text, "usage": {"type": "duration", "seconds": math.ceil(duration)}},
                        headers=headers)


def _decoding(temperature: float) -> dict:
    return {"strategy": "sample", "temperature": temperature} if temperature > 0 else {}


def refuse_unsupported_transcription(stream: bool, granularities: list[str] | None, fmt: str) -> None:
    """OpenAI transcription options this server cannot honour, refused by field."""
    if stream:
        raise RequestError("stream: streamed transcription is not supported; send stream=false", 400, "stream")
    if granularities and any(g != "segment" for g in granularities) and fmt == "verbose_json":
        raise RequestError("timestamp_granularities: this model gives no word timestamps; use 'segment'", 400,
                           "timestamp_granularities[]")


def refuse_unsupported_speech(body: SpeechIn) -> None:
    """OpenAI speech options this server cannot honour, refused by field."""
    if body.response_format not in SPEECH_FORMATS:
        raise RequestError(f"response_format: {body.response_format} is not supported; expected one of "
                           f"{', '.join(SPEECH_FORMATS)}", 400, "response_format")
    if body.speed != 1.0:
        raise RequestError(f"speed: the model speaks at one speed; expected 1.0, got {body.speed}", 400, "speed")
    if body.instructions:
        raise RequestError("instructions: this model takes no voice instructions; leave the field out", 400,
                           "instructions")
    if body.stream_format == "sse":
        raise RequestError("stream_format: sse is not supported; expected audio", 400, "stream_format")


def openai_router(svc: Service) -> APIRouter:
    cfg = svc.cfg
    r = APIRouter(tags=["OpenAI-compatible"])
    created = int(os.path.getmtime(svc.model.path)) if svc.model.path.exists() else 0

    def model_card() -> dict:
        return {"id": cfg.model_name, "object": "model", "created": created, "owned_by": "dmlm"}

    @r.get("/models", summary="The served model (OpenAI's list models)")
    async def models() -> dict:
        return {"object": "list", "data": [model_card()]}

    @r.get("/models/{model_id}", summary="The served model (OpenAI's retrieve model)")
    async def model(model_id: str) -> dict:
        if model_id != cfg.model_name:
            raise RequestError(f"model {model_id!r}: this server holds one model, {cfg.model_name!r}", 404, "model",
                               "model_not_found")
        return model_card()

    @r.post("/audio/transcriptions", summary="Speech -> text (OpenAI's create transcription)")
    async def transcriptions(
        file: Annotated[UploadFile, File(description="wav, flac, ogg or mp3")],
        model: Annotated[str | None, Form()] = None, language: Annotated[str | None, Form()] = None,
        prompt: Annotated[str | None, Form()] = None, response_format: Annotated[TextFormat, Form()] = "json",
        temperature: Annotated[float, Form(ge=0, le=1)] = 0.0, stream: Annotated[bool, Form()] = False,
        timestamp_granularities: Annotated[list[str] | None, Form(alias="timestamp_granularities[]")] = None,
    ):
        t0 = time.perf_counter()
        svc.require("transcribe")
        refuse_unsupported_transcription(stream, timestamp_granularities, response_format)
        lang = svc.check_lang(language or "en", "language")
        wav, duration = await run_in_threadpool(read_audio, await read_upload(file), "file", cfg.max_audio_seconds,
                                                 cfg.max_audio_samples)
        done = await svc.transcribe(wav, lang, svc.check_decoding(_decoding(temperature)))
        return text_response(done.value, response_format, "transcribe", lang, duration, temperature,
                             time.perf_counter() - t0)

    @r.post("/audio/translations", summary="Speech -> text in the model's target language (OpenAI's create translation)")
    async def translations(
        file: Annotated[UploadFile, File(description="wav, flac, ogg or mp3")],
        model: Annotated[str | None, Form()] = None, prompt: Annotated[str | None, Form()] = None,
        response_format: Annotated[TextFormat, Form()] = "json", temperature: Annotated[float, Form(ge=0, le=1)] = 0.0,
        to: Annotated[str | None, Form(description="dmlm: target language (default: the model's first)")] = None,
    ):
        t0 = time.perf_counter()
        svc.require("translate")
        target = svc.check_lang(to or svc.targets[0], "to", targets=True)
        wav, duration = await run_in_threadpool(read_audio, await read_upload(file), "file", cfg.max_audio_seconds,
                                                 cfg.max_audio_samples)
        done = await svc.translate(wav, target, "en", svc.check_decoding(_decoding(temperature)))
        return text_response(done.value, response_format, "translate", target, duration, temperature,
                             time.perf_counter() - t0)

    @r.post("/audio/speech", summary="Text -> speech (OpenAI's create speech)",
            responses={200: {"content": {m: {} for _, _, m in SPEECH_FORMATS.values()}}})
    async def speech(body: SpeechIn) -> Response:
        t0 = time.perf_counter()
        svc.require("speak")
        refuse_unsupported_speech(body)
        text = read_text(body.input, "input", cfg.max_text_chars)
        done = await svc.speak(text, svc.check_lang(body.lang, "lang"), {})
        data, mime = await run_in_threadpool(encode_audio, done.value.samples, done.value.sample_rate,
                                             body.response_format)
        return Response(data, media_type=mime, headers={"X-Dmlm-Seconds": f"{time.perf_counter() - t0:.4f}",
                                                         "X-Dmlm-Batch-Size": str(done.batch_size)})

    return r

