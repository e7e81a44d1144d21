"""Inference for every task: one prompt builder (the task's), one decoder, per-modality outputs.

`run_task` prompts with `Task.prompt` (exactly the rendered training prefix) and decodes in
the task's target modality (`dmlm.decoding.generate`, which masks every other modality).
The task-named helpers turn raw inputs (wav files, images, strings) into samples with the
checkpoint's own codebooks and tokenizer, and decoded ids back into text or units.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from dmlm.decoding import DecodingOptions, generate
from dmlm.model import Checkpoint
from dmlm.tasks import Sample, get_task


def run_task(ck: Checkpoint, task_name: str, samples: Sequence[Sample], opts: DecodingOptions = DecodingOptions(),
             progress: bool = False) -> list[list[int]]:
    """Decoded target ids (unified vocabulary) for each sample."""
    task = get_task(task_name)
    for m in {task.source, task.target} - {None}:
        if m != "text" and not ck.vocab.range(m)[1] > ck.vocab.range(m)[0]:
            raise ValueError(f"{ck.path}: this model has no {m} vocabulary, so it cannot do {task_name}")
    prompts = [task.prompt(s, ck.vocab) for s in samples]
    return generate(ck.model, prompts, ck.vocab, task.target, opts, progress=progress)


def decode_text(ck: Checkpoint, ids: Sequence[int]) -> str:
    return ck.tokenizer.decode(list(ids), skip_special_tokens=True).strip()


def encode_text(ck: Checkpoint, text: str) -> list[int]:
    if not text or not text.strip():
        raise ValueError("cannot synthesize empty text")
    ids = ck.tokenizer.encode(text, add_special_tokens=False)
    lo, hi = ck.vocab.range("text")
    bad = [i for i in ids if not lo <= i < hi]
    if bad:  # the checkpoint's special/unit tokens typed as text would leak into the prompt
        raise ValueError(f"text {text!r} contains dmlm special tokens ({ck.tokenizer.decode(bad)!r}); "
                         "remove them or escape the <| |> markers")
    unk = getattr(ck.tokenizer, "unk_token_id", None)
    if unk is not None and unk in ids:
        raise ValueError(f"text {text!r} has characters the model's tokenizer cannot encode (they map to its unknown token)")
    return ids


def load_units(ck: Checkpoint, paths: Sequence[str | Path]) -> list[np.ndarray]:
    from dmlm.audio import load_audio

    cb = ck.codebook("speech")
    return [np.asarray(u) for u in cb.encode_batch([load_audio(p) for p in paths])]


def load_image_codes(ck: Checkpoint, paths: Sequence[str | Path]) -> list[np.ndarray]:
    from dmlm.images import load_image

    cb = ck.codebook("image")
    return [np.asarray(c) for c in cb.encode_batch([load_image(p, size=cb.settings.image_size) for p in paths])]


def translate_units(ck: Checkpoint, units: Sequence[np.ndarray], tgt_lang: str, src_lang: str = "en",
                    opts: DecodingOptions = DecodingOptions(), progress: bool = False) -> list[str]:
    samples = [Sample(id=str(i), units=u, src_lang=src_lang, tgt_lang=tgt_lang) for i, u in enumerate(units)]
    return [decode_text(ck, o) for o in run_task(ck, "s2tt", samples, opts, progress)]


def translate_files(ck: Checkpoint, paths: Sequence[str | Path], tgt_lang: str, src_lang: str = "en",
                    opts: DecodingOptions = DecodingOptions()) -> list[str]:
    """Speech files in `src_lang` -> text in `tgt_lang`."""
    return translate_units(ck, load_units(ck, paths), tgt_lang, src_lang, opts)


def caption_codes(ck: Checkpoint, codes: Sequence[np.ndarray], lang: str = "en",
                  opts: DecodingOptions = DecodingOptions(), progress: bool = False) -> list[str]:
    samples = [Sample(id=str(i), image_codes=c, src_lang=lang, tgt_lang=lang) for i, c in enumerate(codes)]
    return [decode_text(ck, o) for o in run_task(ck, "i2t", samples, opts, progress)]


def caption_files(ck: Checkpoint, paths: Sequence[str | Path], lang: str = "en",
                  opts: DecodingOptions = DecodingOptions()) -> list[str]:
    """Image files -> captions (images of another size or mode are converted, with a warning)."""
    return caption_codes(ck, load_image_codes(ck, paths), lang, opts)


def synthesize_units(ck: Checkpoint, texts: Sequence[str], opts: DecodingOptions = DecodingOptions(),
                     lang: str = "en", progress: bool = False) -> list[np.ndarray]:
    """Text -> speech units (the checkpoint codebook's ids) with the t2s task."""
    samples = [Sample(id=str(i), text_ids=encode_text(ck, t), src_lang=lang, tgt_lang=lang) for i, t in enumerate(texts)]
    outs = run_task(ck, "t2s", samples, opts, progress)
    return [np.asarray(ck.vocab.ids_to_units(o), dtype=np.int64) for o in outs]
