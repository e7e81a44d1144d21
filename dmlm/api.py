"""The front door: `dmlm.load(path)` returns a `DMLM` that does every task of a trained model.

```python
import dmlm
m = dmlm.load("runs/demo/model")
m.transcribe("a.wav")                       # path | (samples, rate) | array at 16 kHz | Audio | Units; one or a list
m.translate(["a.wav", "b.wav"], to="es", strategy="beam")
m.caption("scene.png")                      # path | PIL image | uint8 array | Codes
m.speak("three red balls", rerank=32).save("out.wav")
m.evaluate("asr", "runs/demo/data/test.jsonl")
```

Design decisions:
- One object owns the LM, its unified tokenizer and vocabulary, and (loaded on first use) its
  codebooks and vocoder: a user who only transcribes never builds the image codebook or loads
  the vocoder. (`dmlm resynthesize` needs no LM and reads only the codebook and vocoder.)
- Every task method takes one item or a list (a list in, a list out), in any of the input forms
  above, and the same decoding keywords (`dmlm.decoding.USER_FIELDS`, plus `rerank` for the
  speech-out methods) or an `options=DecodingOptions(...)`. Whisper's `transcribe(audio,
  **decode_options)` and the transformers pipelines' "any input form in, typed output out" are
  the model. `return_details=True` gives `Result`s (ids, log-probability, seconds) instead of
  plain strings or unit arrays.
- Input conversion lives here once: waveforms are downmixed and resampled to the codebook's
  16 kHz (`dmlm.util.audio.to_mono`), images converted like files (`dmlm.util.images.to_image`);
  the decoding itself is `dmlm.inference`'s, scoring `dmlm.evaluation`'s. Below this door every
  function takes one type per argument (a `Checkpoint`, a `Split`, a `Judge`, `EvalOptions`):
  `decode` and `evaluate` turn paths and preset names into those here.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dmlm.decoding import (
    SPEECH_OUT_FIELDS,
    USER_FIELDS,
    DecodingOptions,
    Result,
    make_options,
)
from dmlm.modeling import Checkpoint, load_checkpoint
from dmlm.util.audio import SAMPLE_RATE, load_audio, to_mono, write_wav
from dmlm.util.errors import UserError


@dataclass(frozen=True)
class Units:
    """Precomputed speech units (ids of the model's speech codebook, [0, K)), e.g. from a token store."""

    ids: Any

    def array(self) -> np.ndarray:
        return np.asarray(self.ids, dtype=np.int64).reshape(-1)


@dataclass(frozen=True)
class Codes:
    """Precomputed image codes (ids of the model's image codebook, [0, K))."""

    ids: Any

    def array(self) -> np.ndarray:
        return np.asarray(self.ids, dtype=np.int64).reshape(-1)


@dataclass
class Audio:
    """Mono float32 speech: `samples` (N,) at `sample_rate` Hz; `details`: how it was made (`speak(...,
    return_details=True)`: the units, their log-probability and the seconds taken)."""

    samples: np.ndarray
    sample_rate: int = SAMPLE_RATE
    details: Result | None = None

    @property
    def seconds(self) -> float:
        return len(self.samples) / self.sample_rate

    def save(self, path: str | Path) -> Path:
        """Write the audio atomically in the format the extension names (.wav, .flac, .ogg, .mp3); returns the path."""
        write_wav(path, self.samples, self.sample_rate)
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> Audio:
        return cls(load_audio(path), SAMPLE_RATE)

    def __array__(self, dtype=None, copy=None):
        return np.asarray(self.samples, dtype=dtype)

    def __len__(self) -> int:
        return len(self.samples)


def load(path: str | Path, device: str = "cpu", lazy: bool = False) -> DMLM:
    """Load a dmlm checkpoint folder (`dmlm train`'s output) onto `device`; with `lazy`, the LM loads
    on first use (resynthesis and the vocoder need only the codebook)."""
    return DMLM(load_checkpoint(path, device=device, lazy=lazy))


def _batch(inputs: Any) -> tuple[list, bool]:
    """(items, was_single): a list (or other non-tuple sequence of items) is a batch; anything else one item."""
    if isinstance(inputs, list):
        if not inputs:
            raise UserError("an empty list of inputs")
        return inputs, False
    return [inputs], True


class DMLM:
    """A trained dmlm model with every task it was trained for; see the module docstring."""

    def __init__(self, checkpoint: Checkpoint):
        self.checkpoint = checkpoint

    # -- what it is -------------------------------------------------------------------------
    @property
    def path(self) -> Path:
        return self.checkpoint.path

    @property
    def model(self):
        return self.checkpoint.model

    @property
    def tokenizer(self):
        return self.checkpoint.tokenizer

    @property
    def vocab(self):
        return self.checkpoint.vocab

    @property
    def tasks(self) -> list[str]:
        """The task specs the model was trained on, e.g. ['asr', 's2tt:es', 't2s', 'i2t', 'text_lm']."""
        return self.checkpoint.tasks

    @property
    def info(self) -> dict:
        """Fingerprints, training config, parameter counts, vocabulary ranges, what is on disk."""
        meta, files = self.checkpoint.meta, self.checkpoint.files
        summary = meta.get("model_summary") or {}
        n = sum(p.numel() for p in self.model.parameters())
        return {
            "path": str(self.path), "tasks": self.tasks, "step": meta.get("step"),
            "format_version": meta.get("format_version"),
            "fingerprints": dict(self.vocab.fingerprints),
            "params": n, "params_non_embedding": summary.get("params_non_embedding"),
            "family": self.model.config.model_type,
            "vocab": {m: list(r) for m, r in self.vocab.ranges().items()} | {"size": self.vocab.size},
            "codebooks": [m for m in ("speech", "image") if files and files.codebook_path(m).is_file()],
            "vocoder": bool(files and files.has_vocoder),
            "config": meta.get("config") or {},
        }

    def __repr__(self) -> str:
        return f"DMLM({str(self.path)!r}, tasks={self.tasks})"

    def codebook(self, modality: str = "speech"):
        """The speech or image codebook, loaded on first use."""
        return self.checkpoint.codebook(modality)

    @property
    def vocoder(self):
        """The unit vocoder, loaded on first use (a clear error when the model has none)."""
        return self.checkpoint.vocoder()

    # -- inputs -> tokens ---------------------------------------------------------------------
    def units(self, audio: Any, sample_rate: int | None = None) -> list[np.ndarray]:
        """Speech units of each input (any audio form; `sample_rate` for bare arrays at another rate)."""
        from dmlm.inference import speech_units

        items, _ = _batch(audio)
        out: list[np.ndarray | None] = [None] * len(items)
        wavs, where = [], []
        for i, x in enumerate(items):
            if isinstance(x, Units):
                out[i] = x.array()
            else:
                wavs.append(self._waveform(x, sample_rate, i))
                where.append(i)
        if wavs:
            for i, u in zip(where, speech_units(self.codebook("speech"), wavs)):
                out[i] = u
        return out  # type: ignore[return-value]

    @staticmethod
    def _waveform(x: Any, sample_rate: int | None, i: int) -> np.ndarray:
        what = f"audio input {i}"
        if isinstance(x, (str, Path)):
            return load_audio(x)
        if isinstance(x, Audio):
            return to_mono(x.samples, x.sample_rate, what)
        if isinstance(x, tuple):
            if len(x) != 2 or not isinstance(x[1], (int, np.integer)):
                raise UserError(f"{what}: a tuple must be (samples, sample_rate), got a tuple of {len(x)} items")
            return to_mono(_to_numpy(x[0]), int(x[1]), what)
        arr = _to_numpy(x)
        if arr is None:
            raise UserError(f"{what}: expected a path, (samples, sample_rate), an array of samples, dmlm.Audio or "
                            f"dmlm.Units, got {type(x).__name__}")
        return to_mono(arr, sample_rate or SAMPLE_RATE, what)

    def codes(self, image: Any) -> list[np.ndarray]:
        """Image codes of each input (a path, a PIL image, a uint8 array, or dmlm.Codes)."""
        from dmlm.inference import image_codes
        from dmlm.util.images import load_image, to_image

        items, _ = _batch(image)
        out: list[np.ndarray | None] = [None] * len(items)
        todo, where = [], []
        cb = None
        for i, x in enumerate(items):
            if isinstance(x, Codes):
                out[i] = x.array()
                continue
            cb = cb or self.codebook("image")
            size = cb.settings.image_size
            todo.append(load_image(x, size=size) if isinstance(x, (str, Path)) else to_image(x, size, f"image input {i}"))
            where.append(i)
        if todo:
            for i, c in zip(where, image_codes(cb, todo)):
                out[i] = c
        return out  # type: ignore[return-value]

    # -- tasks ------------------------------------------------------------------------------------
    def _options(self, options: DecodingOptions | None, decoding: dict, speech_out: bool = False) -> DecodingOptions:
        return make_options(options, SPEECH_OUT_FIELDS if speech_out else USER_FIELDS, **decoding)

    def _check_task(self, name: str, lang: str | None = None) -> None:
        from dmlm.tasks import parse_spec

        trained = self.tasks
        if not trained:
            return  # a checkpoint that does not list its tasks: the vocabulary check in inference decides
        specs = [parse_spec(t) for t in trained]
        if name not in {n for n, _ in specs}:
            raise UserError(f"{self.path}: the model was not trained for {name} (its tasks: {', '.join(trained)})")
        langs = [lg for n, lg in specs if n == name and lg]
        if lang and langs and lang not in langs:
            raise UserError(f"{self.path}: the model translates to {', '.join(langs)}, not {lang!r}")

    def _check_lang(self, lang: str, param: str = "lang", flag: str = "--lang") -> None:
        """`lang` must have a tag in the model's vocabulary: an error naming the argument (and flag) and the choices."""
        if lang not in self.vocab.languages:
            raise UserError(f"{param}={lang!r} ({flag}): not a language of the model's vocabulary; it has "
                            f"{', '.join(self.vocab.languages)}")

    def _decode(self, task: str, samples: list, opts: DecodingOptions, details: bool, text_out: bool) -> list:
        from dmlm.inference import decode_text, output_log_likelihood, run_task

        t0 = time.perf_counter()
        outs = run_task(self.checkpoint, task, samples, opts)
        seconds = (time.perf_counter() - t0) / max(1, len(samples))
        if text_out:
            values = [decode_text(self.checkpoint, o) for o in outs]
        else:
            values = [np.asarray(self.vocab.ids_to_units(o), dtype=np.int64) for o in outs]
        if not details:
            return values
        logps = output_log_likelihood(self.checkpoint, task, samples, outs, opts.batch_size)
        return [Result(ids=list(o), logprob=lp, seconds=seconds, **({"text": v} if text_out else {"units": v}))
                for o, v, lp in zip(outs, values, logps)]

    def transcribe(self, audio: Any, *, lang: str = "en", sample_rate: int | None = None, return_details: bool = False,
                   options: DecodingOptions | None = None, **decoding) -> str | Result | list:
        """Speech -> text in `lang` (the ASR task)."""
        from dmlm.tasks import get_task

        self._check_task("asr")
        self._check_lang(lang)
        items, single = _batch(audio)
        opts = self._options(options, decoding)
        samples = [get_task("asr").make_sample(str(i), u, lang) for i, u in enumerate(self.units(items, sample_rate))]
        out = self._decode("asr", samples, opts, return_details, text_out=True)
        return out[0] if single else out

    def translate(self, audio: Any, *, to: str, src: str = "en", sample_rate: int | None = None, speech: bool = False,
                  how: str = "direct", return_details: bool = False, options: DecodingOptions | None = None,
                  **decoding) -> str | Result | Audio | list:
        """Speech in `src` -> text in `to` (the S2TT task); with `speech=True`, speech in `to` (`Audio`, through the
        model's vocoder), made `how`: "direct" (s2st), "chained" (s2st_chain: the text, then its units, in one
        decode) or "cascade" (s2tt, then t2s in `to`)."""
        from dmlm.tasks import get_task

        if speech:
            return self._translate_speech(audio, to=to, src=src, sample_rate=sample_rate, how=how,
                                          options=options, **decoding)
        self._check_task("s2tt", to)
        self._check_lang(src, "src", "--from")
        items, single = _batch(audio)
        opts = self._options(options, decoding)
        samples = [get_task("s2tt").make_sample(str(i), u, src, to) for i, u in enumerate(self.units(items, sample_rate))]
        out = self._decode("s2tt", samples, opts, return_details, text_out=True)
        return out[0] if single else out

    def _translate_speech(self, audio: Any, *, to: str, src: str, sample_rate: int | None, how: str,
                          options: DecodingOptions | None, **decoding) -> Audio | list[Audio]:
        from dmlm.evaluation.s2st import WAY_TASKS
        from dmlm.inference import translate_speech_units, vocode

        if how not in WAY_TASKS:
            raise UserError(f"how={how!r}: expected one of {', '.join(WAY_TASKS)}")
        for name in WAY_TASKS[how]:
            self._check_task(name, to)
        self._check_lang(src, "src", "--from")
        self._check_lang(to, "to", "--to")
        items, single = _batch(audio)
        opts = self._options(options, decoding, speech_out=True)
        units = translate_speech_units(self.checkpoint, self.units(items, sample_rate), to=to, src=src, how=how,
                                       opts=opts)
        wavs = vocode(self.vocoder, units, [f"clip {i} ({how} translation into {to})" for i in range(len(units))],
                      lang=to)
        out = [Audio(np.asarray(w, dtype=np.float32), SAMPLE_RATE) for w in wavs]
        return out[0] if single else out

    def caption(self, image: Any, *, lang: str = "en", return_details: bool = False,
                options: DecodingOptions | None = None, **decoding) -> str | Result | list:
        """Image -> caption in `lang` (the I2T task)."""
        from dmlm.tasks import get_task

        self._check_task("i2t")
        self._check_lang(lang)
        items, single = _batch(image)
        opts = self._options(options, decoding)
        samples = [get_task("i2t").make_sample(str(i), c, lang) for i, c in enumerate(self.codes(items))]
        out = self._decode("i2t", samples, opts, return_details, text_out=True)
        return out[0] if single else out

    def synthesize_units(self, text: str | list[str], *, lang: str = "en", return_details: bool = False,
                         options: DecodingOptions | None = None, **decoding) -> np.ndarray | Result | list:
        """Text -> speech units (the T2S task); `rerank=N` keeps the best of N by the model's own ASR."""
        from dmlm.inference import encode_text
        from dmlm.tasks import get_task

        self._check_task("t2s")
        self._check_lang(lang)
        items, single = _batch(text)
        opts = self._options(options, decoding, speech_out=True)
        for i, t in enumerate(items):
            if not isinstance(t, str):
                raise UserError(f"text input {i}: expected a string, got {type(t).__name__}")
        samples = [get_task("t2s").make_sample(str(i), encode_text(self.checkpoint, t), lang) for i, t in enumerate(items)]
        out = self._decode("t2s", samples, opts, return_details, text_out=False)
        return out[0] if single else out

    def speak(self, text: str | list[str], *, lang: str = "en", return_details: bool = False,
              options: DecodingOptions | None = None, **decoding) -> Audio | list[Audio]:
        """Text -> units (T2S) -> the model's vocoder -> `Audio` (with details: `audio.details`, a `Result`)."""
        from dmlm.inference import vocode

        items, single = _batch(text)
        results = self.synthesize_units(items, lang=lang, return_details=return_details, options=options, **decoding)
        t0 = time.perf_counter()
        wavs = vocode(self.vocoder, [r.units for r in results] if return_details else results, items, lang=lang)
        per = (time.perf_counter() - t0) / len(items)
        out = []
        for i, w in enumerate(wavs):
            details = results[i] if return_details else None
            if details is not None:
                details.seconds += per
            out.append(Audio(np.asarray(w, dtype=np.float32), SAMPLE_RATE, details))
        return out[0] if single else out

    def resynthesize(self, audio: Any, *, sample_rate: int | None = None) -> Audio | list[Audio]:
        """Speech -> units (the codebook) -> the vocoder: the speech-out ceiling, no LM involved."""
        from dmlm.inference import vocode

        items, single = _batch(audio)
        wavs = vocode(self.vocoder, self.units(items, sample_rate))
        out = [Audio(np.asarray(w, dtype=np.float32), SAMPLE_RATE) for w in wavs]
        return out[0] if single else out

    def decode(self, task: str, manifest: str | Path, *, units: str | Path | None = None, progress: bool = True,
               options: DecodingOptions | None = None, **decoding) -> list[dict]:
        """[{"id", "hyp"}] for every record of `manifest` that `task` (asr, s2tt:LANG, t2s, i2t) can read;
        needs no references. `units`: the manifest's token stores, else tokens are computed here."""
        from dmlm.data.split import Split
        from dmlm.evaluation.tasks import decode_task
        from dmlm.tasks import get_task, parse_spec

        opts = self._options(options, decoding, speech_out=get_task(parse_spec(task)[0]).target == "speech")
        return decode_task(self.checkpoint, task, Split(manifest, units), opts, progress=progress)

    def evaluate(self, task: str, manifest: str | Path, *, units: str | Path | None = None, out: str | Path | None = None,
                 limit: int | None = None, judge: Any = None, judge_engine: str = "ctranslate2",
                 voice_clips: int | None = 0, progress: bool = True, train_manifest: str | Path | None = None,
                 options: DecodingOptions | None = None, **decoding) -> dict:
        """Score the model on `task` over `manifest`: one entry point for every task.

        `task`: asr, s2tt:LANG, t2s, i2t, text_lm[:LANG], speech_lm, image_lm, or resynthesis.
        `units`: the manifest's token stores (`dmlm tokenize --out`), else tokens are computed here.
        `limit`: the first N records of each voice group (`dmlm.evaluation.grouping`).
        `judge` (t2s, resynthesis): a Whisper preset name, a dmlm ASR checkpoint folder or any object
        with `transcribe(wavs) -> texts`; t2s without a judge is scored on units only.
        `train_manifest`: the trivial baseline's (S2TT, I2T); default, the one the model was trained on.
        `out`: the JSON report (and, beside it, every hypothesis); for speech out, a folder of
        report, hypotheses, example wavs and spectrograms.
        """
        from dmlm.data.split import Split
        from dmlm.evaluation.judge import build_judge
        from dmlm.evaluation.options import EvalOptions
        from dmlm.evaluation.run import check_evaluation, evaluate
        from dmlm.tasks import parse_spec, scoring_for

        scoring = scoring_for(task)  # an unknown task is an error naming the registered ones
        opts = self._options(options, decoding, speech_out=scoring.by_ear != "never")
        eval_opts = EvalOptions(limit=limit, progress=progress, voice_clips=voice_clips,
                                train_manifest=str(train_manifest) if train_manifest else None)
        check_evaluation(task, opts, eval_opts, judged=bool(judge))
        if judge is None and scoring.by_ear == "always":
            judge = "whisper-base"
        if isinstance(judge, (str, Path)):  # S2ST: the judge hears the target language (ASR-BLEU)
            language = parse_spec(task)[1] if scoring.judged_against == "translation" else "en"
            judge = build_judge(str(judge), engine=judge_engine, language=language) if judge else None
        return evaluate(self.checkpoint, task, Split(manifest, units), out=Path(out) if out else None, opts=opts,
                        options=eval_opts, judge=judge)


def _to_numpy(x: Any) -> np.ndarray | None:
    if isinstance(x, np.ndarray):
        return x
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # a torch tensor
        return x.detach().cpu().float().numpy()
    if isinstance(x, Sequence) and not isinstance(x, (str, bytes)) and x and isinstance(x[0], (int, float, np.number)):
        return np.asarray(x, dtype=np.float32)
    return None
