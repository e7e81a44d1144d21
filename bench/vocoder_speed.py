"""Vocoder speed (x real time): dmlm's unit vocoder vs. a unit HiFi-GAN generator, same clips.

dmlm: `Vocoder.synthesize_batch` (conv net -> log-mel envelope -> kNN matching, when the vocoder
has a matching set -> log-magnitude spectrogram -> fast Griffin-Lim),
end to end from unit ids to waveforms. Baseline: the generator of the unit HiFi-GAN that
textless speech work uses to vocode k-means units (Polyak et al. 2021, "Speech Resynthesis
from Discrete Disentangled Self-Supervised Representations": 128-dim unit embedding, HiFi-GAN
V1 generator, 512 channels, upsampling x5 x4 x4 x2 x2 = 320 from 50 Hz units to 16 kHz; our
25 Hz units are repeated x2 to feed it). It is the design the issue would otherwise reach for,
so the ratio says what choosing Griffin-Lim buys in speed; it says nothing about quality (see
`dmlm.evaluation.speech.evaluate_resynthesis` for that). The generator runs with random weights:
its cost does not depend on them. Both run in this process on the same unit sequences, batch
size and threads, are warmed up, and are timed best of `--repeats`, interleaved.

Units are the demo's test units (`runs/demo/units/test`) when they exist, else random units of
the same lengths (2-3.6 s). The vocoder is `--vocoder` (a vocoder folder or a checkpoint with
`vocoder/`); without one an untrained vocoder of the default shape is timed (the JSON says
"trained": false), which costs the same.

    python -m bench.vocoder_speed [--vocoder runs/vocoder-dev] [--clips 16] [--threads 1] [--quick]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def hifigan_generator(k: int):
    """Unit HiFi-GAN V1 generator for 16 kHz from 50 Hz units (speech-resynthesis `hifigan_v1` shapes)."""
    import torch
    from torch import nn
    from torch.nn.utils.parametrizations import weight_norm

    class ResBlock(nn.Module):
        def __init__(self, ch: int, kernel: int, dilations=(1, 3, 5)):
            super().__init__()
            self.c1 = nn.ModuleList(weight_norm(nn.Conv1d(ch, ch, kernel, dilation=d, padding=d * (kernel - 1) // 2))
                                    for d in dilations)
            self.c2 = nn.ModuleList(weight_norm(nn.Conv1d(ch, ch, kernel, padding=(kernel - 1) // 2)) for _ in dilations)

        def forward(self, x):
            for a, b in zip(self.c1, self.c2):
                x = x + b(nn.functional.leaky_relu(a(nn.functional.leaky_relu(x, 0.1)), 0.1))
            return x

    class Generator(nn.Module):
        rates, kernels, ch = (5, 4, 4, 2, 2), (11, 8, 8, 4, 4), 512

        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(k, 128)
            self.pre = weight_norm(nn.Conv1d(128, self.ch, 7, padding=3))
            self.ups, self.blocks = nn.ModuleList(), nn.ModuleList()
            ch = self.ch
            for r, kk in zip(self.rates, self.kernels):
                self.ups.append(weight_norm(nn.ConvTranspose1d(ch, ch // 2, kk, r, padding=(kk - r) // 2)))
                ch //= 2
                self.blocks.append(nn.ModuleList(ResBlock(ch, kr) for kr in (3, 7, 11)))
            self.post = weight_norm(nn.Conv1d(ch, 1, 7, padding=3))

        def forward(self, units):  # (B, T) 50 Hz -> (B, T * 320)
            x = self.pre(self.emb(units).transpose(1, 2))
            for up, blocks in zip(self.ups, self.blocks):
                x = up(nn.functional.leaky_relu(x, 0.1))
                x = sum(b(x) for b in blocks) / len(blocks)
            return torch.tanh(self.post(nn.functional.leaky_relu(x))).squeeze(1)

    return Generator().eval()


def main(argv: list[str] | None = None) -> dict:
    import numpy as np
    import torch

    from bench.common import write_result
    from dmlm.vocoder import Vocoder, VocoderConfig
    from dmlm.vocoder.network import pad_batch

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vocoder", default=str(ROOT / "runs" / "vocoder-dev"), help="vocoder folder or checkpoint")
    p.add_argument("--units", default=str(ROOT / "runs" / "demo" / "units" / "test"), help="token store of clips")
    p.add_argument("--clips", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=16, help="clips per batch, both systems")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (the project's machine has 2, shared)")
    p.add_argument("--repeats", type=int, default=2, help="timed passes; the fastest counts")
    p.add_argument("--quick", action="store_true", help="2 clips, one timed pass (CI smoke)")
    args = p.parse_args(argv)
    n, repeats = (2, 1) if args.quick else (args.clips, args.repeats)
    torch.set_num_threads(args.threads)

    trained = (Path(args.vocoder) / "config.json").is_file() or (Path(args.vocoder) / "vocoder" / "config.json").is_file()
    if trained:
        voc = Vocoder.load(args.vocoder)
    else:
        voc = Vocoder(VocoderConfig(k=1000, frame_rate=25.0, codebook_fingerprint="untrained"))
    cfg = voc.cfg
    rng = np.random.default_rng(0)
    seqs, source = None, "random units, 2-3.6 s"
    if (Path(args.units).with_suffix(".json")).is_file():
        from dmlm.data.shards import TokenStore

        store = TokenStore(args.units)
        if store.fingerprint == cfg.codebook_fingerprint or not trained:
            seqs = [np.asarray(store[i], dtype=np.int64) for i in range(min(n, len(store)))]
            seqs = [np.clip(s, 0, cfg.k - 1) for s in seqs]
            source = f"{store.prefix} (first {len(seqs)})"
    if seqs is None:
        seqs = [rng.integers(0, cfg.k, int(rng.integers(50, 91))) for _ in range(n)]
    audio_s = sum(len(s) for s in seqs) / cfg.frame_rate

    gen = hifigan_generator(cfg.k)
    rep = max(1, round(50 / cfg.frame_rate))

    @torch.inference_mode()
    def baseline() -> None:
        order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
        for s in range(0, len(order), args.batch_size):
            ids, mask = pad_batch([np.repeat(seqs[i], rep) for i in order[s : s + args.batch_size]])
            gen(ids)

    def dmlm() -> None:
        voc.synthesize_batch(seqs, batch_size=args.batch_size)

    dmlm(), baseline()  # warm-up
    best = {"dmlm": float("inf"), "baseline": float("inf")}
    for _ in range(repeats):
        for name, fn in (("dmlm", dmlm), ("baseline", baseline)):
            t = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t)
    t = time.perf_counter()
    with torch.inference_mode():
        for s in range(0, len(seqs), args.batch_size):
            voc.spectrogram_batch(voc.expand(seqs[s : s + args.batch_size]))
    t_net = time.perf_counter() - t
    x_dmlm, x_base = audio_s / best["dmlm"], audio_s / best["baseline"]
    res = write_result(
        "vocoder_speed", "unit vocoder speed (unit ids -> 16 kHz waveform)", "x real time",
        x_dmlm, x_base, True,
        seconds_dmlm=round(best["dmlm"], 3), seconds_baseline=round(best["baseline"], 3),
        seconds_dmlm_network_only=round(t_net, 3),
        clips=len(seqs), audio_seconds=round(audio_s, 1), threads=args.threads, batch_size=args.batch_size,
        repeats=repeats, units=source, trained=trained,
        dmlm_vocoder=(str(Path(args.vocoder).resolve()) if trained else "untrained, default VocoderConfig"),
        dmlm_system=f"conv net ({voc.num_params() / 1e6:.1f} M params) -> "
                    + (f"{cfg.n_mels}-band log-mel envelope -> " if cfg.target == "mel" else "")
                    + (f"kNN matching (k={cfg.knn}, {len(voc.matching.frames):,} real frames) -> "
                       if cfg.knn and voc.matching is not None else "")
                    + f"log-magnitude STFT (n_fft {cfg.n_fft}, hop {cfg.hop}) -> fast Griffin-Lim, "
                    f"{cfg.gl_iters} iterations, momentum {cfg.gl_momentum}",
        baseline_system=f"unit HiFi-GAN V1 generator (Polyak et al. 2021 shapes, "
                        f"{sum(q.numel() for q in gen.parameters()) / 1e6:.1f} M params, random weights), fp32",
        quick=args.quick,
    )
    print(f"dmlm vocoder   {x_dmlm:8.1f} x real time  (network alone {audio_s / t_net:.0f}x)")
    print(f"unit HiFi-GAN  {x_base:8.1f} x real time")
    print(f"ratio {res['ratio']:.1f}x  ({len(seqs)} clips, {audio_s:.0f} s of audio, {args.threads} threads; {res['machine']})")
    return res


if __name__ == "__main__":
    main()
