"""`dmlm evaluate --task T`: score a checkpoint on one task of a manifest.

- Generation tasks (asr, s2tt, i2t, t2s) decode every record the task can read and score
  hypotheses with the task's `evaluate` (WER/CER, BLEU/chrF, CIDEr/BLEU, unit accuracy);
  LM tasks are scored teacher-forced (perplexity over the target tokens).
- Records spoken by the held-out voice (`dmlm.data.manifest.is_heldout_voice`) are scored apart; tasks
  whose input is not speech skip those duplicates (same text, same image). Records with a held-out combination
  (`custom.heldout_combo`, mini-world) get their own scores too: that is where
  generalization shows.
- Tasks whose row says so (`Scoring.baseline`: S2TT, I2T) come with a trivial baseline scored the
  same way: the most frequent target of the training manifest (ties: the most typical sentence;
  `trivial_baseline`), predicted for every record. A model must beat it clearly to have learned
  anything from its input. Which tasks are decoded, their normalizer and baseline are facts of
  the task's row: nothing here compares task names.
- Units and codes come from the split's token stores when it has them (their fingerprints must
  match the checkpoint's codebooks), else are computed here with the checkpoint's codebooks
  (`Split.put`); either way tasks read them through `Split.tokens`.
- The JSON report names the model, manifest, codebook fingerprints, decoding options and
  normalizer; `*.hyps.jsonl` beside it holds every hypothesis.
- Nothing leaves the score silently: a record without the modality the task reads (no `audio`
  for ASR) is counted in the report's `skipped` with its id and a warning; a record without its
  reference (no `text` for ASR) is an error naming it, before anything is decoded.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict
from pathlib import Path

from dmlm.data.manifest import HELDOUT_VOICE, is_heldout_voice, read_manifest
from dmlm.data.split import Split
from dmlm.decoding import DecodingOptions
from dmlm.evaluation.grouping import limit_per_group, voice_groups
from dmlm.evaluation.options import EvalOptions
from dmlm.modeling import Checkpoint
from dmlm.tasks import TASKS, Sources, Task, get_task, parse_spec, render
from dmlm.util.errors import UserError
from dmlm.util.io import atomic_write_json, write_jsonl

log = logging.getLogger(__name__)

TOKEN_MODALITIES = ("speech", "image")  # what a codebook turns into tokens (text is tokenized on the fly)


def _field_of(modality: str) -> str:
    """The manifest field holding a record's `modality` (speech: audio)."""
    return "audio" if modality == "speech" else modality


def sources_for(ck: Checkpoint, split: Split, records: list, need: set[str]) -> Sources:
    """Where a task reads `records`' tokens: the split's token stores (checked against the checkpoint's
    codebooks), else tokens computed here with those codebooks; text through the checkpoint's tokenizer."""
    from dmlm.inference import image_codes, speech_units
    from dmlm.tokenizers.tokenize import load_record_audio, load_record_image

    for m in sorted(need):
        cb = ck.codebook(m)
        if split.stores is not None:
            split.store(m, cb)
            continue
        rs = [r for r in records if getattr(r, _field_of(m)) is not None]
        if m == "speech":
            if rs:
                log.info("encoding %d clips with the checkpoint's codebook", len(rs))
            toks = speech_units(cb, [load_record_audio(split.manifest, r) for r in rs])
        else:
            toks = image_codes(cb, [load_record_image(split.manifest, r, cb.settings.image_size) for r in rs])
        split.put(m, {r.id: t for r, t in zip(rs, toks)})
    return Sources(split.manifest, ck.text, speech=split.reader("speech") if "speech" in need else None,
                   image=split.reader("image") if "image" in need else None)


def _group_scores(task: Task, rows: list[dict]) -> dict:
    groups = voice_groups(rows)
    seen = [rows[i] for i in groups.get("seen", [])]
    unseen = [rows[i] for i in groups.get(HELDOUT_VOICE, [])]
    out = task.evaluate(seen) if seen else {}
    if unseen:
        hv = task.evaluate(unseen)
        out[HELDOUT_VOICE] = hv
        out.update({f"{k}_{HELDOUT_VOICE}": v for k, v in hv.items() if isinstance(v, float)})
    combo = [r for r in seen if r.get("heldout_combo")]
    if combo and len(combo) < len(seen):
        out["heldout_combo"] = task.evaluate(combo)
    return out


def baseline_hypothesis(spec: str, train_manifest: str | Path | None) -> str | None:
    """The trivial baseline's constant output for `spec` (a task whose row has `Scoring.baseline`), from
    the training manifest; None for other tasks or without the manifest."""
    from dmlm.metrics import trivial_baseline

    name, lang = parse_spec(spec)
    task = get_task(name)
    if not task.scoring.baseline or not train_manifest or not Path(train_manifest).is_file():
        return None
    sources = Sources(train_manifest, None)
    targets = [t for r in read_manifest(train_manifest) if (t := task.baseline_target(r, sources, lang))]
    return trivial_baseline(targets) if targets else None


def decode_task(ck: Checkpoint, spec: str, split: Split, opts: DecodingOptions = DecodingOptions(),
                progress: bool = True) -> list[dict]:
    """[{"id", "hyp"}] for every record of the split the task can read; needs no references."""
    name, lang = parse_spec(spec)
    task = get_task(name)
    if not task.decoded:
        decoded = [n for n, t in TASKS.items() if t.decoded]
        raise UserError(f"task {name} is not decoded; choose one of {', '.join(decoded)}")
    records = read_manifest(split.manifest)
    src = sources_for(ck, split, records, {m for m in (task.source, task.target) if m in TOKEN_MODALITIES})
    pairs = [(r, task.source_sample(r, src, lang)) for r in records]
    pairs = [(r, s) for r, s in pairs if s is not None]
    hyps = _decode(ck, task, [s for _, s in pairs], opts, progress)
    return [{"id": r.id, "hyp": h} for (r, _), h in zip(pairs, hyps)]


def _decode(ck: Checkpoint, task: Task, samples: list, opts: DecodingOptions, progress: bool) -> list:
    """Hypotheses of `samples`: text, or a list of unit ids for a speech target."""
    from dmlm.inference import decode_text, run_task

    outs = run_task(ck, task.name, samples, opts, progress=progress)
    return [task.output_units(o, ck.vocab) if task.target == "speech" else decode_text(ck, o) for o in outs]


def _lm_rows(ck: Checkpoint, spec: str, samples: list, batch_size: int) -> list[dict]:
    """Teacher-forced NLL of each sample's target tokens (its target span, close tag and eos)."""
    from dmlm.decoding import target_log_likelihood

    task = get_task(parse_spec(spec)[0])
    rendered = [render(task, s, ck.vocab, spec) for s in samples]
    logps = target_log_likelihood(ck.model, [r.ids[: r.prompt_len] for r in rendered],
                                  [r.ids[r.prompt_len :] for r in rendered], ck.vocab.pad, batch_size)
    return [{"id": s.id, "nll": -lp, "tokens": len(r.ids) - r.prompt_len} for s, r, lp in zip(samples, rendered, logps)]


def _scored_records(task: Task, spec: str, split: Split, limit: int | None) -> tuple[list, list[str], str | None]:
    """(records the task scores, ids skipped for lack of the modality it reads, that modality's field)."""
    records = read_manifest(split.manifest)
    if (task.source or task.target) != "speech":
        # a held-out-voice record repeats a sentence in another voice: only speech input tells them apart
        records = [r for r in records if not is_heldout_voice(r)]
    need = [m for m in TOKEN_MODALITIES if m in (task.source, task.target)]
    # keep only the records this task reads (so on-the-fly tokenization does no extra work)
    key = _field_of(need[0]) if need else None
    skipped = [r.id for r in records if key and getattr(r, key) is None]
    if skipped:
        log.warning("%s: %d record(s) without '%s' are not scored for %s (e.g. %s)", split.manifest, len(skipped), key,
                    spec, ", ".join(map(repr, skipped[:5])))
        records = [r for r in records if getattr(r, key) is not None]
    # only the records the spec reads in its language (s2tt:es never scores a Spanish recording): before the
    # limit, so a limit counts scored records
    records = [r for r in records if task.takes(r, parse_spec(spec)[1])]
    records = limit_per_group(records, limit)
    if not records:
        raise UserError(f"{split.manifest}: no record has what task {spec} needs")
    return records, skipped, key


def _pairs(task: Task, records: list, src: Sources, lang: str | None, manifest: Path, spec: str) -> list[tuple]:
    """(record, sample) of every record the task can read: the source half for a decoded task (a record
    without its reference is an error naming it, before decoding), the whole sample for an LM task."""
    if task.decoded:
        pairs = [(r, task.source_sample(r, src, lang)) for r in records]
        for r, _ in pairs:
            task.reference(r, src, lang)
    else:
        pairs = [(r, task.sample(r, src, lang)) for r in records]
    pairs = [(r, s) for r, s in pairs if s is not None]
    if not pairs:
        raise UserError(f"{manifest}: no record has what task {spec} needs")
    return pairs


def _decoded_scores(ck: Checkpoint, spec: str, pairs: list, src: Sources, opts: DecodingOptions,
                    options: EvalOptions) -> tuple[dict, list[dict]]:
    """The scores of a decoded task (by voice group, with its baseline) and its hypothesis rows."""
    name, lang = parse_spec(spec)
    task = get_task(name)
    hyps = _decode(ck, task, [s for _, s in pairs], opts, options.progress)
    rows = [{"id": r.id, "ref": task.reference(r, src, lang), "hyp": h, HELDOUT_VOICE: is_heldout_voice(r),
             "heldout_combo": bool(r.custom.get("heldout_combo"))} for (r, _), h in zip(pairs, hyps)]
    report = {**_group_scores(task, rows), "decoding": asdict(opts), "normalizer": task.scoring.normalizer}
    train_manifest = options.train_manifest or (ck.files.train_manifest if ck.files else None)
    base = baseline_hypothesis(spec, train_manifest)
    if base is not None:
        seen = [r for r in rows if not r[HELDOUT_VOICE]]
        scored = task.evaluate([{**r, "hyp": base} for r in seen])
        report["baseline"] = {"hypothesis": base, "train_manifest": str(train_manifest), **scored}
        for k in ("bleu", "chrf", "cider"):
            if k in scored:
                report[f"baseline_{k}"] = scored[k]
    return report, rows


def evaluate_task(ck: Checkpoint, spec: str, split: Split, out: Path | None = None,
                  opts: DecodingOptions = DecodingOptions(), options: EvalOptions = EvalOptions()) -> dict:
    """Score `ck` on task `spec` (e.g. "s2tt:es") over `split`; see the module docstring.

    `options.train_manifest`: for the trivial baseline; default, the manifest the model was trained on.
    `options.limit`: score only the first N records the task can read of each voice group
    (`dmlm.evaluation.grouping`). `out`: the JSON report; `*.hyps.jsonl` beside it for a decoded task.
    """
    t0 = time.time()
    name, lang = parse_spec(spec)
    task = get_task(name)
    records, skipped, key = _scored_records(task, spec, split, options.limit)
    src = sources_for(ck, split, records, {m for m in (task.source, task.target) if m in TOKEN_MODALITIES})
    pairs = _pairs(task, records, src, lang, split.manifest, spec)
    report = {
        "task": spec, "model": str(Path(ck.path).resolve()), "manifest": str(split.manifest.resolve()),
        "codebook_fingerprints": dict(ck.vocab.fingerprints), "records": len(pairs),
    }
    if skipped:
        report["skipped"] = {"reason": f"no '{key}'", "count": len(skipped), "ids": skipped[:100]}
    rows = None
    if task.decoded:
        scores, rows = _decoded_scores(ck, spec, pairs, src, opts, options)
        report.update(scores)
    else:
        report.update(task.evaluate(_lm_rows(ck, spec, [s for _, s in pairs], opts.batch_size)))
    report["seconds"] = round(time.time() - t0, 1)
    if out:
        out = Path(out)
        atomic_write_json(out, report)
        if rows is not None:
            write_jsonl(out.with_suffix(".hyps.jsonl"), rows)
    return report
