"""End-to-end ASR speed (real-time factor): audio file in, text out; dmlm vs. Whisper-base.

dmlm does what `dmlm.load(MODEL).transcribe(path)` does: read the wav, run the checkpoint's codebook
(Whisper encoder on the clip's own length, k-means units), decode greedily with the small
LM, detokenize. The baseline is Whisper-base itself through CTranslate2 (int8, greedy): the
log-mel padded to 30 s as Whisper requires, encoder and decoder, detokenized with the
tokenizer.json of the same CTranslate2 folder. Both run on the CPU, read the same wav files
with the same threads in batches of the same size, are warmed up first, and exclude model
loading; timed passes alternate between the two and the fastest of each counts.

RTF = compute seconds per second of audio (lower is better). The JSON's dmlm/baseline are
speeds (× real time = 1 / RTF), so its ratio is the speedup whisper_rtf / dmlm_rtf; the RTFs
and the WER of both against the references sit beside them.

Clips are mini-world sentences synthesized with espeak-ng, minus any sentence in the
checkpoint's training manifest. Without a checkpoint at --model, an untrained one of the
demo's shape (configs/demo.yaml) is built in a temp folder so the timing path still runs;
the JSON then says "trained": false, and decoding runs for the references' token length so
the decoder does a trained model's amount of work (its WER is meaningless).

    python -m bench.asr_rtf [--model runs/demo/model] [--clips N] [--quick]
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from dmlm.tokenizers.features import WHISPER_SAMPLES
from dmlm.util.audio import SAMPLE_RATE

ROOT = Path(__file__).resolve().parents[1]
WHISPER_PROMPT = ["<|startoftranscript|>", "<|en|>", "<|transcribe|>", "<|notimestamps|>"]


def training_texts(ck_meta: dict) -> set[str] | None:
    """Transcripts the checkpoint was trained on, when its training manifest is at hand."""
    from dmlm.data.manifest import read_manifest

    path = ck_meta.get("config", {}).get("data", {}).get("train")
    if not path or not Path(path).is_file():
        return None
    return {r.text for r in read_manifest(path) if r.text}


def untrained_checkpoint(out: Path, whisper: str) -> Path:
    """A checkpoint of the demo's shape (codebook, BPE, model size) with random weights."""
    from dmlm.util.config import load_config
    from dmlm.data import miniworld
    from dmlm.recipes.demo import DemoConfig
    from dmlm.modeling import build_model, save_checkpoint
    from dmlm.tokenizers.features import build_features
    from dmlm.tokenizers.speech import Codebook
    from dmlm.tokenizers.text import TextTokenizer, unified_hf_tokenizer
    from dmlm.vocab import Vocab

    demo = load_config(ROOT / "configs" / "demo.yaml", [], DemoConfig)
    s = demo.codebook
    s.model = whisper
    feats = build_features(s.backend, s.model, s.layer, compute_type=s.compute_type, pad_quantum=s.pad_quantum)
    dim = feats([np.zeros(SAMPLE_RATE, np.float32)])[0].shape[1]
    s.frame_rate = feats.frame_rate / max(1, s.pooling)
    cb_path = Codebook(np.random.default_rng(0).standard_normal((s.k, dim)).astype(np.float32), s).save(
        out / "codebook.safetensors")
    text = TextTokenizer.train_bpe([x.text for x in miniworld.generate_splits(demo.prepare.n_train, 0, 0, seed=0)["train"]],
                                   demo.run.data.bpe_vocab_size)
    cb = Codebook.load(cb_path)
    vocab = Vocab(text_size=text.vocab_size, speech_size=cb.k, bos_id=text.bos_id, eos_id=text.eos_id,
                  fingerprints={"speech": cb.fingerprint})
    model = build_model(demo.run.model, vocab)
    return save_checkpoint(out / "model", model, unified_hf_tokenizer(text, vocab), vocab,
                           {"tasks": ["asr"], "untrained": True}, {"speech": cb_path})


def clips(n: int, exclude: set[str] | None, out: Path) -> tuple[list[Path], list[str], float]:
    """n synthesized mini-world sentences not in `exclude`: wav paths, texts, seconds of audio."""
    from dmlm.util.audio import write_wav
    from dmlm.data import miniworld
    from dmlm.data.synth import draw_voice, synthesize

    sents = [s.text for s in miniworld.generate_splits(20 * n, 0, 0, seed=1)["train"]]
    texts = [t for t in sents if not exclude or t not in exclude][:n]
    if len(texts) < n:
        raise RuntimeError(f"only {len(texts)} mini-world sentences outside the checkpoint's training set")
    rng = random.Random(0)
    paths, samples = [], 0
    for i, t in enumerate(texts):
        wav = synthesize(t, draw_voice(rng))
        samples += len(wav)
        paths.append(out / f"clip{i:03d}.wav")
        write_wav(paths[-1], wav)
    return paths, texts, samples / SAMPLE_RATE


class WhisperCT2:
    """Whisper transcription through CTranslate2: 30-s log-mel, greedy, tokenizer.json."""

    def __init__(self, name: str, threads: int, batch_size: int):
        import ctranslate2
        from tokenizers import Tokenizer

        from dmlm.util.assets import whisper_ct2_dir

        path = whisper_ct2_dir(name)
        self.model = ctranslate2.models.Whisper(str(path), device="cpu", compute_type="int8", intra_threads=threads)
        self.tok = Tokenizer.from_file(str(path / "tokenizer.json"))
        self.prompt = [self.tok.token_to_id(t) for t in WHISPER_PROMPT]
        if None in self.prompt:
            raise ValueError(f"{path}: tokenizer.json lacks one of {WHISPER_PROMPT} (an English-only model?)")
        self.batch_size = batch_size

    def __call__(self, paths: list[Path]) -> list[str]:
        import ctranslate2

        from dmlm.util.audio import load_audio
        from dmlm.tokenizers.features import log_mel

        out = []
        for s in range(0, len(paths), self.batch_size):
            wavs = [load_audio(p)[:WHISPER_SAMPLES] for p in paths[s : s + self.batch_size]]
            mels = torch.stack([log_mel(np.pad(w, (0, WHISPER_SAMPLES - len(w))), self.model.n_mels) for w in wavs])
            res = self.model.generate(ctranslate2.StorageView.from_array(mels.numpy()), [self.prompt] * len(wavs),
                                      beam_size=1)
            out += [self.tok.decode(r.sequences_ids[0], skip_special_tokens=True).strip() for r in res]
        return out


def main(argv: list[str] | None = None) -> dict:
    import ctranslate2

    from bench.common import write_result
    from dmlm.inference import transcribe_units
    from dmlm.util.audio import load_audio
    from dmlm.decoding import DecodingOptions
    from dmlm.metrics import error_rates
    from dmlm.modeling import load_checkpoint

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="runs/demo/model", help="dmlm checkpoint (default: the demo's)")
    p.add_argument("--whisper", default="whisper-base", help="baseline: Whisper preset or CTranslate2 folder")
    p.add_argument("--clips", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=16, help="clips per batch, both systems")
    p.add_argument("--threads", type=int, default=torch.get_num_threads(), help="CPU threads, both systems")
    p.add_argument("--repeats", type=int, default=2, help="timed passes; the fastest counts")
    p.add_argument("--quick", action="store_true", help="4 clips, one timed pass (CI smoke)")
    args = p.parse_args(argv)
    n, repeats = (4, 1) if args.quick else (args.clips, args.repeats)
    torch.set_num_threads(args.threads)  # the codebook's CTranslate2 encoder takes torch's thread count

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        trained = (Path(args.model) / "dmlm.json").is_file()
        ck_path = args.model if trained else untrained_checkpoint(tmp / "untrained", args.whisper)
        t0 = time.perf_counter()
        ck = load_checkpoint(ck_path)
        cb = ck.codebook("speech")
        load_dmlm = time.perf_counter() - t0
        paths, refs, audio_s = clips(n, training_texts(ck.meta) if trained else None, tmp / "wav")
        max_new = 256
        if not trained:  # a random model seldom stops: decode for as long as a trained one would
            max_new = max(len(ck.tokenizer.encode(r, add_special_tokens=False)) for r in refs) + 1
        opts = DecodingOptions(strategy="greedy", max_new_tokens=max_new, batch_size=args.batch_size)

        def dmlm_asr(batch: list[Path]) -> list[str]:
            # what DMLM.transcribe does for a path, with the codebook (and its encoder) loaded once
            units = [np.asarray(u) for u in cb.encode_batch([load_audio(q) for q in batch])]
            return transcribe_units(ck, units, opts=opts)

        t0 = time.perf_counter()
        dmlm_asr(paths[:2])  # warm-up; loads the codebook's Whisper encoder
        load_dmlm += time.perf_counter() - t0
        t0 = time.perf_counter()
        whisper = WhisperCT2(args.whisper, args.threads, args.batch_size)
        whisper(paths[:2])
        load_whisper = time.perf_counter() - t0

        best = {"dmlm": float("inf"), "whisper": float("inf")}
        hyps: dict[str, list[str]] = {}
        for _ in range(repeats):  # alternating, so a busy spell of a shared machine hits both
            for name, fn in (("dmlm", dmlm_asr), ("whisper", whisper)):
                t = time.perf_counter()
                hyps[name] = fn(paths)
                best[name] = min(best[name], time.perf_counter() - t)
        (t_dmlm, hyp_dmlm), (t_whisper, hyp_whisper) = ((best[k], hyps[k]) for k in ("dmlm", "whisper"))

    err_dmlm, err_whisper = error_rates(refs, hyp_dmlm), error_rates(refs, hyp_whisper)
    rtf_dmlm, rtf_whisper = t_dmlm / audio_s, t_whisper / audio_s
    s = cb.settings
    res = write_result(
        "asr_rtf", "end-to-end ASR speed (audio file -> text)", "x real time (1 / RTF)",
        1 / rtf_dmlm, 1 / rtf_whisper, True,
        rtf_dmlm=rtf_dmlm, rtf_baseline=rtf_whisper,
        wer_dmlm=err_dmlm["wer"], wer_baseline=err_whisper["wer"],
        cer_dmlm=err_dmlm["cer"], cer_baseline=err_whisper["cer"],
        errors_dmlm=err_dmlm, errors_baseline=err_whisper,
        clips=n, audio_seconds=round(audio_s, 1), threads=args.threads, batch_size=args.batch_size, repeats=repeats,
        dmlm_model=str(Path(args.model).resolve()) if trained else "untrained, demo-shaped (configs/demo.yaml)",
        trained=trained, checkpoint_step=ck.meta.get("step"), params=sum(q.numel() for q in ck.model.parameters()),
        codebook={"backend": s.backend, "model": s.model, "k": s.k, "pooling": s.pooling, "dedup": s.dedup,
                  "compute_type": s.compute_type},
        dmlm_decoding={"strategy": "greedy", "max_new_tokens": max_new},
        baseline_system=f"{args.whisper} through CTranslate2 {ctranslate2.__version__}, int8, greedy "
                 "(beam_size=1), log-mel padded to 30 s, prompt " + "".join(WHISPER_PROMPT),
        load_and_warmup_seconds={"dmlm": round(load_dmlm, 2), "baseline": round(load_whisper, 2)},
        sentences="mini-world (seed 1), espeak-ng training voices"
                  + (", none in the checkpoint's training manifest" if trained else ""),
        examples=[{"ref": r, "dmlm": a, "baseline": b} for r, a, b in list(zip(refs, hyp_dmlm, hyp_whisper))[:3]],
    )
    print(f"{'':16s}{'RTF':>10s}{'x real time':>14s}{'WER %':>9s}")
    print(f"{'dmlm':16s}{rtf_dmlm:10.4f}{1 / rtf_dmlm:14.1f}{err_dmlm['wer']:9.1f}" + ("" if trained else "  (untrained)"))
    print(f"{args.whisper:16s}{rtf_whisper:10.4f}{1 / rtf_whisper:14.1f}{err_whisper['wer']:9.1f}")
    print(f"speedup {res['ratio']:.1f}x  ({n} clips, {audio_s:.0f} s of audio, {args.threads} threads; {res['machine']})")
    return res


if __name__ == "__main__":
    main()
