"""ASR inference and evaluation: audio -> units (the checkpoint's codebook) -> text.

A checkpoint carries its codebook and tokenizer, so `transcribe` needs only the checkpoint
and audio. Precomputed units can be passed as a token store; its codebook fingerprint must
match the checkpoint's.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from dmlm.data.manifest import atomic_write_text, read_manifest
from dmlm.data.shards import TokenStore
from dmlm.decoding import DecodingOptions, generate
from dmlm.evaluation.metrics import error_rates
from dmlm.model import Checkpoint, load_checkpoint
from dmlm.tasks import Sample, get_task
from dmlm.tokenize import load_record_audio


def transcribe_units(ck: Checkpoint, units: Sequence[np.ndarray], lang: str = "en",
                     opts: DecodingOptions = DecodingOptions(), progress: bool = False) -> list[str]:
    task = get_task("asr")
    prompts = [task.prompt(Sample(id=str(i), units=u, src_lang=lang), ck.vocab) for i, u in enumerate(units)]
    outs = generate(ck.model, prompts, ck.vocab, "text", opts, progress=progress)
    return [ck.tokenizer.decode(o, skip_special_tokens=True).strip() for o in outs]


def transcribe_files(ck: Checkpoint, paths: Sequence[str | Path], opts: DecodingOptions = DecodingOptions()) -> list[str]:
    from dmlm.audio import load_audio

    cb = ck.codebook("speech")
    units = [np.asarray(u) for u in cb.encode_batch([load_audio(p) for p in paths])]
    return transcribe_units(ck, units, opts=opts)


def decode_manifest(ck: Checkpoint, manifest: str | Path, opts: DecodingOptions = DecodingOptions(),
                    units: TokenStore | None = None) -> list[dict]:
    """[{"id", "hyp", "ref"}] for every record of `manifest`."""
    records = read_manifest(manifest)
    if units is not None:
        ck.codebook("speech").check(units.fingerprint, f"token store {units.prefix}")
        seqs = [units.get(r.id) for r in records]
    else:
        cb = ck.codebook("speech")
        seqs = []
        for s in range(0, len(records), 64):
            seqs += [np.asarray(u) for u in cb.encode_batch([load_record_audio(manifest, r) for r in records[s : s + 64]])]
    hyps = transcribe_units(ck, seqs, opts=opts, progress=True)
    return [{"id": r.id, "hyp": h, "ref": r.text, "heldout_voice": bool(r.custom.get("heldout_voice"))}
            for r, h in zip(records, hyps)]


def evaluate_asr(model: str | Path, manifest: str | Path, out: str | Path | None = None,
                 opts: DecodingOptions = DecodingOptions(), units: str | Path | None = None) -> dict:
    """WER/CER of `model` on `manifest`; groups held-out-voice records separately."""
    t0 = time.time()
    ck = load_checkpoint(model)
    rows = decode_manifest(ck, manifest, opts, TokenStore(units) if units else None)
    if any(not r["ref"] for r in rows):
        bad = next(r["id"] for r in rows if not r["ref"])
        raise ValueError(f"{manifest}: record {bad!r} has no reference 'text' to score against")
    seen = [r for r in rows if not r["heldout_voice"]]
    unseen = [r for r in rows if r["heldout_voice"]]
    report = {
        "task": "asr", "model": str(Path(model).resolve()), "manifest": str(Path(manifest).resolve()),
        "codebook_fingerprint": ck.vocab.fingerprints.get("speech"), "decoding": opts.__dict__,
        "normalizer": "dmlm.evaluation.normalize.normalize", "seconds": round(time.time() - t0, 1),
    }
    if seen:
        report.update(error_rates([r["ref"] for r in seen], [r["hyp"] for r in seen]))
    if unseen:
        hv = error_rates([r["ref"] for r in unseen], [r["hyp"] for r in unseen])
        report.update({"wer_heldout_voice": hv["wer"], "cer_heldout_voice": hv["cer"], "heldout_voice": hv})
    if out:
        out = Path(out)
        atomic_write_text(out, json.dumps(report, indent=1))
        atomic_write_text(out.with_suffix(".hyps.jsonl"), "".join(json.dumps(r) + "\n" for r in rows))
    return report
