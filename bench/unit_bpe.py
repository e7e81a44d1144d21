"""Speech tokens per second of audio: Whisper-base k-means units, and byte-pair merges over them.

Mini-world sentences spoken by drawn espeak-ng voices are encoded once by Whisper-base (the
demo's codebook settings: k=1000, frame pairs averaged to 25 Hz); a k-means codebook is fitted
on the training clips; unit merges (`dmlm.tokenizers.unit_bpe`) are fitted on the training
clips' units and counted on *held-out* clips (other sentences and voices' draws), for each
merge count, with and without deduplication. Every held-out sequence must expand back to its
units exactly. The headline is the tokens/s at `--headline` merges against the units' (no
merges, no dedup): how much shorter the LM's speech sequences get.

    python -m bench.unit_bpe [--clips 400] [--heldout 100] [--merges 0,100,250,500,1000] [--quick]
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import numpy as np

from dmlm.util.audio import SAMPLE_RATE


class CachedFrames:
    """The feature extractor's output for clips already encoded (k-means fits without a second pass)."""

    def __init__(self, frame_rate: float, wavs: list[np.ndarray], frames: list[np.ndarray]):
        self.frame_rate = frame_rate
        self._by_clip = {id(w): f for w, f in zip(wavs, frames)}

    def __call__(self, batch: list[np.ndarray]) -> list[np.ndarray]:
        return [self._by_clip[id(w)] for w in batch]


def _encode(feats, wavs: list[np.ndarray]) -> list[np.ndarray]:
    out: list[np.ndarray] = []
    for s in range(0, len(wavs), 64):
        out += feats(wavs[s : s + 64])
    return out


def _rows(cb, train_frames, test_frames, test_seconds: float, train_seconds: float, merge_counts) -> list[dict]:
    """tokens/s (held-out and training clips) for each merge count, with and without dedup."""
    from dmlm.tokenizers.speech import Codebook, fit_unit_bpe

    rows = []
    for dedup in (False, True):
        view = Codebook(cb.centroids, replace(cb.settings, dedup=dedup))
        train_units = [view.frames_to_units(f) for f in train_frames]
        test_units = [view.frames_to_units(f) for f in test_frames]
        for n in merge_counts:
            t = time.perf_counter()
            merged = fit_unit_bpe(view, train_units, n)
            fit_s = time.perf_counter() - t
            bpe = merged.bpe
            test = bpe.encode_batch(test_units) if bpe else [u.tolist() for u in test_units]
            train = bpe.encode_batch(train_units) if bpe else [u.tolist() for u in train_units]
            exact = bpe is None or all(bpe.decode(p) == u.tolist() for p, u in zip(test, test_units))
            if not exact:
                raise AssertionError(f"merges={n} dedup={dedup}: a held-out sequence did not expand back exactly")
            rows.append({"dedup": dedup, "merges_asked": n, "merges": len(bpe.merges) if bpe else 0,
                         "speech_ids": merged.pieces, "fit_seconds": round(fit_s, 2),
                         "tokens_per_second_heldout": round(sum(map(len, test)) / test_seconds, 2),
                         "tokens_per_second_train": round(sum(map(len, train)) / train_seconds, 2),
                         "units_per_token_heldout": round(sum(map(len, test_units)) / max(1, sum(map(len, test))), 3),
                         "round_trip_exact": exact})
    return rows


def main(argv: list[str] | None = None) -> dict:
    from bench.common import write_result
    from bench.tokenize_speed import espeak_clips
    from dmlm.tokenizers.features import WhisperCT2Features
    from dmlm.tokenizers.speech import CodebookSettings, fit_codebook

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--clips", type=int, default=400, help="training clips (k-means and merges are fitted on them)")
    p.add_argument("--heldout", type=int, default=100, help="held-out clips the tokens are counted on")
    p.add_argument("--merges", default="0,100,250,500,1000")
    p.add_argument("--headline", type=int, default=500, help="the merge count reported against the units")
    p.add_argument("--k", type=int, default=1000)
    p.add_argument("--model", default="whisper-base")
    p.add_argument("--quick", action="store_true", help="24 clips, k=32, merges 0,16,64 (CI smoke)")
    args = p.parse_args(argv)
    if args.quick:
        args.clips, args.heldout, args.k, args.merges, args.headline = 16, 8, 32, "0,16,64", 64
    merge_counts = sorted({int(x) for x in args.merges.split(",")} | {0, args.headline})

    t0 = time.perf_counter()
    wavs = espeak_clips(args.clips + args.heldout)
    train_wavs, test_wavs = wavs[: args.clips], wavs[args.clips :]
    feats = WhisperCT2Features(args.model)
    train_frames, test_frames = _encode(feats, train_wavs), _encode(feats, test_wavs)
    t_encode = time.perf_counter() - t0
    settings = CodebookSettings(model=args.model, k=args.k)  # the demo's: 25 Hz, no dedup
    cb = fit_codebook(train_wavs, settings, features=CachedFrames(feats.frame_rate, train_wavs, train_frames))
    seconds = [sum(len(w) for w in ws) / SAMPLE_RATE for ws in (train_wavs, test_wavs)]
    rows = _rows(cb, train_frames, test_frames, seconds[1], seconds[0], merge_counts)

    def rate(dedup: bool, n: int) -> float:
        return next(r["tokens_per_second_heldout"] for r in rows if r["dedup"] == dedup and r["merges_asked"] == n)

    res = write_result(
        "unit_bpe", "speech tokens per second of held-out audio", "tokens/s", rate(False, args.headline),
        rate(False, 0), False, headline=f"{args.headline} merges vs units (no dedup)", rows=rows,
        clips={"train": args.clips, "heldout": args.heldout},
        audio_seconds={"train": round(seconds[0], 1), "heldout": round(seconds[1], 1)},
        codebook={"model": args.model, "k": args.k, "pooling": settings.pooling, "frame_rate": cb.settings.frame_rate},
        encode_and_synthesis_seconds=round(t_encode, 1), total_seconds=round(time.perf_counter() - t0, 1),
    )
    print(f"{'dedup':>6s}{'merges':>8s}{'ids':>7s}{'tok/s held-out':>16s}{'tok/s train':>13s}{'units/token':>13s}")
    for r in rows:
        print(f"{str(r['dedup']):>6s}{r['merges']:>8d}{r['speech_ids']:>7d}{r['tokens_per_second_heldout']:>16.2f}"
              f"{r['tokens_per_second_train']:>13.2f}{r['units_per_token_heldout']:>13.3f}")
    print(f"{res['headline']}: {res['dmlm']:.1f} vs {res['baseline']:.1f} tokens/s (ratio {res['ratio']:.2f}); "
          f"{res['machine']}")
    return res


if __name__ == "__main__":
    main()
