"""Inference for every task: one prompt builder (the task's), one decoder, per-modality outputs.

`run_task` prompts with `Task.prompt` (exactly the rendered training prefix) and decodes in
the task's target modality (`dmlm.decoding.generate`, which masks every other modality).
The task-named helpers turn raw inputs (wav files, images, strings) into samples with the
checkpoint's own codebooks and tokenizer, and decoded ids back into text or units.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from dmlm.decoding import DecodingOptions, generate
from dmlm.model import Checkpoint
from dmlm.tasks import Sample, get_task


def run_task(ck: Checkpoint, task_name: str, samples: Sequence[Sample], opts: DecodingOptions = DecodingOptions(),
             progress: bool = False) -> list[list[int]]:
    """Decoded target ids (unified vocabulary) for each sample."""
    if opts.rerank > 1 and task_name != "t2s":
        raise ValueError(f"rerank={opts.rerank}: reranking is for t2s (by the model's ASR), not {task_name}")
    task = get_task(task_name)
    for m in {task.source, task.target} - {None}:
        if m != "text" and not ck.vocab.range(m)[1] > ck.vocab.range(m)[0]:
            raise ValueError(f"{ck.path}: this model has no {m} vocabulary, so it cannot do {task_name}")
    prompts = [task.prompt(s, ck.vocab) for s in samples]
    out = generate(ck.model, prompts, ck.vocab, task.target, replace(opts, rerank=0), progress=progress)
    return _rerank_t2s(ck, samples, out, opts, progress) if opts.rerank > 1 else out


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


def _rerank_t2s(ck: Checkpoint, samples: Sequence[Sample], first: list[list[int]], opts: DecodingOptions,
                progress: bool) -> list[list[int]]:
    """Of `first` (by opts.strategy) and opts.rerank - 1 samples per text, the target ids whose
    units the model's own ASR task scores likeliest to say the text."""
    tasks = [t.split(":")[0] for t in ck.meta.get("tasks", [])]
    if tasks and "asr" not in tasks:
        raise ValueError(f"{ck.path}: rerank scores candidates with the model's ASR task, but it was trained on "
                         f"{', '.join(tasks)}; use rerank=0")
    n = opts.rerank - 1
    sampled = run_task(ck, "t2s", [s for s in samples for _ in range(n)],
                       replace(opts, strategy="sample", compute_type="float32", rerank=0), progress)
    cands = [[f] + sampled[i * n : (i + 1) * n] for i, f in enumerate(first)]
    flat = [(np.asarray(ck.vocab.ids_to_units(c), dtype=np.int64), s) for s, cs in zip(samples, cands) for c in cs]
    scores = asr_log_likelihood(ck, [u for u, _ in flat], [s.text_ids for _, s in flat],
                                [s.src_lang for _, s in flat], opts.batch_size)
    return [cs[int(np.argmax(scores[i * (n + 1) : (i + 1) * (n + 1)]))] for i, cs in enumerate(cands)]


@torch.inference_mode()
def asr_log_likelihood(ck: Checkpoint, units: Sequence[np.ndarray], text_ids: Sequence[Sequence[int]],
                       lang: str | Sequence[str] = "en", batch_size: int = 32) -> list[float]:
    """log P(text | units) under the ASR task (teacher-forced: the text tokens and its close tag,
    every id allowed); -inf for an empty unit sequence. One forward pass per batch."""
    if len(units) != len(text_ids):
        raise ValueError(f"{len(units)} unit sequences but {len(text_ids)} texts")
    task, vocab = get_task("asr"), ck.vocab
    langs = [lang] * len(units) if isinstance(lang, str) else list(lang)
    device = next(ck.model.parameters()).device
    out = [float("-inf")] * len(units)
    todo = [i for i, u in enumerate(units) if len(u)]
    for s in range(0, len(todo), batch_size):
        idx = todo[s : s + batch_size]
        seqs, spans = [], []
        for i in idx:
            prompt = task.prompt(Sample(id=str(i), units=np.asarray(units[i]), text_ids=list(text_ids[i]),
                                        src_lang=langs[i], tgt_lang=langs[i]), vocab)
            target = list(text_ids[i]) + [vocab.close("text")]
            seqs.append(prompt + target)
            spans.append((len(prompt), len(target)))
        width = max(len(q) for q in seqs)
        ids = torch.full((len(seqs), width), vocab.pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, q in enumerate(seqs):  # right-padded: positions need no shift
            ids[row, : len(q)] = torch.as_tensor(q)
            mask[row, : len(q)] = 1
        logits = ck.model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
        for row, (i, (start, n)) in enumerate(zip(idx, spans)):  # log-softmax of the target positions only
            logp = logits[row, start - 1 : start - 1 + n].float().log_softmax(-1)
            out[i] = float(logp.gather(1, ids[row, start : start + n, None].to(device)).sum())
    return out
