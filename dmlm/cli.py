"""`dmlm <verb>`: thin entry points over the library; every verb is one stage of the pipeline.

    dmlm assets [NAME ...]                         install/convert offline model presets
    dmlm prepare NAME [--out DIR]                  make a demo corpus (mini-world, bible, digits)
    dmlm codebook fit MANIFEST -o CB.safetensors   fit a speech (or --modality image) codebook
    dmlm tokenize CB MANIFEST... --out DIR         manifests -> unit/code token stores (sharded, resumable)
    dmlm train CONFIG.yaml [key=value ...]         train a DMLM on a task mixture (accelerate; --resume)
    dmlm decode MODEL --task {asr,s2tt:es,t2s,i2t} --manifest M --out hyps.jsonl
    dmlm transcribe MODEL a.wav [b.wav ...]
    dmlm translate MODEL a.wav --to es
    dmlm caption MODEL img.png
    dmlm synthesize-units MODEL "text"
    dmlm vocoder train MODEL [--minutes 4]        units -> speech vocoder into MODEL/vocoder/
    dmlm vocoder match MODEL [--clips N]          (re)build its matching set of real frames
    dmlm speak MODEL "text" -o out.wav
    dmlm resynthesize MODEL in.wav -o out.wav
    dmlm evaluate MODEL --task TASK --manifest M [--out report.json]
    dmlm demo [CONFIG.yaml] [key=value ...]        the whole pipeline on mini-world, offline
    dmlm ablate [CONFIG.yaml] [key=value ...]      codebook variants compared by WER

Errors a user can fix (bad manifest, audio, config, codebook mismatch) print one line and
exit with status 2 instead of a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import fields
from pathlib import Path
from dmlm.util.errors import MissingFileError, UserError


def _decoding_args(p: argparse.ArgumentParser) -> None:
    from dmlm.decoding import DecodingOptions

    from dmlm.util.config import field_docs

    docs = field_docs(DecodingOptions)
    for f in fields(DecodingOptions):
        p.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=f.default, dest=f"dec_{f.name}",
                       metavar=f.name.upper(), help=f"{docs.get(f.name, '')} (default: {f.default})")


def _decoding_options(args):
    from dmlm.decoding import DecodingOptions

    return DecodingOptions(**{f.name: getattr(args, f"dec_{f.name}") for f in fields(DecodingOptions)})


def cmd_assets(args) -> None:
    from dmlm.util import assets

    names = args.names or list(assets.PRESETS)
    for n in names:
        print(json.dumps(assets.prepare(n)))


def cmd_prepare(args) -> None:
    from dmlm.util.config import load_config
    from dmlm.data.prepare import PrepareConfig, prepare

    cfg = load_config(None, [f"corpus={args.name}"] + args.overrides, cls=PrepareConfig)
    out = args.out or f"runs/{args.name}/data"
    for split, path in prepare(cfg, out).items():
        print(f"{split}: {path}")


def codebook_modality(path: str | Path) -> str:
    """The modality a codebook file declares (files from before images say nothing: speech)."""
    from safetensors import safe_open

    if not Path(path).is_file():
        raise MissingFileError(f"{path}: codebook file not found")
    with safe_open(str(path), "np") as fh:
        return (fh.metadata() or {}).get("modality", "speech")


def cmd_codebook(args) -> None:
    from dmlm.util.config import load_config
    from dmlm.data.manifest import read_manifest

    records = read_manifest(args.manifest)
    if args.modality == "image":
        from dmlm.util.images import load_image
        from dmlm.tokenizers.image import ImageCodebookSettings, fit_image_codebook

        from dmlm.tokenizers.image import ImageCodebook

        settings = load_config(None, args.overrides, cls=ImageCodebookSettings)
        if settings.backend == "external":  # codes come from another tokenizer: nothing to fit
            if not settings.name:
                raise UserError("an external image codebook needs name=… (the tokenizer that made the codes) and k=…")
            cb = ImageCodebook.external(settings.k, settings.name, settings.image_size)
        else:
            records = [r for r in records if r.image is not None][: args.max_utts or None]
            if not records:
                raise UserError(f"{args.manifest}: no record has an 'image'")
            cb = fit_image_codebook([load_image(r.image_path(args.manifest), size=settings.image_size) for r in records],
                                    settings)
    else:
        from dmlm.tokenizers.tokenize import load_record_audio
        from dmlm.tokenizers.speech import CodebookSettings, fit_codebook

        settings = load_config(None, args.overrides, cls=CodebookSettings)
        records = [r for r in records if r.audio is not None][: args.max_utts or None]
        cb = fit_codebook((load_record_audio(args.manifest, r) for r in records), settings, total=len(records))
    cb.save(args.output)
    print(f"{args.output}: {args.modality} k={cb.k} fingerprint={cb.fingerprint}")


def cmd_tokenize(args) -> None:
    from dmlm.tokenizers.tokenize import tokenize_images, tokenize_manifest

    modality = codebook_modality(args.codebook)
    if modality == "image":
        from dmlm.tokenizers.image import ImageCodebook

        cb = ImageCodebook.load(args.codebook)
        run = lambda m: tokenize_images(cb, m, args.out, shard=args.shard, num_shards=args.num_shards,  # noqa: E731
                                        external_codes=args.external_codes)
    else:
        from dmlm.tokenizers.speech import Codebook

        if args.external_codes:
            raise UserError(f"--external-codes is for external image codebooks; {args.codebook} is a speech codebook")
        cb = Codebook.load(args.codebook)
        run = lambda m: tokenize_manifest(cb, m, args.out, shard=args.shard, num_shards=args.num_shards)  # noqa: E731
    for m in args.manifests:
        store = run(m)
        if store is None:
            print(f"{m}: shard {args.shard}/{args.num_shards} done; the store is merged once every shard is done "
                  "(by whichever job finishes last)")
        else:
            lens = store.lengths()
            print(f"{m}: {len(store)} {'images' if modality == 'image' else 'utterances'}, {int(lens.sum())} tokens "
                  f"(mean {lens.mean():.1f}) -> {store.prefix}")


def cmd_train(args) -> None:
    from dmlm.util.config import load_config
    from dmlm.training.train import train

    cfg = load_config(args.config, args.overrides, RunConfig)
    print(train(cfg, resume=args.resume))


def cmd_decode(args) -> None:
    from dmlm.util.io import atomic_write_text
    from dmlm.evaluation.tasks import decode_task

    rows = decode_task(args.model, args.task, args.manifest, _decoding_options(args), args.units)
    atomic_write_text(args.out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    print(f"{len(rows)} hypotheses -> {args.out}")


def cmd_transcribe(args) -> None:
    from dmlm.inference import transcribe_files
    from dmlm.modeling import load_checkpoint

    ck = load_checkpoint(args.model)
    for path, text in zip(args.audio, transcribe_files(ck, args.audio, _decoding_options(args))):
        print(f"{path}\t{text}")


def cmd_translate(args) -> None:
    from dmlm.inference import translate_files
    from dmlm.modeling import load_checkpoint

    ck = load_checkpoint(args.model)
    for path, text in zip(args.audio, translate_files(ck, args.audio, args.to, args.src, _decoding_options(args))):
        print(f"{path}\t{text}")


def cmd_caption(args) -> None:
    from dmlm.inference import caption_files
    from dmlm.modeling import load_checkpoint

    ck = load_checkpoint(args.model)
    for path, text in zip(args.images, caption_files(ck, args.images, args.lang, _decoding_options(args))):
        print(f"{path}\t{text}")


def cmd_synthesize_units(args) -> None:
    from dmlm.inference import synthesize_units
    from dmlm.modeling import load_checkpoint

    ck = load_checkpoint(args.model)
    for text, units in zip(args.text, synthesize_units(ck, args.text, _decoding_options(args), args.lang)):
        print(json.dumps({"text": text, "units": units.tolist()}))


def _vocoder_data(args) -> tuple[list[str], list[str]]:
    """The audio manifests and units stores a vocoder learns from: --manifest/--units (repeatable,
    in order), else the model's own training manifest and store."""
    from dmlm.modeling import load_checkpoint

    if args.manifest and args.units and len(args.units) != len(args.manifest):
        raise UserError(f"{len(args.manifest)} --manifest but {len(args.units)} --units: give one units store per "
                         "manifest, in the same order (or no --units: each manifest's store beside the model's)")
    data = load_checkpoint(args.model).meta.get("config", {}).get("data", {})
    manifests = args.manifest or ([data["train"]] if data.get("train") else [])
    if not manifests:
        raise UserError(f"{args.model}: the checkpoint does not name its training manifest; give --manifest")
    return manifests, args.units or [str(Path(data.get("units", "")) / Path(m).stem) for m in manifests]


def _vocoder_data_args(parser: argparse.ArgumentParser) -> None:
    """--manifest/--units of `vocoder train` and `vocoder match` (read by `_vocoder_data`)."""
    parser.add_argument("--manifest", action="append",
                        help="audio manifest; repeat to pool several, e.g. untranscribed audio of the output voice "
                             "(default: the model's training manifest)")
    parser.add_argument("--units", action="append",
                        help="speech token store prefix of each --manifest, in order (default: <the model's units "
                             "folder>/<manifest stem>)")


def cmd_vocoder_train(args) -> None:
    from dmlm.util.config import load_config
    from dmlm.vocoder.model import VocoderConfig
    from dmlm.vocoder.train import train_vocoder

    manifest, units = _vocoder_data(args)
    cfg = load_config(None, args.overrides, cls=VocoderConfig)
    out = train_vocoder(manifest, units, Path(args.model) / "codebooks" / "speech.safetensors", cfg,
                        Path(args.model) / "vocoder", max_minutes=args.minutes or None, steps=args.steps or None)
    print(f"vocoder -> {out}")


def cmd_vocoder_match(args) -> None:
    from dmlm.vocoder.train import add_matching_set

    folder = Path(args.model) / "vocoder"
    if not (folder / "config.json").is_file():
        raise UserError(f"{args.model}: no trained vocoder in {folder}; run `dmlm vocoder train {args.model}` first")
    manifest, units = _vocoder_data(args)
    out = add_matching_set(folder, manifest, units, Path(args.model) / "codebooks" / "speech.safetensors", clips=args.clips)
    print(f"matching set -> {out}")


def cmd_speak(args) -> None:
    from dmlm.util.audio import write_wav
    from dmlm.modeling import load_checkpoint
    from dmlm.evaluation.speech import speak

    ck = load_checkpoint(args.model)
    wav = speak(ck, args.text, _decoding_options(args))
    write_wav(args.output, wav)
    print(f"{args.output}: {len(wav) / 16000:.2f} s")


def cmd_resynthesize(args) -> None:
    from dmlm.evaluation.speech import resynthesize_file

    out = resynthesize_file(args.model, args.audio, args.output)
    print(f"{out}")


def _voice_clips(value: str) -> int | None:
    """--voice-clips: a count >= 0, or "all" (None)."""
    if value == "all":
        return None
    try:
        n = int(value)
    except ValueError:
        n = -1
    if n < 0:
        raise argparse.ArgumentTypeError(f"expected a number of clips >= 0 or 'all', got {value!r}")
    return n


def _speech_out_eval(args, out: str) -> dict:
    from dmlm.evaluation.judge import build_judge
    from dmlm.evaluation.speech import evaluate_resynthesis, evaluate_t2s_audio

    judge = build_judge(args.judge, engine=args.judge_engine)
    folder = Path(out).with_suffix("")
    n = args.limit or None
    if args.task == "resynthesis":
        if not args.units:
            raise UserError("--task resynthesis needs --units (the manifest's speech token store or its folder)")
        units = Path(args.units)
        units = units if units.with_suffix(".json").is_file() else units / Path(args.manifest).stem
        return evaluate_resynthesis(args.model, args.manifest, units, judge, n=n, out_dir=folder,
                                    voice_clips=args.voice_clips)
    return evaluate_t2s_audio(args.model, args.manifest, judge, _decoding_options(args), n=n, out_dir=folder)


def cmd_evaluate(args) -> None:
    from dmlm.evaluation.tasks import evaluate_task

    name = args.task.replace(":", "_")
    out = args.out or str(Path(args.model) / f"eval_{name}_{Path(args.manifest).stem}.json")
    if args.voice_clips != 0 and args.task != "resynthesis":
        raise UserError(f"--voice-clips is for --task resynthesis, not {args.task}")
    if args.task == "resynthesis" or (args.task == "t2s" and args.judge):
        if not args.judge:
            args.judge = "whisper-base"
        rep = _speech_out_eval(args, out)
        from dmlm.util.io import atomic_write_text

        atomic_write_text(out, json.dumps(rep, indent=1, default=str))
    else:
        rep = evaluate_task(args.model, args.task, args.manifest, out, _decoding_options(args), units=args.units,
                            limit=args.limit or None)
    keys = ["wer", "cer", "wer_heldout_voice", "cer_heldout_voice", "bleu", "chrf", "baseline_bleu", "cider", "baseline_cider",
            "unit_accuracy", "unit_error_rate", "perplexity", "original_wer", "utterances", "records"]
    print(json.dumps({k: rep[k] for k in keys if k in rep}))
    print(f"report -> {out}")


def cmd_demo(args) -> None:
    from dmlm.recipes.demo import load_demo_config, run_demo

    cfg = load_demo_config(args.config, args.overrides)
    rep = run_demo(cfg)
    print(f"\n{cfg.prepare.corpus} test split, {rep['minutes']:.1f} min:")
    for task, row in rep["tasks"].items():
        print(f"  {task:12s} " + ", ".join(f"{k} {v:.2f}" for k, v in row.items() if isinstance(v, float)))
    print(f"Report: {cfg.out}/report.md")


def cmd_ablate(args) -> None:
    from dmlm.recipes.ablate import load_ablate_config, run_ablation, render

    print(render(run_ablation(load_ablate_config(args.config, args.overrides))))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dmlm", description="Discrete Multimodal Language Models")
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="verb", required=True)

    s = sub.add_parser("assets", help="install/convert offline presets (whisper-base, whisper-tiny.en, smollm2-135m)")
    s.add_argument("names", nargs="*")
    s.set_defaults(fn=cmd_assets)

    s = sub.add_parser("prepare", help="make a demo corpus: manifests + wavs (+ scene images), or captioned digits")
    s.add_argument("name", choices=["mini-world", "bible", "digits"])
    s.add_argument("--out", help="output folder (default runs/NAME/data)")
    s.add_argument("overrides", nargs="*", help="n_train=8000 n_dev=300 n_test=500 seed=0 workers=2")
    s.set_defaults(fn=cmd_prepare)

    s = sub.add_parser("codebook", help="speech and image codebooks")
    cs = s.add_subparsers(dest="action", required=True)
    f = cs.add_parser("fit", help="fit k-means units on a manifest's audio (or images)")
    f.add_argument("manifest")
    f.add_argument("-o", "--output", required=True)
    f.add_argument("--modality", choices=["speech", "image"], default="speech")
    f.add_argument("--max-utts", type=int, default=2000, help="records to fit on")
    f.add_argument("overrides", nargs="*", help="speech: backend=whisper model=whisper-base layer=-1 k=1000 dedup=false "
                   "pooling=2; image: k=512 patch_size=8 image_size=64")
    f.set_defaults(fn=cmd_codebook)

    s = sub.add_parser("tokenize", help="manifests -> token stores (speech units or image codes, by the codebook's modality)")
    s.add_argument("codebook")
    s.add_argument("manifests", nargs="+")
    s.add_argument("--out", required=True)
    s.add_argument("--shard", type=int, default=0)
    s.add_argument("--num-shards", type=int, default=1)
    s.add_argument("--external-codes", help="JSONL of {\"id\", \"codes\"} made by an external image tokenizer "
                                            "(with a codebook from `dmlm codebook fit --modality image backend=external`)")
    s.set_defaults(fn=cmd_tokenize)

    s = sub.add_parser("train", help="train a DMLM from a YAML config")
    s.add_argument("config", nargs="?")
    s.add_argument("overrides", nargs="*", help="e.g. train.steps=100 model.layers=2")
    s.add_argument("--resume", action="store_true")
    s.set_defaults(fn=cmd_train)

    for verb, fn, helptext in (("decode", cmd_decode, "decode a manifest to hyps.jsonl"),
                               ("evaluate", cmd_evaluate, "score a model on one task of a manifest (JSON report)")):
        s = sub.add_parser(verb, help=helptext)
        s.add_argument("model")
        s.add_argument("--task", default="asr", help="asr, s2tt:LANG, t2s, i2t" + (
            ", text_lm[:LANG], speech_lm, image_lm, resynthesis" if verb == "evaluate" else ""))
        s.add_argument("--manifest", required=True)
        s.add_argument("--units", help="folder of token stores for the manifest (dmlm tokenize --out), or one "
                                       "store's prefix; default: tokens computed with the checkpoint's codebooks")
        s.add_argument("--out", required=verb == "decode")
        if verb == "evaluate":
            s.add_argument("--limit", type=int, default=0, help="score only the first N records (0: all)")
            s.add_argument("--judge", default="", help="t2s/resynthesis: what transcribes the vocoded speech: a Whisper "
                                                       "preset (e.g. whisper-base) or a dmlm ASR checkpoint folder; "
                                                       "t2s without it scores units only")
            s.add_argument("--judge-engine", default="ctranslate2", choices=["ctranslate2", "transformers"])
            s.add_argument("--voice-clips", type=_voice_clips, default=0, metavar="N|all",
                           help="resynthesis with --limit: score the vocoder's own voice on N training-voice clips, "
                                "or all the manifest has (clips past the limit count only in that group; default 0: "
                                "only those within the limit)")
        _decoding_args(s)
        s.set_defaults(fn=fn)

    s = sub.add_parser("transcribe", help="print transcripts of audio files")
    s.add_argument("model")
    s.add_argument("audio", nargs="+")
    _decoding_args(s)
    s.set_defaults(fn=cmd_transcribe)

    s = sub.add_parser("translate", help="print translations of speech files")
    s.add_argument("model")
    s.add_argument("audio", nargs="+")
    s.add_argument("--to", required=True, help="target language code, e.g. es")
    s.add_argument("--from", dest="src", default="en", help="source language code (default: en)")
    _decoding_args(s)
    s.set_defaults(fn=cmd_translate)

    s = sub.add_parser("caption", help="print captions of image files")
    s.add_argument("model")
    s.add_argument("images", nargs="+")
    s.add_argument("--lang", default="en")
    _decoding_args(s)
    s.set_defaults(fn=cmd_caption)

    s = sub.add_parser("synthesize-units", help="text -> speech units (JSON lines); `dmlm speak` adds the vocoder")
    s.add_argument("model")
    s.add_argument("text", nargs="+")
    s.add_argument("--lang", default="en")
    _decoding_args(s)
    s.set_defaults(fn=cmd_synthesize_units)

    s = sub.add_parser("vocoder", help="unit vocoders")
    vs = s.add_subparsers(dest="action", required=True)
    f = vs.add_parser("train", help="train a units -> speech vocoder into MODEL/vocoder/")
    f.add_argument("model")
    _vocoder_data_args(f)
    f.add_argument("--minutes", type=float, default=4.0, help="time budget (0: none)")
    f.add_argument("--steps", type=int, default=0, help="step budget (0: none)")
    f.add_argument("overrides", nargs="*", help="VocoderConfig fields, e.g. dim=256 batch_size=16 gl_iters=32")
    f.set_defaults(fn=cmd_vocoder_train)
    f = vs.add_parser("match", help="(re)build MODEL/vocoder's matching set: the real frames `knn` draws on")
    f.add_argument("model")
    _vocoder_data_args(f)
    f.add_argument("--clips", type=int, help="clips of the output voice in the set (default: the vocoder's matching_clips)")
    f.set_defaults(fn=cmd_vocoder_match)

    s = sub.add_parser("speak", help="text -> speech units -> vocoder -> wav")
    s.add_argument("model")
    s.add_argument("text")
    s.add_argument("-o", "--output", required=True)
    _decoding_args(s)
    s.set_defaults(fn=cmd_speak)

    s = sub.add_parser("resynthesize", help="audio -> units -> audio (the codebook and vocoder alone)")
    s.add_argument("model")
    s.add_argument("audio")
    s.add_argument("-o", "--output", required=True)
    s.set_defaults(fn=cmd_resynthesize)

    s = sub.add_parser("demo", help="whole pipeline on mini-world, offline")
    s.add_argument("config", nargs="?", help="YAML (default: built-in demo settings)")
    s.add_argument("overrides", nargs="*")
    s.set_defaults(fn=cmd_demo)

    s = sub.add_parser("ablate", help="compare speech codebooks by WER at a fixed training budget")
    s.add_argument("config", nargs="?")
    s.add_argument("overrides", nargs="*")
    s.set_defaults(fn=cmd_ablate)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # argparse gives `key=value ...` after an option (`codebook fit M -o CB k=16`) to no positional
    if extra:
        if hasattr(args, "overrides") and all("=" in x and not x.startswith("-") for x in extra):
            args.overrides = list(args.overrides) + extra
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    # a first positional that looks like key=value is an override, not a config path
    if getattr(args, "config", None) and "=" in args.config:
        args.overrides = [args.config] + list(args.overrides)
        args.config = None
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from dmlm.util.audio import AudioError
    from dmlm.util.config import ConfigError
    from dmlm.data.manifest import ManifestError
    from dmlm.tokenizers.speech import CodebookMismatch
    from dmlm.vocab import VocabError

    try:
        args.fn(args)
    except (ManifestError, AudioError, ConfigError, CodebookMismatch, VocabError, OSError, ValueError) as e:
        if args.verbose:
            raise  # -v: the full traceback, for bug reports
        print(f"dmlm {args.verb}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
