"""Request bodies -> model inputs, model outputs -> response bytes, and the errors a request can get.

Design decisions:
- Uploads are decoded from memory (`soundfile` and Pillow read file-like objects): no named
  temporary file is ever written, so none can be left behind. (Starlette spools a large upload
  to an anonymous temporary file, which the route closes.)
- Limits are checked from the header before anything is decoded: a clip's length from
  `soundfile`'s frame count and an image's size from Pillow's header, so an hour of audio or a
  decompression bomb costs the server no memory.
- Every rejection is a `RequestError` with the HTTP status, the field (`param`) and, for a
  limit, the flag that sets it (`code`); the app renders all of them, and FastAPI's own
  validation errors, as one JSON shape: OpenAI's `{"error": {"message", "type", "param", "code"}}`,
  which the `openai` client turns into its exceptions.
"""

from __future__ import annotations

import io

import numpy as np

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


def read_audio(data: bytes, param: str, max_seconds: float) -> tuple[np.ndarray, float]:
    """An uploaded audio file -> (16 kHz mono float32 samples (N,), its duration in seconds)."""
    import soundfile as sf

    if not data:
        raise RequestError(f"{param}: the upload is empty; expected an audio file ({AUDIO_FORMATS})", 400, param)
    try:
        with sf.SoundFile(io.BytesIO(data)) as f:
            rate, frames = f.samplerate, f.frames
            if rate <= 0:
                raise RequestError(f"{param}: the audio header gives a sample rate of {rate} Hz", 400, param)
            if frames / rate > max_seconds:
                raise limit_error("the audio length (s)", round(frames / rate, 2), "max_audio_seconds", max_seconds, param)
            wav = f.read(dtype="float32", always_2d=True)
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
