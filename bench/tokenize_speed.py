"""Speech tokenization throughput (× real time): dmlm vs. the same encoder padded to 30 s.

dmlm runs the Whisper encoder on each clip's own length (batched by length, padding to a
0.5 s quantum) and assigns k-means units in torch. The baseline is the usual way of using
Whisper's encoder: every clip padded to 30 s, output sliced. Both use the same CTranslate2
model, compute type and threads, and the same clips; both include log-mel computation and
unit assignment, so the ratio isolates what own-length encoding buys.

    python -m bench.tokenize_speed [--clips N] [--quick]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from dmlm.util.audio import SAMPLE_RATE


def espeak_clips(n: int, seed: int = 1) -> list[np.ndarray]:
    """`n` mini-world sentences spoken by drawn espeak-ng voices (16 kHz)."""
    import random

    from dmlm.data import miniworld
    from dmlm.data.synth import draw_voice, synthesize

    rng = random.Random(0)
    return [synthesize(s.text, draw_voice(rng)) for s in miniworld.generate_splits(n, 0, 0, seed=seed)["train"]]


def random_codebook(feats, wav: np.ndarray, model: str):
    """A codebook of the default k and pooling with random centroids: centroids don't change the cost."""
    from dmlm.tokenizers.speech import Codebook, CodebookSettings

    settings = CodebookSettings(model=model)
    dim = feats([wav])[0].shape[1]
    return Codebook(np.random.default_rng(0).standard_normal((settings.k, dim)).astype(np.float32), settings)


def main(argv: list[str] | None = None) -> dict:
    from bench.common import write_result
    from dmlm.tokenizers.features import WhisperCT2Features, n_frames

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--clips", type=int, default=64)
    p.add_argument("--model", default="whisper-base")
    p.add_argument("--quick", action="store_true", help="8 clips (CI smoke)")
    args = p.parse_args(argv)
    n = 8 if args.quick else args.clips

    wavs = espeak_clips(n)
    audio_s = sum(len(w) for w in wavs) / SAMPLE_RATE

    feats = WhisperCT2Features(args.model)
    padded = WhisperCT2Features(args.model, pad_quantum=30.0)  # every clip padded to 30 s
    cb = random_codebook(feats, wavs[0], args.model)

    def run(fx) -> float:
        t = time.perf_counter()
        for f in fx(wavs):
            cb.frames_to_units(f)
        return time.perf_counter() - t

    run(feats)  # warm-up
    t_dmlm = min(run(feats) for _ in range(2))
    t_base = min(run(padded) for _ in range(1 if args.quick else 2))
    res = write_result(
        "tokenize_speed", "speech tokenization speed", "x real time", audio_s / t_dmlm, audio_s / t_base, True,
        clips=n, audio_seconds=round(audio_s, 1), model=args.model, compute_type="int8",
        frames=int(sum(n_frames(len(w)) for w in wavs)),
    )
    print(f"{'':24s}{'x real time':>14s}")
    print(f"{'dmlm (own length)':24s}{res['dmlm']:14.1f}")
    print(f"{'padded to 30 s':24s}{res['baseline']:14.1f}")
    print(f"ratio {res['ratio']:.2f}x  ({n} clips, {audio_s:.0f} s of audio; {res['machine']})")
    return res


if __name__ == "__main__":
    main()
