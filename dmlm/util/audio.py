"""Audio I/O: everything dmlm reads becomes 16 kHz mono float32.

Design decisions:
- `soundfile` reads, `soxr` resamples (PyPI torchaudio does not work beside the CPU torch).
- Stereo is downmixed and other rates are resampled, with a warning that names the file, so
  a user learns their corpus is not what they thought; unreadable, empty or silent-length
  audio raises `AudioError` naming the file.
- Writes are atomic: a wav appears complete or not at all.
"""

from __future__ import annotations

from dmlm.util.errors import UserError

import logging
from pathlib import Path

import numpy as np
import soundfile as sf

SAMPLE_RATE = 16_000
log = logging.getLogger(__name__)


class AudioError(UserError):
    """Audio that cannot be used, with the file named."""


def load_audio(path: str | Path, sample_rate: int = SAMPLE_RATE, min_seconds: float = 0.05) -> np.ndarray:
    """Read `path` as mono float32 at `sample_rate`; shape (N,)."""
    path = Path(path)
    if not path.is_file():
        raise AudioError(f"{path}: audio file not found")
    try:
        wav, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as e:  # soundfile raises several types for corrupt files
        raise AudioError(f"{path}: cannot read audio ({e})") from None
    if wav.shape[0] == 0:
        raise AudioError(f"{path}: audio is empty (0 samples)")
    if wav.shape[1] > 1:
        log.warning("%s: %d channels, downmixing to mono", path, wav.shape[1])
    wav = wav.mean(axis=1)
    if sr != sample_rate:
        import soxr

        log.warning("%s: sample rate %d Hz, resampling to %d Hz", path, sr, sample_rate)
        wav = soxr.resample(wav, sr, sample_rate).astype(np.float32)
    if len(wav) < min_seconds * sample_rate:
        raise AudioError(f"{path}: audio is {len(wav) / sample_rate:.3f} s long, expected at least {min_seconds} s")
    if not np.isfinite(wav).all():
        raise AudioError(f"{path}: audio contains NaN or infinite samples")
    return np.ascontiguousarray(wav, dtype=np.float32)


def write_wav(path: str | Path, wav: np.ndarray, sample_rate: int = SAMPLE_RATE) -> None:
    """Atomically write a 16-bit PCM wav (an `OutputError` on a full disk or missing permission)."""
    from dmlm.util.io import atomic_file

    with atomic_file(path, suffix=".wav") as tmp:
        sf.write(tmp, np.asarray(wav, dtype=np.float32), sample_rate, subtype="PCM_16")
