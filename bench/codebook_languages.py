"""Does the Whisper-base speech codebook cover Spanish, German and French, or must it be refitted on them?

The recipes fit the speech codebook on the first `codebook_fit_utts` training records, and a mini-world
corpus with `prepare.speech_langs` lists its English recordings first: configs/multilingual.yaml's codebook
is fitted on English alone. This bench fits two codebooks with the code the recipes use
(`dmlm.tokenizers.speech.fit_codebook`: the same k-means, settings and seed) on Whisper-base frames
(the demo's codebook settings, frame pairs averaged to 25 Hz):

- **English only**: every frame of `--fit-clips` English training clips (F frames);
- **pooled**: F frames too, an equal share drawn at random from the fit clips of every language;

and measures both on `--eval-clips` other sentences per language (sentences and voice draws no fit saw):

- relative distortion: the mean squared distance of a frame to its nearest centroid over the mean squared
  distance to the language's mean frame (the share of the frames' variance the codebook loses; lower is
  better);
- unit-usage perplexity: exp of the entropy of the units the language's frames are assigned (how many
  units it effectively uses);
- share of codes used: units assigned at least once, over k.

The headline is the relative distortion of the non-English languages (their mean) under the English-only
codebook (`dmlm`) against the pooled one (`baseline`, what the recipes fit since this bench); a ratio near 1 says
refitting buys nothing. The clips come from a mini-world corpus the bench prepares itself (`dmlm prepare`'s
API, every language of `--langs`, the recipe's voice mix; kept in `--data` to be reused) or from a prepared
manifest (`--manifest`, e.g. a multilingual run's data/train.jsonl): the first clips of each language in
manifest order, held-out voices left out.

    python -m bench.codebook_languages [--fit-clips 1000] [--eval-clips 100] [--k 1000]
                                       [--manifest PATH | --data DIR] [--quick]

The default sizes take about 5 minutes on 2 cores (synthesis, Whisper over every clip, two k-means fits).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

LANGS = ("en", "es", "de", "fr")


class GivenFrames:
    """A feature extractor whose "clips" are frames already extracted: `fit_codebook` fits on them as they are."""

    def __init__(self, frame_rate: float):
        self.frame_rate = frame_rate

    def __call__(self, batch: list[np.ndarray]) -> list[np.ndarray]:
        return list(batch)


def clips_by_lang(manifest: Path, langs: tuple[str, ...], n: int) -> dict[str, list]:
    """The first `n` records with audio of each language in `langs` (manifest order; held-out voices left out)."""
    from dmlm.data.manifest import is_heldout_voice, read_manifest
    from dmlm.util.errors import UserError

    out: dict[str, list] = {lang: [] for lang in langs}
    for r in read_manifest(manifest):
        lang = r.lang or "en"
        if r.audio is not None and lang in out and not is_heldout_voice(r) and len(out[lang]) < n:
            out[lang].append(r)
    short = {lang: len(rs) for lang, rs in out.items() if len(rs) < n}
    if short:
        raise UserError(f"{manifest}: {n} clips per language needed (--fit-clips + --eval-clips), found {short} "
                        "(--langs names the languages compared)")
    return out


def make_corpus(out: Path, sentences: int, langs: tuple[str, ...], neural_share: float) -> Path:
    """A mini-world training split of `sentences` sentences spoken in every language of `langs` (its manifest)."""
    from dmlm.data.prepare import PrepareConfig, prepare

    cfg = PrepareConfig(corpus="mini-world", n_train=sentences, n_dev=0, n_test=0, images=False,
                        neural_share=neural_share, speech_langs=[lg for lg in langs if lg != "en"])
    return prepare(cfg, out)["train"]


def pooled_frames(feats, wavs: list[np.ndarray], pooling: int) -> list[np.ndarray]:
    """Per clip (T_i, D) frames as the codebook sees them (the encoder's, averaged `pooling` at a time)."""
    from dmlm.tokenizers.speech import pool_frames

    out: list[np.ndarray] = []
    for s in range(0, len(wavs), 64):
        out += [pool_frames(f, pooling) for f in feats(wavs[s : s + 64])]
    return out


def fit_sets(fit: dict[str, list[np.ndarray]], seed: int = 0) -> dict[str, np.ndarray]:
    """The English-only and the pooled fit frames, the same number F of each (drawn at random): F is the
    English fit frames' count (rounded down to a multiple of the languages), less where another language has
    fewer than F / len(fit) frames to give its equal share."""
    rng = np.random.default_rng(seed)
    frames = {lang: np.concatenate(clips) for lang, clips in fit.items()}
    share = min(len(frames["en"]) // len(frames), *(len(x) for x in frames.values()))
    pick = {lang: x[rng.choice(len(x), share, replace=False)] for lang, x in frames.items()}
    return {"english": frames["en"][rng.choice(len(frames["en"]), share * len(frames), replace=False)],
            "pooled": np.concatenate(list(pick.values()))}


def fit(frames: np.ndarray, settings, frame_rate: float):
    """`fit_codebook` on `frames` (already pooled, so pooling 1 here), all of them."""
    from dmlm.tokenizers.speech import fit_codebook

    s = replace(settings, pooling=1, max_frames=len(frames))
    return fit_codebook([frames], s, features=GivenFrames(frame_rate))


def usage(centroids: np.ndarray, units: np.ndarray, frames: np.ndarray) -> dict:
    """Distortion, relative distortion, unit-usage perplexity and share of codes used of `frames` (N, D)
    assigned `units` (N,) among `centroids` (k, D)."""
    k = len(centroids)
    err = ((frames - centroids[units]) ** 2).sum(1).mean()
    var = ((frames - frames.mean(0)) ** 2).sum(1).mean()
    p = np.bincount(units, minlength=k) / len(units)
    p = p[p > 0]
    return {"distortion": round(float(err), 4), "relative_distortion": round(float(err / var), 4),
            "perplexity": round(float(np.exp(-(p * np.log(p)).sum())), 1), "codes_used": round(len(p) / k, 4)}


def compare(fit_frames: dict[str, list[np.ndarray]], eval_frames: dict[str, list[np.ndarray]], settings,
            frame_rate: float) -> dict:
    """Both codebooks fitted on `fit_frames` (per language, per clip) and measured on `eval_frames`:
    {"fit_frames": F, "rows": [{codebook, lang, frames, ...usage}]}."""
    sets = fit_sets(fit_frames, settings.seed)
    rows = []
    for name, X in sets.items():
        cb = fit(X, settings, frame_rate)
        for lang, clips in eval_frames.items():
            Y = np.concatenate(clips)
            rows.append({"codebook": name, "lang": lang, "frames": len(Y), **usage(cb.centroids, cb.assign(Y), Y)})
    return {"fit_frames": len(sets["english"]), "rows": rows}


def _row(res: dict, codebook: str, lang: str) -> dict:
    return next(r for r in res["rows"] if r["codebook"] == codebook and r["lang"] == lang)


def main(argv: list[str] | None = None) -> dict:
    from bench.common import write_result
    from dmlm.tokenizers.features import build_features
    from dmlm.tokenizers.speech import CodebookSettings
    from dmlm.tokenizers.tokenize import load_record_audio
    from dmlm.util.audio import SAMPLE_RATE

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fit-clips", type=int, default=1000, help="clips per language the codebooks are fitted on "
                   "(English only: all of them; pooled: the same number of frames from every language)")
    p.add_argument("--eval-clips", type=int, default=100, help="other clips per language the codebooks are measured on")
    p.add_argument("--k", type=int, default=1000)
    p.add_argument("--model", default="whisper-base")
    p.add_argument("--langs", default=",".join(LANGS), help="English and the languages it is compared with")
    p.add_argument("--manifest", default="", help="a prepared manifest with speech in every language of --langs "
                   "(default: the bench prepares a mini-world corpus)")
    p.add_argument("--data", default="", help="where the bench's corpus is prepared and kept (default: a temporary folder)")
    p.add_argument("--neural-share", type=float, default=0.5, help="share of the English clips in the neural voice "
                   "(configs/multilingual.yaml's, from demo.yaml)")
    p.add_argument("--quick", action="store_true", help="2 fit clips and 1 eval clip per language, k=16 (CI smoke)")
    args = p.parse_args(argv)
    if args.quick:
        args.fit_clips, args.eval_clips, args.k = 2, 1, 16
    langs = tuple(args.langs.split(","))
    if langs[0] != "en" or len(langs) < 2:
        p.error(f"--langs: English first, then at least one other language, got {args.langs!r}")
    n = args.fit_clips + args.eval_clips

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        manifest = Path(args.manifest) if args.manifest else make_corpus(Path(args.data or tmp), n, langs,
                                                                          args.neural_share)
        t_prepare = time.perf_counter() - t0
        records = clips_by_lang(manifest, langs, n)
        wavs = {lang: [load_record_audio(manifest, r) for r in rs] for lang, rs in records.items()}
    settings = CodebookSettings(model=args.model, k=args.k)  # the demo's: whisper backend, 25 Hz, no dedup
    feats = build_features(settings.backend, settings.model, settings.layer, compute_type=settings.compute_type,
                           pad_quantum=settings.pad_quantum)
    t1 = time.perf_counter()
    frames = {lang: pooled_frames(feats, ws, settings.pooling) for lang, ws in wavs.items()}
    t_features = time.perf_counter() - t1
    res = compare({lang: f[: args.fit_clips] for lang, f in frames.items()},
                  {lang: f[args.fit_clips :] for lang, f in frames.items()}, settings, feats.frame_rate)
    others = langs[1:]

    def mean_rel(codebook: str) -> float:
        return round(float(np.mean([_row(res, codebook, lg)["relative_distortion"] for lg in others])), 4)

    out = write_result(
        "codebook_languages", f"relative quantization distortion of {'/'.join(others)} Whisper frames (mean)",
        "fraction of the frames' variance", mean_rel("english"), mean_rel("pooled"), False,
        headline="codebook fitted on English only vs on every language pooled (what the recipes fit now), the same "
                 "number of frames; ratio > 1: refitting lowers the distortion by that factor",
        rows=res["rows"], fit_frames=res["fit_frames"], langs=list(langs),
        clips={"fit_per_language": args.fit_clips, "eval_per_language": args.eval_clips},
        audio_seconds={lg: round(sum(len(w) for w in ws) / SAMPLE_RATE, 1) for lg, ws in wavs.items()},
        corpus=str(manifest) if args.manifest else {"prepared": "mini-world", "neural_share": args.neural_share},
        codebook={"model": args.model, "k": args.k, "pooling": settings.pooling, "seed": settings.seed},
        prepare_seconds=round(t_prepare, 1), feature_seconds=round(t_features, 1),
        total_seconds=round(time.perf_counter() - t0, 1),
    )
    print(f"fit frames per codebook: {res['fit_frames']}")
    print(f"{'codebook':>9s}{'lang':>5s}{'frames':>8s}{'rel. distortion':>17s}{'perplexity':>12s}{'codes used':>12s}")
    for r in res["rows"]:
        print(f"{r['codebook']:>9s}{r['lang']:>5s}{r['frames']:>8d}{r['relative_distortion']:>17.4f}"
              f"{r['perplexity']:>12.1f}{r['codes_used']:>12.3f}")
    print(f"{out['metric']}: English-only {out['dmlm']:.4f} vs pooled {out['baseline']:.4f} "
          f"(ratio {out['ratio']:.3f}); {out['machine']}")
    return out


if __name__ == "__main__":
    main()
