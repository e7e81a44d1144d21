"""Tasks: a sample becomes (ids, loss mask, modality ids) in the DMLM sequence format.

```
<bos> <|task|> <|src_lang|> <|open_src|> source <|close_src|> <|tgt_lang|> <|open_tgt|> target <|close_tgt|> <eos>
```
Unpaired (LM) tasks have no source: `<bos> <|text_lm|> <|en|> <|text|> target <|/text|> <eos>`.

Design decisions:
- A task is a small class; formatting is a pure, deterministic function `render(sample, vocab)`
  (nanochat's `render_conversation`). Decoding prompts with `prompt(sample, vocab)`, which is
  exactly the rendered prefix up to and including `<|open_tgt|>`: training and inference
  cannot drift apart.
- `target` marks the tokens the task is judged on (target span, its close tag and eos);
  loss variants choose which marks to use (see `dmlm.training.loss`).
- A task also knows which manifest fields it reads (`sample(record, sources, lang)`: None when
  the record lacks the modality the task is about, an error naming the record when it has
  half of a pair), the source half a prompt needs (`source_sample`), and how it is scored
  (`evaluate(rows)`). The paired tasks are rows of one table (`dmlm.tasks.paired`); an
  unpaired LM task is a small class (`dmlm.tasks.lm`).
- A task spec is `name` or `name:lang` (`s2tt:es`, `text_lm:es`): the language of the text
  side the task reads or writes. Mixtures are lists of specs with weights (`dmlm.data.mixture`).
- How a task is scored is a fact of its row too (`Scoring`: headline label and metrics, the
  normalizer a report names, whether a trivial baseline is scored, whether it is judged by ear),
  so evaluation, reports and configs ask the row (`scoring_for(spec)`) and never compare task
  names. Resynthesis (codebook + vocoder, no LM) is an evaluation without a task: it is a row of
  `EVALUATIONS`. `check_scorable(specs)` refuses an unscorable spec when a config is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from dmlm.util.errors import UserError
from dmlm.vocab import Vocab, VocabError

DEFAULT_LANG = "en"  # a record's language when it names none


@dataclass
class Sample:
    """What a task renders: already-tokenized pieces in each tokenizer's own id range."""

    id: str
    units: np.ndarray | None = None  # speech units, [0, K_speech): ASR/S2TT source, T2S target, speech_lm
    text_ids: list[int] | None = None  # the record's text in its own language, text-tokenizer ids:
    #                                    ASR transcript, T2S input, I2T caption, text_lm text
    src_lang: str = "en"
    tgt_lang: str = "en"
    target_text_ids: list[int] | None = None  # text in another language: the S2TT translation
    image_codes: np.ndarray | None = None  # image codes, [0, K_image)
    target_units: np.ndarray | None = None  # speech units of the translation's recording: the S2ST target


@dataclass
class Rendered:
    ids: list[int]
    target: list[int]  # 1 on the tokens the task is judged on
    modality: list[int]  # MOD_TEXT / MOD_SPEECH / MOD_IMAGE per token
    prompt_len: int  # tokens up to and including <|open_tgt|>
    task: str = ""  # the task spec that rendered it (mixture logging)


@dataclass(frozen=True)
class Scoring:
    """How evaluations of a task (or an evaluation of its own, like resynthesis) are scored and shown."""

    label: str  # headline label; formatted with {spec}, {src} (source language) and {lang} (the spec's)
    metrics: tuple[tuple[str, str], ...]  # (report key, column header) of its headline row
    normalizer: str = "none"  # what a report names as the text normalizer
    baseline: bool = False  # a trivial baseline (the most frequent training target) is scored beside it
    by_ear: str = "never"  # "never", "with_judge" (speech out judged when a judge is given) or "always"
    voice_clips: bool = False  # takes extra clips in the vocoder's voice (resynthesis)
    judged_against: str = "text"  # what speech out is judged against: the record's "text" or its "translation"

    def row_label(self, spec: str, src_lang: str = DEFAULT_LANG) -> str:
        """The headline label of `spec`, e.g. "S2TT en→de" for `s2tt:de`, "S2TT *→en" for `s2tt:en` (a
        translation into the source language reads every other language's recordings) and "ASR es" for
        `asr:es` (a label without a target language names the spec's)."""
        lang = spec.partition(":")[2]
        src = "*" if lang == src_lang else src_lang
        label = self.label.format(spec=spec, src=src, lang=lang or src_lang)
        return f"{label} {lang}" if lang and "{lang}" not in self.label and "{spec}" not in self.label else label


class Task(Protocol):
    name: str
    source: str | None  # source modality (None: an unpaired LM task)
    target: str  # target modality
    decoded: bool  # True: scored on decoded hypotheses (generation); False: teacher-forced (LM)
    scoring: Scoring

    def prompt(self, sample: Sample, vocab: Vocab) -> list[int]: ...

    def target_ids(self, sample: Sample, vocab: Vocab) -> list[int]: ...

    def sample(self, record: Any, sources: Sources, lang: str | None) -> Sample | None: ...

    def takes(self, record: Any, lang: str | None) -> bool:
        """Whether a spec in `lang` reads `record` (a paired task in one language reads that language's recordings)."""
        ...

    def reference(self, record: Any, sources: Sources, lang: str | None) -> Any: ...

    def evaluate(self, rows: list[dict]) -> dict: ...


def render(task: Task, sample: Sample, vocab: Vocab, spec: str = "") -> Rendered:
    """The full training sequence of `sample` for `task`."""
    try:
        prompt = task.prompt(sample, vocab)
        tgt = task.target_ids(sample, vocab) + [vocab.close(task.target), vocab.eos]
    except VocabError as e:  # e.g. "lang": "xx": the record and task, not only the tag
        raise UserError(f"record {sample.id!r} ({spec or task.name}): {e}") from None
    ids = prompt + tgt
    return Rendered(
        ids=ids,
        target=[0] * len(prompt) + [1] * len(tgt),
        modality=[vocab.modality_of(i) for i in ids],
        prompt_len=len(prompt),
        task=spec or task.name,
    )


def span(vocab: Vocab, modality: str, ids: list[int], lang: str) -> list[int]:
    """`<|lang|> <|open|> ids <|close|>`: one side of a pair (the target side leaves out its close)."""
    return [vocab.lang(lang), vocab.open(modality)] + ids + [vocab.close(modality)]


def modality_ids(vocab: Vocab, sample: Sample, modality: str, text: list[int] | None, what: str) -> list[int]:
    """The unified ids of one side of `sample`; an error naming the record if it is missing."""
    if modality == "speech":
        if sample.units is None or len(sample.units) == 0:
            raise UserError(f"record {sample.id!r}: {what} needs speech units, got none")
        return vocab.speech_ids(sample.units)
    if modality == "image":
        if sample.image_codes is None or len(sample.image_codes) == 0:
            raise UserError(f"record {sample.id!r}: {what} needs image codes, got none")
        return vocab.image_ids(sample.image_codes)
    if not text:
        raise UserError(f"record {sample.id!r}: {what} needs text, got none")
    return list(text)


@dataclass
class Sources:
    """Where tasks read tokens from: the text tokenizer and the token stores of one manifest."""

    manifest: str | Path
    text: Any  # TextTokenizer (encode/decode)
    speech: Any = None  # TokenStore of units, or None
    image: Any = None  # TokenStore of image codes, or None

    def encode(self, record: Any, text: str | None, field_name: str) -> list[int]:
        if text is None or not text.strip():
            raise UserError(f"{self.manifest}: record {record.id!r} has no {field_name}")
        return self.text.encode(text)

    def units(self, record: Any) -> np.ndarray:
        if self.speech is None:
            raise UserError(f"{self.manifest}: record {record.id!r} has audio but no speech token store was given "
                             "(run `dmlm tokenize` on this manifest)")
        return self.speech.get(record.id)

    def parallel_units(self, record: Any, lang: str) -> np.ndarray:
        """Units of the recording of `record`'s sentence in `lang` (`custom.parallel[lang]`, a record id of
        the same manifest; `dmlm prepare mini-world` with `speech_langs` writes it)."""
        rid = ((record.custom or {}).get("parallel") or {}).get(lang)
        if not rid:
            raise UserError(f"{self.manifest}: record {record.id!r} names no '{lang}' recording of its sentence "
                            "(custom.parallel)")
        if self.speech is None:
            raise UserError(f"{self.manifest}: S2ST needs the speech token store of this manifest (run `dmlm tokenize`)")
        try:
            return self.speech.get(rid)
        except (KeyError, UserError) as e:
            raise UserError(f"{self.manifest}: record {record.id!r}: its '{lang}' recording {rid!r} has no units "
                            f"in the token store ({e})") from None

    def codes(self, record: Any) -> np.ndarray:
        if self.image is None:
            raise UserError(f"{self.manifest}: record {record.id!r} has an image but no image token store was given "
                             "(run `dmlm tokenize IMAGE_CODEBOOK MANIFEST --out DIR` with an image codebook from "
                             "`dmlm codebook fit MANIFEST -o CB --modality image`, and give DIR as the units folder)")
        return self.image.get(record.id)


def parse_spec(spec: str) -> tuple[str, str | None]:
    """`"s2tt:es"` -> ("s2tt", "es"); `"asr"` -> ("asr", None). The task must be registered."""
    name, _, lang = spec.partition(":")
    get_task(name)
    return name, (lang or None)


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise UserError(f"unknown task {name!r}; registered tasks: {', '.join(sorted(TASKS))}")
    return TASKS[name]


def reads(task: Task, modality: str) -> bool:
    """True if `task` reads or writes `modality` ("speech", "image", "text")."""
    return modality in (task.source, task.target)


def scoring_for(spec: str) -> Scoring:
    """The scoring row of a task spec or of an evaluation of its own (`EVALUATIONS`, e.g. "resynthesis")."""
    name = spec.partition(":")[0]
    if name in EVALUATIONS:
        return EVALUATIONS[name]
    return get_task(parse_spec(spec)[0]).scoring


def scoring_rank(spec: str) -> tuple[int, int]:
    """Where `spec`'s row goes in a report: decoded tasks with text out, then speech out (each in table
    order), evaluations of their own (resynthesis), LM tasks; a spec of nothing registered last."""
    name = spec.partition(":")[0]
    table = [*TASKS, *EVALUATIONS]
    if name in EVALUATIONS:
        return 2, table.index(name)
    if name not in TASKS:
        return 4, 0
    task = TASKS[name]
    return ((1 if task.target == "speech" else 0) if task.decoded else 3), table.index(name)


def is_task(spec: str) -> bool:
    """True for a task spec, False for an evaluation of its own (resynthesis)."""
    return spec.partition(":")[0] not in EVALUATIONS


def evaluations_where(test) -> list[str]:
    """Names of the tasks and evaluations whose scoring row passes `test` (for messages: "judge is for ...")."""
    rows = {**{n: t.scoring for n, t in TASKS.items()}, **EVALUATIONS}
    return [n for n, s in rows.items() if test(s)]


def check_scorable(specs) -> None:
    """An error naming the first spec the evaluation cannot score (unknown task, translation without a
    language): configs call this when they are loaded, so a run never fails at its end for it."""
    for spec in specs:
        try:
            if not is_task(spec):
                continue
            name, lang = parse_spec(spec)
            if getattr(TASKS[name], "target_text", None) == "translation" and not lang:
                raise UserError(f"task {name} needs a target language: write it as {name}:LANG, e.g. {name}:es")
        except UserError as e:
            raise UserError(f"task {spec!r} cannot be scored: {e}") from None


from dmlm.tasks.lm import ImageLM, SpeechLM, TextLM  # noqa: E402
from dmlm.tasks.paired import EVALUATIONS, PAIRED  # noqa: E402

TASKS: dict[str, Task] = {**{t.name: t for t in PAIRED}, "text_lm": TextLM(), "speech_lm": SpeechLM(),
                          "image_lm": ImageLM()}
"""Every registered task by name: the paired tasks (rows of `dmlm.tasks.paired.PAIRED`) and the LM tasks."""
