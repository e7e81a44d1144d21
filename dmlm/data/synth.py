"""Speech synthesis with espeak-ng: the offline source of paired speech for demo corpora.

Design decisions:
- espeak-ng (a Debian package) is fast (~10 ms per sentence) and has many voices: accents
  (`en-us`, `en-gb`, `en-029`, …) times variants (`+m3`, `+f2`, …), plus rate and pitch.
  Each utterance draws a voice, rate and pitch from a seeded RNG, so a corpus is reproducible.
- One voice (accent+variant combination) is never used for training: the test split carries
  a second copy of its sentences in that voice, reported separately ("unseen voice").
  Both its accent and its variant occur in training in other combinations, as a new speaker
  of a known dialect would.
- Synthesis is resumable: each wav is written atomically, an existing wav is kept.
"""

from __future__ import annotations

import random
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
from tqdm import tqdm

from dmlm.audio import SAMPLE_RATE, write_wav

TRAIN_ACCENTS = ("en-us", "en-gb", "en-029", "en-gb-scotland", "en-us-nyc")
TRAIN_VARIANTS = ("m1", "m3", "m7", "f1", "f2", "f4", "f5")
HELDOUT_VOICE = "en-gb+f4"  # accent and variant each seen in training, never together


@dataclass(frozen=True)
class Voice:
    name: str  # espeak-ng voice, e.g. "en-us+m3"
    rate: int  # words per minute
    pitch: int  # 0..99

    @property
    def speaker(self) -> str:
        return self.name


def training_voices() -> list[str]:
    return [f"{a}+{v}" for a in TRAIN_ACCENTS for v in TRAIN_VARIANTS if f"{a}+{v}" != HELDOUT_VOICE]


def draw_voice(rng: random.Random, heldout: bool = False) -> Voice:
    name = HELDOUT_VOICE if heldout else rng.choice(training_voices())
    return Voice(name=name, rate=rng.randint(145, 185), pitch=rng.randint(35, 65))


def ensure_espeak() -> str:
    """Path of espeak-ng, installing the Debian package when missing (we run as root)."""
    exe = shutil.which("espeak-ng")
    if exe:
        return exe
    try:
        subprocess.run(["apt-get", "install", "-y", "-qq", "espeak-ng"], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError) as e:
        raise RuntimeError(
            "espeak-ng is not installed and `apt-get install espeak-ng` failed; install it "
            f"(Debian/Ubuntu: apt-get install espeak-ng) ({e})"
        ) from None
    exe = shutil.which("espeak-ng")
    if not exe:
        raise RuntimeError("espeak-ng still not found after apt-get install")
    return exe


def synthesize(text: str, voice: Voice, espeak: str = "espeak-ng") -> np.ndarray:
    """Speak `text`; returns 16 kHz mono float32, leading/trailing silence trimmed to 0.1 s."""
    if not text.strip():
        raise ValueError("cannot synthesize empty text")
    with tempfile.NamedTemporaryFile(suffix=".wav") as tmp:
        subprocess.run(
            [espeak, "-v", voice.name, "-s", str(voice.rate), "-p", str(voice.pitch), "-w", tmp.name, text],
            check=True,
            capture_output=True,
        )
        wav, sr = sf.read(tmp.name, dtype="float32")
    if wav.ndim > 1:
        wav = wav.mean(axis=1)
    wav = soxr.resample(wav, sr, SAMPLE_RATE).astype(np.float32)
    return _trim(wav)


def _trim(wav: np.ndarray, threshold: float = 1e-3, pad: float = 0.1) -> np.ndarray:
    voiced = np.flatnonzero(np.abs(wav) > threshold)
    if len(voiced) == 0:
        return wav
    p = int(pad * SAMPLE_RATE)
    return wav[max(0, voiced[0] - p) : voiced[-1] + p]


def synthesize_many(jobs: list[tuple[str, Voice, Path]], workers: int = 2, desc: str = "synthesize") -> list[float]:
    """Synthesize (text, voice, path) jobs in parallel; returns durations in seconds.

    Existing files are kept (resume); each file is written atomically.
    """
    espeak = ensure_espeak()

    def one(job: tuple[str, Voice, Path]) -> float:
        text, voice, path = job
        if path.is_file():
            try:
                return sf.info(str(path)).duration
            except RuntimeError:
                path.unlink()  # unreadable leftovers are redone
        wav = synthesize(text, voice, espeak)
        write_wav(path, wav)
        return len(wav) / SAMPLE_RATE

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(tqdm(pool.map(one, jobs), total=len(jobs), desc=desc, unit="utt"))
