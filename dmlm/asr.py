"""ASR inference and evaluation: audio -> units (the checkpoint's codebook) -> text.

A checkpoint carries its codebook and tokenizer, so `transcribe` needs only the checkpoint
and audio. Scoring goes through `dmlm.evaluate.evaluate_task`, which also takes precomputed units
from token stores (their codebook fingerprint must match the checkpoint's).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from dmlm.data.manifest import read_manifest
from dmlm.decoding import DecodingOptions, generate
from dmlm.model import Checkpoint
from dmlm.tasks import Sample, get_task


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


def evaluate_asr(model: str | Path, manifest: str | Path, out: str | Path | None = None,
                 opts: DecodingOptions = DecodingOptions(), units: str | Path | None = None) -> dict:
    """WER/CER of `model` on `manifest`; groups held-out-voice records separately (`dmlm.evaluate`)."""
    from dmlm.evaluate import evaluate_task

    records = read_manifest(manifest)
    bad = next((r.id for r in records if r.audio is not None and not (r.text or "").strip()), None)
    if bad is not None:
        raise ValueError(f"{manifest}: record {bad!r} has no reference 'text' to score against")
    return evaluate_task(model, "asr", manifest, out, opts, units=units, progress=True)
