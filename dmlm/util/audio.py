"""Audio I/O: everything dmlm reads becomes 16 kHz mono float32.

Design decisions:
- `soundfile` reads, `soxr` resamples (PyPI torchaudio does not work beside the CPU torch).
- Stereo is downmixed and other rates are resampled, with a warning that names the file, so
  a user learns their corpus is not what they thought; unreadable, empty or silent-length
  audio raises `AudioError` naming the file.
- Audio that reads but is probably not what was meant gets a warning naming the file: a silent
  clip (peak below -80 dBFS) and a truncated file (its header declares more samples than it
  holds: libsndfile reads what is there, so a killed download would otherwise pass unnoticed).
- Writes are atomic: a wav appears complete or not at all.
"""

from __future__ import annotations

import errno
import logging
import os
import re
from pathlib import Path

import numpy as np
import soundfile as sf

from dmlm.util.errors import UserError

SAMPLE_RATE = 16_000
SILENCE_PEAK = 1e-4  # -80 dBFS: below a 16-bit file's quietest step but a few
log = logging.getLogger(__name__)


class AudioError(UserError):
    """Audio that cannot be used, with the file named."""


def to_mono(samples, sample_rate: int, where: str = "audio", target_rate: int = SAMPLE_RATE,
            min_seconds: float = 0.05, quiet: bool = False) -> np.ndarray:
    """`samples` (N,) or (N, channels), any float/int dtype, at `sample_rate` -> mono float32 at
    `target_rate`, (N,); downmixed and resampled (with a warning naming `where` unless `quiet`).

    Integer samples are scaled to [-1, 1) (unsigned ones about their midpoint, as 8-bit WAV stores them).
    Empty, too short or non-finite audio is an `AudioError`."""
    wav = np.asarray(samples)
    if wav.dtype.kind == "u":  # unsigned PCM (8-bit WAV) is centred on half its range, not on 0
        half = float(np.iinfo(wav.dtype).max // 2 + 1)
        wav = (wav.astype(np.float64) - half) / half
    elif wav.dtype.kind == "i":
        wav = wav.astype(np.float32) / float(np.iinfo(wav.dtype).max + 1)
    elif wav.dtype.kind != "f":
        raise AudioError(f"{where}: expected audio samples (numbers), got an array of {wav.dtype}")
    wav = wav.astype(np.float32, copy=False)
    if wav.size == 0:
        raise AudioError(f"{where}: audio is empty (0 samples)")
    if wav.ndim == 2:
        if wav.shape[0] <= 8 < wav.shape[1]:  # (channels, N) from a torch-style caller
            wav = wav.T
        if wav.shape[1] > 1 and not quiet:
            log.warning("%s: %d channels, downmixing to mono", where, wav.shape[1])
        wav = wav.mean(axis=1)
    elif wav.ndim != 1:
        raise AudioError(f"{where}: expected samples of shape (N,) or (N, channels), got {wav.shape}")
    if wav.shape[0] == 0:
        raise AudioError(f"{where}: audio is empty (0 samples)")
    if not isinstance(sample_rate, (int, np.integer)) or sample_rate <= 0:
        raise AudioError(f"{where}: sample rate must be a positive integer in Hz, got {sample_rate!r}")
    if sample_rate != target_rate:
        import soxr

        if not quiet:
            log.warning("%s: sample rate %d Hz, resampling to %d Hz", where, sample_rate, target_rate)
        wav = soxr.resample(wav, int(sample_rate), target_rate).astype(np.float32)
    if len(wav) < min_seconds * target_rate:
        raise AudioError(f"{where}: audio is {len(wav) / target_rate:.3f} s long, expected at least {min_seconds} s")
    if not np.isfinite(wav).all():
        raise AudioError(f"{where}: audio contains NaN or infinite samples")
    return np.ascontiguousarray(wav, dtype=np.float32)


def load_audio(path: str | Path, sample_rate: int = SAMPLE_RATE, min_seconds: float = 0.05) -> np.ndarray:
    """Read `path` as mono float32 at `sample_rate`; shape (N,)."""
    path = Path(path)
    if not path.is_file():
        raise AudioError(f"{path}: audio file not found")
    try:
        wav, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as e:  # soundfile raises several types for corrupt files
        raise AudioError(f"{path}: cannot read audio ({e})") from None
    _warn_if_truncated(path)
    out = to_mono(wav, sr, str(path), sample_rate, min_seconds)
    peak = float(np.abs(out).max())
    if peak < SILENCE_PEAK:
        log.warning("%s: the audio is silent (peak %.1g, below -80 dBFS)", path, peak)
    return out


def _warn_if_truncated(path: Path) -> None:
    """Warn when the file's header declares more sample data than the file holds (WAV-like formats)."""
    try:
        extra = sf.info(str(path)).extra_info
    except Exception:  # noqa: BLE001  (read above; info is only a check)
        return
    m = re.search(r"^data\s*:\s*(\d+) \(should be (\d+)\)", extra, re.M)
    if m and int(m[2]) < int(m[1]):
        log.warning("%s: the file is truncated (its header declares %s bytes of samples, it holds %s); "
                    "reading what is there", path, m[1], m[2])


WRITE_FORMATS = {".wav": "PCM_16", ".flac": "PCM_16", ".ogg": "VORBIS", ".mp3": "MPEG_LAYER_III"}
"""The audio files dmlm writes, by extension (soundfile picks the container from it), with their encoding."""


def write_wav(path: str | Path, wav: np.ndarray, sample_rate: int = SAMPLE_RATE) -> None:
    """Atomically write audio in the format `path`'s extension names (`WRITE_FORMATS`: 16-bit PCM wav
    or flac, ogg vorbis, mp3); another extension is refused, not written as wav bytes under its name.
    A full disk or missing permission is an `OutputError`, whichever layer reports it."""
    from dmlm.util.io import atomic_file

    path = Path(path)
    subtype = WRITE_FORMATS.get(path.suffix.lower())
    if subtype is None:
        raise UserError(f"{path}: cannot write audio as {path.suffix or 'a file without an extension'}; "
                        f"dmlm writes {', '.join(WRITE_FORMATS)}")
    with atomic_file(path) as tmp:
        try:
            sf.write(tmp, np.asarray(wav, dtype=np.float32), sample_rate, subtype=subtype)
        except (AssertionError, sf.LibsndfileError) as e:  # libsndfile's short write or failed close
            if _free_bytes(tmp.parent) < (1 << 20):  # atomic_file says "no space" and removes the temp file
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)) from None
            raise OSError(errno.EIO, f"the audio library failed ({type(e).__name__}: {e})") from None


def _free_bytes(folder: Path) -> int:
    """Space left to an unprivileged writer in `folder` (libsndfile reports a full disk as a short write)."""
    st = os.statvfs(folder)
    return st.f_bavail * st.f_frsize
