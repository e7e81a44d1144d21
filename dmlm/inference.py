"""Inference for every task: inputs -> the task's prompt -> one decoder -> text, units or audio.

Design decisions:
- `run_task` prompts with `Task.prompt` (exactly the rendered training prefix) and decodes in
  the task's target modality (`dmlm.decoding.generate`, which masks every other modality).
- The task-named helpers take tokens (units, image codes, text ids) and return decoded text or
  units; turning files and waveforms into tokens is `dmlm.api.DMLM`'s (one owner of input forms).
  Every helper takes the checkpoint, then its inputs, then keyword-only settings (`lang`/`to`,
  `opts`, `progress`): the same order and names as the `DMLM` methods.
- T2S can rerank (`opts.rerank`): candidates from `opts.strategy` and sampling, the one the same
  model's ASR task (the t2s row's `rerank_by`) scores likeliest to say the text
  (`asr_log_likelihood`) is kept.
- Text goes through the checkpoint's `TextTokenizer` (`Checkpoint.text`), the class training
  encodes with: one object, the same ids.
- One type per argument: a `Checkpoint`, a `Codebook`, a `Vocoder`; paths and other input forms
  are the front door's (`dmlm.api`). Speech out is units -> a vocoder; resynthesis takes the
  codebook and vocoder alone, so it never pays for the LM.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np
import torch

from dmlm.decoding import DecodingOptions, generate, target_log_likelihood
from dmlm.decoding.generate import check_positions
from dmlm.modeling import Checkpoint
from dmlm.tasks import TASKS, Sample, get_task, parse_spec
from dmlm.util.errors import UserError

if TYPE_CHECKING:
    from dmlm.tokenizers.speech import Codebook
    from dmlm.vocoder import Vocoder

ENCODE_CHUNK = 64  # clips per codebook call: bounds the encoder's padded batch in memory


def check_can_do(ck: Checkpoint, task_name: str) -> None:
    """An error naming the model when it lacks the vocabulary `task_name` reads or writes."""
    task = get_task(task_name)
    for m in {task.source, task.target} - {None}:
        if m != "text" and not ck.vocab.range(m)[1] > ck.vocab.range(m)[0]:
            raise UserError(f"{ck.path}: this model has no {m} vocabulary, so it cannot do {task_name}")


def run_task(ck: Checkpoint, task_name: str, samples: Sequence[Sample], opts: DecodingOptions = DecodingOptions(),
             progress: bool = False) -> list[list[int]]:
    """Decoded target ids (unified vocabulary) for each sample."""
    task = get_task(task_name)
    if opts.rerank > 1 and getattr(task, "rerank_by", None) is None:
        rerankable = ", ".join(n for n, t in TASKS.items() if getattr(t, "rerank_by", None))
        raise UserError(f"rerank={opts.rerank}: reranking is for {rerankable} (by the model's ASR), not {task_name}")
    check_can_do(ck, task_name)
    prompts = [task.prompt(s, ck.vocab) for s in samples]
    check_positions(ck.model, prompts, [s.id for s in samples], task_name)
    if getattr(task, "via_text", False):
        return _decode_chained(ck, prompts, opts, progress)
    out = generate(ck.model, prompts, ck.vocab, task.target, replace(opts, rerank=0), progress=progress)
    return _rerank_t2s(ck, samples, out, opts, progress) if opts.rerank > 1 else out


def _decode_chained(ck: Checkpoint, prompts: list[list[int]], opts: DecodingOptions, progress: bool) -> list[list[int]]:
    """One sequence per prompt, written in two modalities: text up to `<|/text|>`, then `<|speech|>` and units
    up to `<|/speech|>` (chained S2ST). Each span is generated under its own modality filter, so the text
    cannot run into units and the units cannot fall back into text; the second span continues the very
    sequence the first wrote. Returns text + `<|/text|> <|speech|>` + unit ids (the rendered target, less
    its close tag)."""
    vocab = ck.vocab
    texts = generate(ck.model, prompts, vocab, "text", replace(opts, rerank=0), progress=progress)
    joint = [t + [vocab.close("text"), vocab.open("speech")] for t in texts]
    units = generate(ck.model, [p + j for p, j in zip(prompts, joint)], vocab, "speech", replace(opts, rerank=0),
                     progress=progress)
    return [j + u for j, u in zip(joint, units)]


def prompts_for(ck: Checkpoint, task_name: str, samples: Sequence[Sample]) -> list[list[int]]:
    task = get_task(task_name)
    return [task.prompt(s, ck.vocab) for s in samples]


def decode_text(ck: Checkpoint, ids: Sequence[int]) -> str:
    """Text of decoded ids (dmlm tokens skipped), through the checkpoint's text tokenizer."""
    return ck.text.decode(ids)


def encode_text(ck: Checkpoint, text: str) -> list[int]:
    """Text-tokenizer ids of `text`; an error for empty text, dmlm specials or unencodable characters."""
    if not text or not text.strip():
        raise UserError("the text is empty")
    ids = ck.text.encode(text)
    lo, hi = ck.vocab.range("text")
    bad = [i for i in ids if not lo <= i < hi]
    if bad:  # the checkpoint's special/unit tokens typed as text would leak into the prompt
        raise UserError(f"text {text!r} contains dmlm special tokens ({ck.tokenizer.decode(bad)!r}); "
                        "remove them or escape the <| |> markers")
    unk = getattr(ck.tokenizer, "unk_token_id", None)
    if unk is not None and unk in ids:
        raise UserError(f"text {text!r} has characters the model's tokenizer cannot encode (they map to its unknown token)")
    return ids


def speech_units(codebook, wavs: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Waveforms (16 kHz mono float32) -> speech units with `codebook`, in chunks of `ENCODE_CHUNK`."""
    out: list[np.ndarray] = []
    for s in range(0, len(wavs), ENCODE_CHUNK):
        out += [np.asarray(u, dtype=np.int64) for u in codebook.encode_batch(list(wavs[s : s + ENCODE_CHUNK]))]
    return out


def image_codes(codebook, images: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Images (codebook-sized RGB arrays) -> image codes with `codebook`."""
    return [np.asarray(c, dtype=np.int64) for c in codebook.encode_batch(list(images))]


def transcribe_units(ck: Checkpoint, units: Sequence[np.ndarray], *, lang: str = "en",
                     opts: DecodingOptions = DecodingOptions(), progress: bool = False) -> list[str]:
    samples = [get_task("asr").make_sample(str(i), u, lang) for i, u in enumerate(units)]
    return [decode_text(ck, o) for o in run_task(ck, "asr", samples, opts, progress)]


def translate_speech_units(ck: Checkpoint, units: Sequence[np.ndarray], *, to: str, src: str = "en", how: str = "direct",
                           opts: DecodingOptions = DecodingOptions(), progress: bool = False) -> list[np.ndarray]:
    """Speech units in `src` -> speech units in `to`, three ways: "direct" (the s2st task), "chained" (s2st_chain:
    the target text, then its units, in one sequence) or "cascade" (s2tt, then t2s in `to`: two decodes)."""
    samples = [get_task("s2st").make_sample(str(i), u, src, to) for i, u in enumerate(units)]
    return s2st_units(ck, samples, how, opts, progress)


def s2st_units(ck: Checkpoint, samples: Sequence[Sample], how: str = "direct",
               opts: DecodingOptions = DecodingOptions(), progress: bool = False) -> list[np.ndarray]:
    """Target-language units of speech-to-speech samples (source units, `src_lang`, `tgt_lang`) by way `how`;
    an empty array where the model said nothing (the cascade's empty translation)."""
    if how not in S2ST_WAYS:
        raise UserError(f"how={how!r}: expected one of {', '.join(S2ST_WAYS)}")
    if how == "cascade":
        outs = run_task(ck, "s2tt", samples, opts, progress)
        texts = [decode_text(ck, o) for o in outs]
        t2s = get_task("t2s")
        said = [i for i, t in enumerate(texts) if t.strip()]  # an empty translation says nothing: no units
        spoken = run_task(ck, "t2s", [t2s.make_sample(samples[i].id, encode_text(ck, texts[i]), samples[i].tgt_lang)
                                      for i in said], opts, progress) if said else []
        out = [np.zeros(0, dtype=np.int64) for _ in samples]
        for i, o in zip(said, spoken):
            out[i] = np.asarray(ck.vocab.ids_to_units(o), dtype=np.int64)
        return out
    task = get_task(S2ST_WAYS[how])
    return [np.asarray(task.output_units(o, ck.vocab), dtype=np.int64)
            for o in run_task(ck, task.name, list(samples), opts, progress)]


S2ST_WAYS = {"direct": "s2st", "chained": "s2st_chain", "cascade": None}
"""The three ways to translate speech into speech, and the task that does each in one decode (cascade: two)."""


def synthesize_units(ck: Checkpoint, texts: Sequence[str], *, lang: str = "en",
                     opts: DecodingOptions = DecodingOptions(), progress: bool = False) -> list[np.ndarray]:
    """Text -> speech units (the checkpoint codebook's ids) with the t2s task."""
    samples = [get_task("t2s").make_sample(str(i), encode_text(ck, t), lang) for i, t in enumerate(texts)]
    outs = run_task(ck, "t2s", samples, opts, progress)
    return [np.asarray(ck.vocab.ids_to_units(o), dtype=np.int64) for o in outs]


def _rerank_t2s(ck: Checkpoint, samples: Sequence[Sample], first: list[list[int]], opts: DecodingOptions,
                progress: bool) -> list[list[int]]:
    """Of `first` (by opts.strategy) and opts.rerank - 1 samples per text, the target ids whose
    units the model's own ASR task scores likeliest to say the text."""
    scorer = get_task("t2s").rerank_by
    tasks = [parse_spec(t)[0] for t in ck.tasks]
    if tasks and scorer not in tasks:
        raise UserError(f"{ck.path}: rerank scores candidates with the model's {get_task(scorer).label} task, but it "
                        f"was trained on {', '.join(tasks)}; use rerank=0")
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
    """log P(text | units) under the ASR task (teacher-forced over the text tokens and its close
    tag, every id allowed); -inf for an empty unit sequence."""
    if len(units) != len(text_ids):
        raise ValueError(f"{len(units)} unit sequences but {len(text_ids)} texts")
    task, vocab = get_task("asr"), ck.vocab
    langs = [lang] * len(units) if isinstance(lang, str) else list(lang)
    todo = [i for i, u in enumerate(units) if len(u)]
    prompts = [task.prompt(task.make_sample(str(i), units[i], langs[i]), vocab) for i in todo]
    targets = [list(text_ids[i]) + [vocab.close("text")] for i in todo]
    scores = target_log_likelihood(ck.model, prompts, targets, vocab.pad, batch_size)
    out = [float("-inf")] * len(units)
    for i, s in zip(todo, scores):
        out[i] = s
    return out


def output_log_likelihood(ck: Checkpoint, task_name: str, samples: Sequence[Sample], outs: Sequence[Sequence[int]],
                          batch_size: int = 32) -> list[float]:
    """log P(decoded ids and the close tag | prompt) for each sample: what `return_details` reports."""
    task = get_task(task_name)
    close = ck.vocab.close(task.target)
    return target_log_likelihood(ck.model, prompts_for(ck, task_name, samples), [list(o) + [close] for o in outs],
                                 ck.vocab.pad, batch_size)


# ------------------------------------------------------------------------------ speech out


def resynthesize(codebook: Codebook, vocoder: Vocoder, wav: np.ndarray) -> np.ndarray:
    """Audio -> units (`codebook`) -> `vocoder`: 16 kHz float32. The vocoder must be `codebook`'s."""
    vocoder.check(codebook)
    return vocoder.synthesize(codebook.encode(np.asarray(wav, dtype=np.float32)))


def vocode(vocoder: Vocoder, units: Sequence[np.ndarray], texts: Sequence[str] | None = None,
           lang: str | None = None) -> list[np.ndarray]:
    """Units -> 16 kHz float32 speech in the vocoder's voice of `lang` (the language the units speak,
    `Vocoder.voice_for`); an error naming the text when a sequence is empty."""
    for i, u in enumerate(units):
        if len(u) == 0:
            what = repr(texts[i]) if texts is not None else f"item {i}"
            raise UserError(f"the model generated no speech units for {what}; try sampling "
                            "(strategy=sample, or rerank) or a model trained longer on the t2s task")
    return vocoder.synthesize_batch([np.asarray(u) for u in units], lang=lang)
