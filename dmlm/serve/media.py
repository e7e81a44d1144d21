"""Request bodies -> model inputs, model outputs -> response bytes, and the errors a request can get.

Design decisions:
- Uploads are decoded from memory (`soundfile` and Pillow read file-like objects): no named
  temporary file is ever written, so none can be left behind. (Starlette spools a large upload
  to an anonymous temporary file, which the route closes.)
- Limits are checked from the header before anything is decoded: a clip's length from
  `soundfile`'s frame count and an image's size from Pillow's header, so an hour of audio or a
  decompression bomb costs the server no memory. Audio is bounded by what it decodes to, not
  only by its length: the rate and channel count must be plausible and rate x channels x seconds
  at most `max_audio_samples` (a 338 KB FLAC of silence at 655,350 Hz x 8 channels decodes to
  1.2 GB). What is accepted is decoded in blocks, each downmixed and fed to a streaming
  resampler (bitwise the one-shot `soxr.resample`), so a request holds its 16 kHz mono result
  and one block, never the file's full decoded size.
- Text must be valid Unicode (a lone surrogate from JSON's `\\ud800` would reach the tokenizer
  and fail there).
- Every rejection is a `RequestError` with the HTTP status, the field (`param`) and, for a
  limit, the flag that sets it (`code`); the app renders all of them, and FastAPI's own
  validation errors, as one JSON shape: OpenAI's `{"error": {"message", "type", "param", "code"}}`,
  which the `openai` client turns into its exceptions.
"""

from __future__ import annotations

import io

import numpy as np
from starlette.responses import JSONResponse

from dmlm.util.audio import SAMPLE_RATE, to_mono
from dmlm.util.errors import UserError


class RequestError(UserError):
    """A request the server will not run; `status` is its HTTP status."""

    def __init__(self, message: str, status: int = 400, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.param, self.code, self.kind = status, param, code, kind

    def body(self) -> dict:
        return {"error": {"message": str(self), "type": self.kind, "param": self.param, "code": self.code}}


def error_response(status: int, message: str, param: str | None = None, code: str | None = None,
                   kind: str = "invalid_request_error", headers: dict | None = None) -> JSONResponse:
    """The one error shape of every answer that is not a success (OpenAI's)."""
    if status == 401:
        headers = {"WWW-Authenticate": "Bearer", **(headers or {})}
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}}, status, headers)


def limit_error(what: str, got: float | int, limit: str, maximum: float | int, param: str) -> RequestError:
    """413 naming the limit: `limit` is the ServeConfig field (its flag is --limit-with-dashes)."""
    flag = "--" + limit.replace("_", "-")
    return RequestError(f"{param}: {what} is {got:g}, more than this server accepts ({maximum:g}; {limit}, "
                        f"set with `dmlm serve {flag}`)", 413, param, limit)


async def read_upload(file) -> bytes:
    """A FastAPI `UploadFile`'s bytes; its spooled temporary file is closed (and so removed) at once."""
    try:
        return await file.read()
    finally:
        await file.close()


AUDIO_FORMATS = "wav, flac, ogg (vorbis/opus) or mp3"
AUDIO_RATES = (1_000, 384_000)
"""Sample rates accepted (Hz): 384 kHz is the highest any recorder writes; FLAC's header allows 655,350."""
MAX_CHANNELS = 8
"""Channels accepted: 7.1 surround; a speech upload with more is not what it claims to be."""
BLOCK_FRAMES = 65_536
"""Frames decoded at a time (2 MiB of float32 at 8 channels)."""


def read_audio(data: bytes, param: str, max_seconds: float, max_samples: int) -> tuple[np.ndarray, float]:
    """An uploaded audio file -> (16 kHz mono float32 samples (N,), its duration in seconds)."""
    import soundfile as sf

    if not data:
        raise RequestError(f"{param}: the upload is empty; expected an audio file ({AUDIO_FORMATS})", 400, param)
    try:
        with sf.SoundFile(io.BytesIO(data)) as f:
            check_audio_header(f.samplerate, f.channels, f.frames, param, max_seconds, max_samples)
            wav, rate = _decode_mono(f), SAMPLE_RATE
    except RequestError:
        raise
    except Exception as e:  # soundfile raises LibsndfileError, RuntimeError, TypeError... for what it cannot read
        raise RequestError(f"{param}: cannot read the upload as audio ({' '.join(str(e).split())}); expected "
                           f"{AUDIO_FORMATS}", 400, param) from None
    try:
        wav = to_mono(wav, rate, param, quiet=True)
    except UserError as e:  # empty, too short, NaN samples
        raise RequestError(str(e), 400, param) from None
    return wav, len(wav) / SAMPLE_RATE


def check_audio_header(rate: int, channels: int, frames: int, param: str, max_seconds: float, max_samples: int) -> None:
    """Refuse, from the header alone, audio whose rate, channels, length or decoded size is past the limits."""
    low, high = AUDIO_RATES
    if not low <= rate <= high:
        raise RequestError(f"{param}: the audio header gives a sample rate of {rate} Hz; expected {low} to {high} Hz",
                           400, param)
    if not 1 <= channels <= MAX_CHANNELS:
        raise RequestError(f"{param}: the audio header gives {channels} channels; expected 1 to {MAX_CHANNELS} "
                           "(mono or stereo for speech)", 400, param)
    if frames / rate > max_seconds:
        raise limit_error("the audio length (s)", round(frames / rate, 2), "max_audio_seconds", max_seconds, param)
    if frames * channels > max_samples:
        raise limit_error(f"the decoded size (samples: {rate} Hz x {channels} channels x {frames / rate:.2f} s)",
                          frames * channels, "max_audio_samples", max_samples, param)


def _decode_mono(f) -> np.ndarray:
    """An open `soundfile.SoundFile` -> 16 kHz mono float32, decoded one block at a time (see the module docstring)."""
    import soxr

    stream = None if f.samplerate == SAMPLE_RATE else soxr.ResampleStream(f.samplerate, SAMPLE_RATE, 1, dtype="float32")
    parts, left = [], f.frames  # never more than the header declared (what `read()` would return)
    while left > 0:
        block = f.read(min(BLOCK_FRAMES, left), dtype="float32", always_2d=True)  # (n, channels)
        if not len(block):
            break
        left -= len(block)
        mono = block.mean(axis=1)  # to_mono's downmix, row by row
        parts.append(mono if stream is None else stream.resample_chunk(mono, last=False))
    if stream is not None:
        parts.append(stream.resample_chunk(np.zeros(0, np.float32), last=True))
    return np.concatenate(parts).astype(np.float32, copy=False) if parts else np.zeros(0, np.float32)


def read_image(data: bytes, param: str, max_pixels: int):
    """An uploaded image -> an RGB PIL image (the model's codebook resizes it)."""
    from PIL import Image

    if not data:
        raise RequestError(f"{param}: the upload is empty; expected an image (png, jpeg, ...)", 400, param)
    try:
        with Image.open(io.BytesIO(data)) as img:
            w, h = img.size
            if w * h > max_pixels:
                raise limit_error(f"the image size ({w}x{h}) in pixels", w * h, "max_image_pixels", max_pixels, param)
            if w == 0 or h == 0:
                raise RequestError(f"{param}: the image is empty ({w}x{h})", 400, param)
            img.load()
            return img.convert("RGB")
    except RequestError:
        raise
    except Image.DecompressionBombError:  # past Pillow's own guard (its header check), before ours could run
        raise limit_error("the image size in pixels (at least)", 2 * (Image.MAX_IMAGE_PIXELS or 0), "max_image_pixels",
                          max_pixels, param) from None
    except Exception as e:  # Pillow raises UnidentifiedImageError, OSError, ValueError, SyntaxError...
        raise RequestError(f"{param}: cannot read the upload as an image ({' '.join(str(e).split())}); expected "
                           "png, jpeg, gif, bmp or webp", 400, param) from None


def read_text(text: str, param: str, max_chars: int) -> str:
    text = " ".join(text.split())
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:  # a lone surrogate (JSON's "\ud800")
        raise RequestError(f"{param}: the text holds {text[e.start]!r} at character {e.start}, a lone surrogate "
                           "that is no Unicode character; expected valid Unicode text", 400, param) from None
    if not text:
        raise RequestError(f"{param}: the text is empty; expected the sentence to speak", 400, param)
    if len(text) > max_chars:
        raise limit_error("the text length (characters)", len(text), "max_text_chars", max_chars, param)
    return text


# response_format -> (soundfile format, subtype, content type); pcm is raw, see `encode_audio`
SPEECH_FORMATS = {
    "wav": ("WAV", "PCM_16", "audio/wav"),
    "flac": ("FLAC", "PCM_16", "audio/flac"),
    "mp3": ("MP3", "MPEG_LAYER_III", "audio/mpeg"),
    "opus": ("OGG", "OPUS", "audio/ogg"),
    "pcm": (None, None, "audio/pcm"),
}
PCM_RATE = 24_000  # OpenAI's `pcm`: raw 16-bit little-endian mono at 24 kHz


def encode_audio(samples: np.ndarray, rate: int, fmt: str) -> tuple[bytes, str]:
    """Samples (N,) at `rate` -> (file bytes, content type) in `fmt` (a key of SPEECH_FORMATS)."""
    import soundfile as sf

    container, subtype, mime = SPEECH_FORMATS[fmt]
    wav = np.clip(np.asarray(samples, dtype=np.float32), -1.0, 1.0)
    if container is None:
        import soxr

        pcm = soxr.resample(wav, rate, PCM_RATE) if rate != PCM_RATE else wav
        return (np.clip(pcm, -1, 1) * 32767).astype("<i2").tobytes(), mime
    buf = io.BytesIO()
    sf.write(buf, wav, rate, format=container, subtype=subtype)
    return buf.getvalue(), mime
