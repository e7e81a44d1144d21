"""`dmlm <verb>`: thin entry points; each verb loads what it needs once and makes one call into
`dmlm.api.DMLM` (the model's tasks) or a recipe/stage function.

    dmlm assets [NAME ...]                         install/convert offline model presets
    dmlm prepare NAME [--out DIR]                  make a demo corpus (mini-world, bible, digits)
    dmlm codebook fit MANIFEST -o CB.safetensors   fit a speech (or --modality image) codebook
    dmlm codebook bpe CB MANIFEST --units DIR --merges N -o CB2   unit merges fitted on the training units
    dmlm tokenize CB MANIFEST... --out DIR         manifests -> unit/code token stores (sharded, resumable)
    dmlm train CONFIG.yaml [key=value ...]         train a DMLM on a task mixture (accelerate; --resume, --dry-run)
    dmlm export RUN -o DIR                         a plain model folder from a run (sharded state consolidated)
    dmlm decode MODEL --task {asr,s2tt:es,t2s,i2t} --manifest M --out hyps.jsonl
    dmlm transcribe MODEL a.wav [b.wav ...]
    dmlm translate MODEL a.wav --to es
    dmlm caption MODEL img.png
    dmlm synthesize-units MODEL "text"
    dmlm speak MODEL "text" -o out.wav
    dmlm resynthesize MODEL in.wav -o out.wav
    dmlm evaluate MODEL --task TASK --manifest M [--out report.json]
    dmlm evaluate-whisper MANIFEST [--model whisper-base]   Whisper on the same clips, scored like --task asr
    dmlm vocoder train MODEL [--minutes 4]        units -> speech vocoder into MODEL/vocoder/
    dmlm vocoder match MODEL [--clips N]          (re)build its matching set of real frames
    dmlm report RUN                               RUN/report.md and docs/results.md from RUN/report.json
    dmlm report RUN --open                        RUN/report.md and docs/open/report.{md,json} (configs/open.yaml)
    dmlm demo [CONFIG.yaml] [key=value ...]        the whole pipeline on mini-world, offline
    dmlm serve MODEL [--port 8000] [--api-key KEY] HTTP API (+ OpenAI audio routes) and a web page
    dmlm study CONFIG.yaml [key=value ...]         arms x seeds, compared with bootstrap intervals
    dmlm study report                             docs/studies.md from the summaries in docs/studies/

Errors a user can fix (dmlm's own `UserError` types: bad manifest, audio, config, codebook
mismatch, missing file) print one line and exit with status 2; anything else is a bug and shows
its traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path


def _decoding_args(p: argparse.ArgumentParser, speech_out: bool = False) -> None:
    """The user's decoding flags (`dmlm.decoding.USER_FIELDS`; `--rerank` where the task is T2S)."""
    from dataclasses import fields

    from dmlm.decoding import SPEECH_OUT_FIELDS, USER_FIELDS, DecodingOptions
    from dmlm.util.config import field_docs

    docs = field_docs(DecodingOptions)
    wanted = SPEECH_OUT_FIELDS if speech_out else USER_FIELDS
    for f in fields(DecodingOptions):
        if f.name in wanted:
            p.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=f.default, dest=f"dec_{f.name}",
                           metavar=f.name.upper(), help=f"{docs.get(f.name, '')} (default: {f.default})")


def _decoding(args) -> dict:
    """The decoding keywords given on the command line (only those that differ from the defaults)."""
    from dmlm.decoding import DecodingOptions

    base = DecodingOptions()
    return {k[4:]: v for k, v in vars(args).items() if k.startswith("dec_") and v != getattr(base, k[4:])}


def _load(args):
    import dmlm

    return dmlm.load(args.model)


def cmd_assets(args) -> None:
    from dmlm.util import assets

    names = args.names or list(assets.PRESETS)
    for n in names:
        print(json.dumps(assets.prepare(n)))


def cmd_prepare(args) -> None:
    from dmlm.data.prepare import PrepareConfig, prepare
    from dmlm.util.config import load_config

    cfg = load_config(None, [f"corpus={args.name}"] + args.overrides, cls=PrepareConfig)
    out = args.out or f"runs/{args.name}/data"
    for split, path in prepare(cfg, out).items():
        print(f"{split}: {path}")


def cmd_codebook(args) -> None:
    from dmlm.recipes.stages import fit_image_codebook, fit_speech_codebook
    from dmlm.tokenizers.image import ImageCodebookSettings
    from dmlm.tokenizers.speech import CodebookSettings
    from dmlm.util.config import load_config

    if args.modality == "image":
        cb = fit_image_codebook(args.manifest, load_config(None, args.overrides, cls=ImageCodebookSettings), args.max_utts)
    else:
        cb = fit_speech_codebook(args.manifest, load_config(None, args.overrides, cls=CodebookSettings), args.max_utts)
    cb.save(args.output)
    print(f"{args.output}: {args.modality} k={cb.k} fingerprint={cb.fingerprint}")


def cmd_codebook_bpe(args) -> None:
    from dmlm.tokenizers.tokenize import fit_bpe

    cb = fit_bpe(args.codebook, args.manifest, args.units, args.merges)
    cb.save(args.output)
    pieces = f"{cb.pieces - cb.k} merged pieces, unit BPE {cb.bpe.fingerprint}" if cb.bpe else "no merges"
    print(f"{args.output}: speech k={cb.k} fingerprint={cb.fingerprint}, {pieces}")


def cmd_tokenize(args) -> None:
    from dmlm.tokenizers.tokenize import tokenize

    for m in args.manifests:
        store, modality = tokenize(args.codebook, m, args.out, shard=args.shard, num_shards=args.num_shards,
                                   external_codes=args.external_codes)
        if store is None:
            print(f"{m}: shard {args.shard}/{args.num_shards} done; the store is merged once every shard is done "
                  "(by whichever job finishes last)")
        else:
            lens = store.lengths()
            print(f"{m}: {len(store)} {'images' if modality == 'image' else 'utterances'}, {int(lens.sum())} tokens "
                  f"(mean {lens.mean():.1f}) -> {store.prefix}")


def cmd_train(args) -> None:
    from dmlm.training.config import RunConfig
    from dmlm.training.train import train
    from dmlm.util.config import load_config

    cfg = load_config(args.config, args.overrides, RunConfig)
    if args.dry_run:
        from dmlm.training.dry_run import dry_run

        print("\n".join(dry_run(cfg, args.launcher or None).lines()))
        return
    print(train(cfg, resume=args.resume, overwrite=args.overwrite))


def cmd_export(args) -> None:
    from dmlm.training.sharded import export_model

    print(export_model(args.run, args.output))


def cmd_decode(args) -> None:
    from dmlm.util.io import write_jsonl

    rows = _load(args).decode(args.task, args.manifest, units=args.units, **_decoding(args))
    write_jsonl(args.out, rows)
    print(f"{len(rows)} hypotheses -> {args.out}")


def cmd_transcribe(args) -> None:
    for path, text in zip(args.audio, _load(args).transcribe(list(args.audio), lang=args.lang, **_decoding(args))):
        print(f"{path}\t{text}")


def cmd_translate(args) -> None:
    if args.speech or args.output:
        return _translate_speech(args)
    for path, text in zip(args.audio, _load(args).translate(list(args.audio), to=args.to, src=args.src, **_decoding(args))):
        print(f"{path}\t{text}")


def _translate_speech(args) -> None:
    """`--speech -o OUT`: one clip -> OUT (a wav); several -> OUT a folder of `<name>.<to>.wav`."""
    from dmlm.util.errors import UserError

    if not (args.speech and args.output):
        raise UserError("translate: --speech writes audio, so it needs -o OUT (and -o is only for --speech)")
    clips = _load(args).translate(list(args.audio), to=args.to, src=args.src, speech=True, how=args.how,
                                  **_decoding(args))
    outs = [Path(args.output)] if len(clips) == 1 else [Path(args.output) / f"{Path(a).stem}.{args.to}.wav"
                                                        for a in args.audio]
    for path, out, audio in zip(args.audio, outs, clips):
        audio.save(out)
        print(f"{path}\t{out}\t{audio.seconds:.2f} s")


def cmd_caption(args) -> None:
    for path, text in zip(args.images, _load(args).caption(list(args.images), lang=args.lang, **_decoding(args))):
        print(f"{path}\t{text}")


def cmd_synthesize_units(args) -> None:
    for text, units in zip(args.text, _load(args).synthesize_units(list(args.text), lang=args.lang, **_decoding(args))):
        print(json.dumps({"text": text, "units": units.tolist()}))


def cmd_speak(args) -> None:
    audio = _load(args).speak(args.text, lang=args.lang, **_decoding(args))
    audio.save(args.output)
    print(f"{args.output}: {audio.seconds:.2f} s")


def cmd_resynthesize(args) -> None:
    from dmlm.api import Audio
    from dmlm.inference import resynthesize
    from dmlm.modeling import CheckpointFiles
    from dmlm.util.audio import load_audio

    # the codebook and vocoder alone: the LM is not loaded
    files = CheckpointFiles(args.model)
    cb = files.load_codebook("speech")
    Audio(resynthesize(cb, files.load_vocoder(cb), load_audio(args.audio))).save(args.output)
    print(args.output)


def _vocoder_data(args) -> tuple[list[str], list[str]]:
    """The audio manifests and units stores a vocoder learns from: --manifest/--units (repeatable,
    in order), else the model's own training manifest and its store."""
    from dmlm.data.split import store_prefix
    from dmlm.modeling import CheckpointFiles
    from dmlm.util.errors import UserError

    if args.manifest and args.units and len(args.units) != len(args.manifest):
        raise UserError(f"{len(args.manifest)} --manifest but {len(args.units)} --units: give one units store per "
                        "manifest, in the same order (or no --units: each manifest's store beside the model's)")
    files = CheckpointFiles(args.model)
    manifests = args.manifest or ([files.train_manifest] if files.train_manifest else [])
    if not manifests:
        raise UserError(f"{args.model}: the checkpoint does not name its training manifest; give --manifest")
    if args.units:
        return manifests, args.units
    if not files.units_dir:
        raise UserError(f"{args.model}: the checkpoint does not name its token stores; give --units")
    return manifests, [str(store_prefix(files.units_dir, m)) for m in manifests]


def _vocoder_data_args(parser: argparse.ArgumentParser) -> None:
    """--manifest/--units of `vocoder train` and `vocoder match` (read by `_vocoder_data`)."""
    parser.add_argument("--manifest", action="append",
                        help="audio manifest; repeat to pool several, e.g. untranscribed audio of the output voice "
                             "(default: the model's training manifest)")
    parser.add_argument("--units", action="append",
                        help="speech token store prefix of each --manifest, in order (default: <the model's units "
                             "folder>/<manifest stem>)")


def cmd_vocoder_train(args) -> None:
    from dmlm.modeling import CheckpointFiles
    from dmlm.util.config import load_config
    from dmlm.vocoder import VocoderConfig, train_vocoder

    files = CheckpointFiles(args.model)
    manifest, units = _vocoder_data(args)
    cfg = load_config(None, args.overrides, cls=VocoderConfig)
    out = train_vocoder(manifest, units, files.codebook_path("speech"), cfg, files.vocoder_dir,
                        max_minutes=args.minutes or None, steps=args.steps or None)
    print(f"vocoder -> {out}")


def cmd_vocoder_match(args) -> None:
    from dmlm.modeling import CheckpointFiles
    from dmlm.util.errors import UserError
    from dmlm.vocoder import add_matching_set

    files = CheckpointFiles(args.model)
    if not files.has_vocoder:
        raise UserError(f"{args.model}: no trained vocoder in {files.vocoder_dir}; run `dmlm vocoder train {args.model}` first")
    manifest, units = _vocoder_data(args)
    out = add_matching_set(files.vocoder_dir, manifest, units, files.codebook_path("speech"), clips=args.clips)
    print(f"matching set -> {out}")


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


def cmd_evaluate(args) -> None:
    from dmlm.evaluation.headline import headline

    out = args.out or str(Path(args.model) / f"eval_{args.task.replace(':', '_')}_{Path(args.manifest).stem}.json")
    rep = _load(args).evaluate(args.task, args.manifest, units=args.units, out=out, limit=args.limit or None,
                               judge=args.judge or None, judge_engine=args.judge_engine, voice_clips=args.voice_clips,
                               **_decoding(args))
    print(json.dumps(headline(rep)))
    print(f"report -> {out}")


def cmd_evaluate_whisper(args) -> None:
    from dmlm.evaluation.headline import headline
    from dmlm.evaluation.whisper_baseline import evaluate_whisper

    manifest = Path(args.manifest)
    task = "asr" if args.language == "en" else f"asr_{args.language}"
    out = args.out or str(manifest.with_name(f"eval_{Path(args.model).name}_{task}_{manifest.stem}.json"))
    rep = evaluate_whisper(manifest, model=args.model, limit=args.limit or None, out=out, language=args.language)
    print(json.dumps(headline(rep)))
    print(f"report -> {out}")


def cmd_report(args) -> None:
    from dmlm.recipes.report import write_reports

    paths = write_reports(args.run, results=None if args.no_docs or args.open else args.results)
    if args.open:  # the open-vocabulary model's pages instead of docs/results.md
        from dmlm.recipes.open_report import publish

        paths += publish(args.run, args.open)
    for path in paths:
        print(path)


def cmd_demo(args) -> None:
    from dmlm.recipes.demo import load_demo_config, run_demo

    cfg = load_demo_config(args.config, args.overrides)
    rep = run_demo(cfg)
    print(f"\n{cfg.prepare.corpus} test split, {rep['minutes']:.1f} min:")
    for task, row in rep["tasks"].items():
        print(f"  {task:12s} " + ", ".join(f"{k} {v:.2f}" for k, v in row.items() if isinstance(v, float)))
    print(f"Report: {cfg.out}/report.md")


def cmd_serve(args) -> None:
    from dmlm.serve import config_from_args, serve

    serve(args.model, config_from_args(args))


def cmd_study(args) -> None:
    if args.config == "report":
        from dmlm.recipes.study_summary import write_studies_doc

        docs = next((o.split("=", 1)[1] for o in args.overrides if o.startswith("docs=")), "docs/studies")
        target = next((o.split("=", 1)[1] for o in args.overrides if o.startswith("out=")), "docs/studies.md")
        print(write_studies_doc(docs, target))
        return
    from dmlm.recipes.study import load_study_config, run_study

    cfg = load_study_config(args.config, args.overrides)
    summary = run_study(cfg)
    print(f"Study {cfg.name}: verdict {summary['verdict']}")
    for c in summary["comparisons"]:
        print(f"  {c['arm']} vs {c['reference']}  {c['metric']:24s} {c['delta']:+7.2f} "
              f"[{c['ci95'][0]:+.2f}, {c['ci95'][1]:+.2f}]  {c['verdict']}")
    print(f"Summary: {cfg.out_dir / (cfg.name + '.md')}")


def _add_overrides(p: argparse.ArgumentParser, cls: type, examples: list[str], intro: str = "", prefix: str = "") -> None:
    """The `key=value ...` positional of a verb whose settings are `cls`: its help names a few keys with their
    defaults, the epilog every field with its docstring (both generated from `cls`, so neither can go stale)."""
    from dmlm.util.config import fields_help, override_help

    shown = override_help(cls, examples, intro or "settings, e.g.")
    have = next((a for a in p._actions if a.dest == "overrides"), None)
    if have is None:
        p.add_argument("overrides", nargs="*", help=shown)
    else:  # a second settings class read by the same verb (codebook fit: speech or image)
        have.help += f"; {shown}"
    p.epilog = ((p.epilog + "\n\n") if p.epilog else "") + f"{prefix}settings ({cls.__name__}):\n{fields_help(cls)}"
    p.formatter_class = argparse.RawDescriptionHelpFormatter


def _add_data_verbs(sub) -> None:
    """assets, prepare, codebook fit, tokenize."""
    from dmlm.data.prepare import PrepareConfig
    from dmlm.tokenizers.image import ImageCodebookSettings
    from dmlm.tokenizers.speech import CodebookSettings

    s = sub.add_parser("assets", help="install/convert offline presets (whisper-base, whisper-tiny.en, smollm2-135m)")
    s.add_argument("names", nargs="*")
    s.set_defaults(fn=cmd_assets)

    s = sub.add_parser("prepare", help="make a demo corpus: manifests + wavs (+ scene images), or captioned digits")
    s.add_argument("name", choices=["mini-world", "bible", "digits"])
    s.add_argument("--out", help="output folder (default runs/NAME/data)")
    _add_overrides(s, PrepareConfig, ["n_train", "n_dev", "n_test", "seed", "workers"])
    s.set_defaults(fn=cmd_prepare)

    s = sub.add_parser("codebook", help="speech and image codebooks")
    cs = s.add_subparsers(dest="action", required=True)
    f = cs.add_parser("fit", help="fit k-means units on a manifest's audio (or images)")
    f.add_argument("manifest")
    f.add_argument("-o", "--output", required=True)
    f.add_argument("--modality", choices=["speech", "image"], default="speech")
    f.add_argument("--max-utts", type=int, default=2000, help="records to fit on (0: all)")
    _add_overrides(f, CodebookSettings, ["backend", "model", "layer", "k", "dedup", "pooling"], "speech, e.g.", "speech ")
    _add_overrides(f, ImageCodebookSettings, ["k", "patch", "image_size"], "image, e.g.", "image (--modality image) ")
    f.set_defaults(fn=cmd_codebook)
    b = cs.add_parser("bpe", help="fit byte-pair merges over a speech codebook's units on the training units")
    b.add_argument("codebook", help="the speech codebook the units were made with")
    b.add_argument("manifest", help="the training manifest (its units are fitted on)")
    b.add_argument("--units", required=True, help="token-store folder of `dmlm tokenize` (or the store's prefix)")
    b.add_argument("--merges", type=int, required=True, help="how many merges (0: a copy without merges)")
    b.add_argument("-o", "--output", required=True, help="the codebook carrying the merges (train with data.codebook=it)")
    b.set_defaults(fn=cmd_codebook_bpe)

    s = sub.add_parser("tokenize", help="manifests -> token stores (speech units or image codes, by the codebook's modality)")
    s.add_argument("codebook")
    s.add_argument("manifests", nargs="+")
    s.add_argument("--out", required=True)
    s.add_argument("--shard", type=int, default=0)
    s.add_argument("--num-shards", type=int, default=1)
    s.add_argument("--external-codes", help="JSONL of {\"id\", \"codes\"} made by an external image tokenizer "
                                            "(with a codebook from `dmlm codebook fit --modality image backend=external`)")
    s.set_defaults(fn=cmd_tokenize)


def _add_train(sub) -> None:
    from dmlm.training.config import RunConfig
    from dmlm.util.config import override_help

    s = sub.add_parser("train", help="train a DMLM from a YAML config")
    s.add_argument("config", nargs="?")
    s.add_argument("overrides", nargs="*", help=override_help(RunConfig, ["train.steps", "model.layers"], "e.g."))
    s.add_argument("--resume", action="store_true", help="continue the run in train.out from its last saved step")
    s.add_argument("--overwrite", action="store_true", help="train.out holds a model: train again from scratch, replacing it")
    s.add_argument("--dry-run", action="store_true", help="build everything (data, model), print the world size, batch, "
                   "tokens per step, memory per rank and FLOPs per step (estimates), train nothing")
    s.add_argument("--launcher", default="", help="--dry-run: the accelerate config the run will be launched with "
                   "(configs/accelerate/X.yaml): its processes and FSDP count")
    s.set_defaults(fn=cmd_train)

    s = sub.add_parser("export", help="a plain model folder from a run (weights consolidated from its sharded state)")
    s.add_argument("run", help="the run's checkpoint folder (train.out)")
    s.add_argument("-o", "--output", required=True, help="the new model folder")
    s.set_defaults(fn=cmd_export)


def _add_scoring_verbs(sub) -> None:
    """decode, evaluate, evaluate-whisper."""
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
            _add_evaluate_options(s)
        _decoding_args(s, speech_out=True)  # --rerank: refused unless the task is t2s
        s.set_defaults(fn=fn)
    s = sub.add_parser("evaluate-whisper", help="score Whisper (greedy, English, no prompt) on a manifest's clips, "
                       "as `evaluate --task asr` scores a model: the baseline beside it (JSON report)")
    s.add_argument("manifest")
    s.add_argument("--model", default="whisper-base", help="a Whisper preset or CTranslate2 folder (default: "
                                                          "whisper-base, whose encoder makes the speech units)")
    s.add_argument("--limit", type=int, default=0, help="score only the first N records of each voice group (0: all)")
    s.add_argument("--language", default="en", help="the recordings of this language, Whisper forced to it (default en)")
    s.add_argument("--out", help="the JSON report (default: beside the manifest); *.hyps.jsonl beside it")
    s.set_defaults(fn=cmd_evaluate_whisper)


def _add_evaluate_options(s: argparse.ArgumentParser) -> None:
    s.add_argument("--limit", type=int, default=0, help="score only the first N records of each voice group "
                                                        "(training voices, held-out voice; 0: all)")
    s.add_argument("--judge", default="", help="t2s/resynthesis: what transcribes the vocoded speech: a Whisper "
                                               "preset (e.g. whisper-base) or a dmlm ASR checkpoint folder; "
                                               "t2s without it scores units only")
    s.add_argument("--judge-engine", default="ctranslate2", choices=["ctranslate2", "transformers"])
    s.add_argument("--voice-clips", type=_voice_clips, default=0, metavar="N|all",
                   help="resynthesis with --limit: score the vocoder's own voice on N training-voice clips, "
                        "or all the manifest has (clips past the limit count only in that group; default 0: "
                        "only those within the limit)")


def _add_model_verbs(sub) -> None:
    """transcribe, translate, caption, synthesize-units, speak, resynthesize: one call into `dmlm.load(MODEL)`."""
    s = sub.add_parser("transcribe", help="print transcripts of audio files")
    s.add_argument("model")
    s.add_argument("audio", nargs="+")
    s.add_argument("--lang", default="en", help="language of the text/speech (default: en)")
    _decoding_args(s)
    s.set_defaults(fn=cmd_transcribe)

    s = sub.add_parser("translate", help="print translations of speech files")
    s.add_argument("model")
    s.add_argument("audio", nargs="+")
    s.add_argument("--to", required=True, help="target language code, e.g. es")
    s.add_argument("--from", dest="src", default="en", help="source language code (default: en)")
    s.add_argument("--speech", action="store_true", help="speak the translation (speech-to-speech) into -o")
    s.add_argument("-o", "--output", default="", help="--speech: the wav to write (a folder for several inputs)")
    s.add_argument("--how", default="direct", choices=["direct", "chained", "cascade"],
                   help="--speech: direct (s2st), chained (text then units, one decode) or cascade (s2tt, then t2s)")
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
    _decoding_args(s, speech_out=True)
    s.set_defaults(fn=cmd_synthesize_units)

    s = sub.add_parser("speak", help="text -> speech units -> vocoder -> wav")
    s.add_argument("model")
    s.add_argument("text")
    s.add_argument("-o", "--output", required=True)
    s.add_argument("--lang", default="en", help="language of the text/speech (default: en)")
    _decoding_args(s, speech_out=True)
    s.set_defaults(fn=cmd_speak)

    s = sub.add_parser("resynthesize", help="audio -> units -> audio (the codebook and vocoder alone)")
    s.add_argument("model")
    s.add_argument("audio")
    s.add_argument("-o", "--output", required=True)
    s.set_defaults(fn=cmd_resynthesize)


def _add_vocoder(sub) -> None:
    from dmlm.vocoder import VocoderConfig

    s = sub.add_parser("vocoder", help="unit vocoders")
    vs = s.add_subparsers(dest="action", required=True)
    f = vs.add_parser("train", help="train a units -> speech vocoder into MODEL/vocoder/")
    f.add_argument("model")
    _vocoder_data_args(f)
    f.add_argument("--minutes", type=float, default=4.0, help="time budget (0: none)")
    f.add_argument("--steps", type=int, default=0, help="step budget (0: none)")
    _add_overrides(f, VocoderConfig, ["dim", "batch_size", "gl_iters"], "VocoderConfig fields, e.g.")
    f.set_defaults(fn=cmd_vocoder_train)
    f = vs.add_parser("match", help="(re)build MODEL/vocoder's matching set: the real frames `knn` draws on")
    f.add_argument("model")
    _vocoder_data_args(f)
    f.add_argument("--clips", type=int, help="clips of the output voice in the set (default: the vocoder's matching_clips)")
    f.set_defaults(fn=cmd_vocoder_match)


def _add_recipe_verbs(sub) -> None:
    """report, demo, serve, study."""
    s = sub.add_parser("report", help="render RUN/report.md and docs/results.md from a run's report.json")
    s.add_argument("run", help="a demo run folder (holds report.json)")
    s.add_argument("--results", default="docs/results.md", help="the results page to write (default: docs/results.md)")
    s.add_argument("--no-docs", action="store_true", help="only RUN/report.md")
    s.add_argument("--open", nargs="?", const="docs/open", metavar="DIR",
                   help="an open-vocabulary run (configs/open.yaml): DIR/report.md and DIR/report.json (default DIR: "
                        "docs/open) instead of the results page")
    s.set_defaults(fn=cmd_report)

    s = sub.add_parser("demo", help="whole pipeline on mini-world, offline")
    s.add_argument("config", nargs="?", help="YAML (default: built-in demo settings)")
    s.add_argument("overrides", nargs="*")
    s.set_defaults(fn=cmd_demo)

    from dmlm.serve.config import add_arguments as serve_arguments

    s = sub.add_parser("serve", help="serve a model over HTTP: dmlm and OpenAI-compatible routes, a web page")
    s.add_argument("model")
    serve_arguments(s)
    s.set_defaults(fn=cmd_serve)

    s = sub.add_parser("study", help="compare arms over seeds (configs/studies/*.yaml); `dmlm study report` writes docs/studies.md")
    s.add_argument("config", help="a study YAML, or `report` (options docs=FOLDER out=FILE)")
    s.add_argument("overrides", nargs="*")
    s.set_defaults(fn=cmd_study)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dmlm", description="Discrete Multimodal Language Models")
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="verb", required=True)
    for add in (_add_data_verbs, _add_train, _add_scoring_verbs, _add_model_verbs, _add_vocoder, _add_recipe_verbs):
        add(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    from dmlm.util.cores import quiet_spin_waits

    quiet_spin_waits()  # before anything loads torch (libgomp reads it once)
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
    from dmlm.util.errors import UserError

    try:
        args.fn(args)
    except UserError as e:
        if args.verbose:
            raise  # -v: the full traceback, for bug reports
        print(f"dmlm {args.verb}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
