"""`dmlm evaluate --task T`: score a checkpoint on one task of a manifest.

- Generation tasks (asr, s2tt, i2t, t2s) decode every record the task can read and score
  hypotheses with the task's `evaluate` (WER/CER, BLEU/chrF, CIDEr/BLEU, unit accuracy);
  LM tasks are scored teacher-forced (perplexity over the target tokens).
- Records spoken by the held-out voice (`custom.heldout_voice`) are scored apart; tasks
  whose input is not speech skip those duplicates (same text, same image). Records with a held-out combination
  (`custom.heldout_combo`, mini-world) get their own scores too: that is where
  generalization shows.
- S2TT and I2T come with a trivial baseline scored the same way: the most frequent target of
  the training manifest (ties: the most typical sentence; `trivial_baseline`), predicted for
  every record. A model must beat it clearly to have learned anything from its input.
- Units and codes come from token stores when given (their fingerprints must match the
  checkpoint's codebooks), else are computed here with the checkpoint's codebooks.
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

import numpy as np

from dmlm.data.manifest import read_manifest
from dmlm.data.split import Split
from dmlm.decoding import DecodingOptions
from dmlm.evaluation.grouping import limit_per_group, voice_groups
from dmlm.modeling import Checkpoint, load_checkpoint
from dmlm.tasks import Sources, get_task, parse_spec, render
from dmlm.util.errors import UserError
from dmlm.util.io import atomic_write_json, write_jsonl

log = logging.getLogger(__name__)

GENERATION_TASKS = ("asr", "s2tt", "i2t", "t2s")


class _Computed(dict):
    """A token-store stand-in: tokens computed here with the checkpoint's codebook, by record id."""

    def get(self, rid: str) -> np.ndarray:  # noqa: D102  (TokenStore.get's signature, no default)
        return self[rid]


def sources_for(ck: Checkpoint, manifest: str | Path, records: list, units: str | Path | None,
                need: set[str]) -> Sources:
    """Where a task reads `records`' tokens: the manifest's token stores (`units`, checked against the
    checkpoint's codebooks), else tokens computed here with those codebooks."""
    from dmlm.inference import image_codes, speech_units
    from dmlm.tokenizers.tokenize import load_record_audio, load_record_image

    class _Text:  # the checkpoint's tokenizer, text ids only
        def encode(self, t: str) -> list[int]:
            return ck.tokenizer.encode(t, add_special_tokens=False)

    split = Split(manifest, units)
    stores = {}
    for m in need:
        if units is not None:
            stores[m] = split.store(m, ck.codebook(m))
            continue
        comp = _Computed()
        cb = ck.codebook(m)
        if m == "speech":
            rs = [r for r in records if r.audio is not None]
            if rs:
                log.info("encoding %d clips with the checkpoint's codebook", len(rs))
            for r, u in zip(rs, speech_units(cb, [load_record_audio(manifest, r) for r in rs])):
                comp[r.id] = u
        else:
            rs = [r for r in records if r.image is not None]
            size = cb.settings.image_size
            for r, c in zip(rs, image_codes(cb, [load_record_image(manifest, r, size) for r in rs])):
                comp[r.id] = c
        stores[m] = comp
    return Sources(manifest, _Text(), speech=stores.get("speech"), image=stores.get("image"))


def _group_scores(task, rows: list[dict]) -> dict:
    groups = voice_groups(rows)
    seen = [rows[i] for i in groups.get("seen", [])]
    unseen = [rows[i] for i in groups.get("heldout_voice", [])]
    out = task.evaluate(seen) if seen else {}
    if unseen:
        hv = task.evaluate(unseen)
        out["heldout_voice"] = hv
        out.update({f"{k}_heldout_voice": v for k, v in hv.items() if isinstance(v, float)})
    combo = [r for r in seen if r.get("heldout_combo")]
    if combo and len(combo) < len(seen):
        out["heldout_combo"] = task.evaluate(combo)
    return out


def baseline_hypothesis(ck: Checkpoint, spec: str, train_manifest: str | Path | None) -> str | None:
    """The trivial baseline's constant output for a text-target task, from the training manifest."""
    from dmlm.metrics import trivial_baseline

    name, lang = parse_spec(spec)
    if name not in ("s2tt", "i2t") or not train_manifest or not Path(train_manifest).is_file():
        return None
    task = get_task(name)
    targets = []
    for r in read_manifest(train_manifest):
        if name == "s2tt" and r.audio is not None and (r.translations or {}).get(lang):
            targets.append(r.translations[lang])
        elif name == "i2t" and r.image is not None and r.caption:
            targets.append(task.reference(r, Sources(train_manifest, None), lang)[0])
    return trivial_baseline(targets) if targets else None


def decode_task(model: str | Path | Checkpoint, spec: str, manifest: str | Path, opts: DecodingOptions = DecodingOptions(),
                units: str | Path | None = None, progress: bool = True) -> list[dict]:
    """[{"id", "hyp"}] for every record of `manifest` the task can read; needs no references."""
    from dmlm.inference import decode_text, run_task

    ck = model if isinstance(model, Checkpoint) else load_checkpoint(model)
    name, lang = parse_spec(spec)
    task = get_task(name)
    if name not in GENERATION_TASKS:
        raise UserError(f"task {name} is not decoded; choose one of {', '.join(GENERATION_TASKS)}")
    records = read_manifest(manifest)
    src = sources_for(ck, manifest, records, units, {m for m in (task.source, task.target) if m in ("speech", "image")})
    pairs = [(r, task.source_sample(r, src, lang)) for r in records]
    pairs = [(r, s) for r, s in pairs if s is not None]
    outs = run_task(ck, name, [s for _, s in pairs], opts, progress=progress)
    return [{"id": r.id, "hyp": ck.vocab.ids_to_units(o) if task.target == "speech" else decode_text(ck, o)}
            for (r, _), o in zip(pairs, outs)]


def _lm_rows(ck: Checkpoint, spec: str, samples: list, batch_size: int) -> list[dict]:
    """Teacher-forced NLL of each sample's target tokens (its target span, close tag and eos)."""
    from dmlm.decoding import target_log_likelihood

    task = get_task(parse_spec(spec)[0])
    rendered = [render(task, s, ck.vocab, spec) for s in samples]
    logps = target_log_likelihood(ck.model, [r.ids[: r.prompt_len] for r in rendered],
                                  [r.ids[r.prompt_len :] for r in rendered], ck.vocab.pad, batch_size)
    return [{"id": s.id, "nll": -lp, "tokens": len(r.ids) - r.prompt_len} for s, r, lp in zip(samples, rendered, logps)]


def evaluate_task(model: str | Path | Checkpoint, spec: str, manifest: str | Path, out: str | Path | None = None,
                  opts: DecodingOptions = DecodingOptions(), units: str | Path | None = None,
                  train_manifest: str | Path | None = None, limit: int | None = None, progress: bool = True) -> dict:
    """Score `model` on task `spec` (e.g. "s2tt:es") over `manifest`; see the module docstring.

    `units`: folder of token stores for this manifest (`dmlm tokenize`'s output folder).
    `train_manifest`: for the trivial baseline; default, the manifest the model was trained on.
    `limit`: score only the first N records the task can read of each voice group (`dmlm.evaluation.grouping`).
    """
    t0 = time.time()
    ck = model if isinstance(model, Checkpoint) else load_checkpoint(model)
    name, lang = parse_spec(spec)
    task = get_task(name)
    records = read_manifest(manifest)
    if task.source != "speech" and task.name != "speech_lm":
        # a held-out-voice record repeats a sentence in another voice: only speech input tells them apart
        records = [r for r in records if not r.custom.get("heldout_voice")]
    need = {m for m in (task.source, task.target) if m in ("speech", "image")}
    # keep only the records this task reads (so on-the-fly tokenization does no extra work)
    key = "audio" if "speech" in need else "image" if "image" in need else None
    skipped = [r.id for r in records if key and getattr(r, key) is None]
    if skipped:
        log.warning("%s: %d record(s) without '%s' are not scored for %s (e.g. %s)", manifest, len(skipped), key,
                    spec, ", ".join(map(repr, skipped[:5])))
        records = [r for r in records if getattr(r, key) is not None]
    records = limit_per_group(records, limit)
    if not records:
        raise UserError(f"{manifest}: no record has what task {spec} needs")
    src = sources_for(ck, manifest, records, units, need)
    if name in GENERATION_TASKS:
        pairs = [(r, task.source_sample(r, src, lang)) for r in records]
        for r, _ in pairs:
            task.reference(r, src, lang)  # a record without its reference is an error naming it, before decoding
    else:
        pairs = [(r, task.sample(r, src, lang)) for r in records]
    pairs = [(r, s) for r, s in pairs if s is not None]
    if not pairs:
        raise UserError(f"{manifest}: no record has what task {spec} needs")
    report = {
        "task": spec, "model": str(Path(ck.path).resolve()), "manifest": str(Path(manifest).resolve()),
        "codebook_fingerprints": dict(ck.vocab.fingerprints), "records": len(pairs),
    }
    if skipped:
        report["skipped"] = {"reason": f"no '{key}'", "count": len(skipped), "ids": skipped[:100]}
    if name not in GENERATION_TASKS:
        rows = _lm_rows(ck, spec, [s for _, s in pairs], opts.batch_size)
        report.update(task.evaluate(rows))
    else:
        from dmlm.inference import decode_text, run_task

        outs = run_task(ck, name, [s for _, s in pairs], opts, progress=progress)
        rows = []
        for (r, s), o in zip(pairs, outs):
            hyp = ck.vocab.ids_to_units(o) if task.target == "speech" else decode_text(ck, o)
            rows.append({"id": r.id, "ref": task.reference(r, src, lang), "hyp": hyp,
                         "heldout_voice": bool(r.custom.get("heldout_voice")),
                         "heldout_combo": bool(r.custom.get("heldout_combo"))})
        report.update(_group_scores(task, rows))
        report["decoding"] = asdict(opts)
        report["normalizer"] = {"asr": "dmlm.metrics.normalize.normalize", "i2t": "dmlm.metrics.normalize.normalize",
                                "s2tt": "sacrebleu defaults (13a tokenizer)", "t2s": "none (unit ids)"}[name]
        if train_manifest is None:
            train_manifest = ck.meta.get("config", {}).get("data", {}).get("train")
        base = baseline_hypothesis(ck, spec, train_manifest)
        if base is not None:
            seen = [r for r in rows if not r["heldout_voice"]]
            scored = task.evaluate([{**r, "hyp": base} for r in seen])
            report["baseline"] = {"hypothesis": base, "train_manifest": str(train_manifest), **scored}
            for k in ("bleu", "chrf", "cider"):
                if k in scored:
                    report[f"baseline_{k}"] = scored[k]
    report["seconds"] = round(time.time() - t0, 1)
    if out:
        out = Path(out)
        atomic_write_json(out, report)
        if name in GENERATION_TASKS:
            write_jsonl(out.with_suffix(".hyps.jsonl"), rows)
    return report
