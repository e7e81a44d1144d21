"""Tasks: a sample becomes (ids, loss mask, modality ids) in the DMLM sequence format.

```
<bos> <|task|> <|src_lang|> <|open_src|> source <|close_src|> <|tgt_lang|> <|open_tgt|> target <|close_tgt|> <eos>
```

Design decisions:
- A task is a small class; formatting is a pure, deterministic function `render(sample, vocab)`
  (nanochat's `render_conversation`). Decoding prompts with `prompt(sample, vocab)`, which is
  exactly the rendered prefix up to and including `<|open_tgt|>`: training and inference
  cannot drift apart.
- `target` marks the tokens the task is judged on (target span, its close tag and eos);
  loss variants choose which marks to use (see `dmlm.loss`).
- Adding a task is one file and one entry in `TASKS`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from dmlm.vocab import Vocab


@dataclass
class Sample:
    """What a task renders: already-tokenized pieces in each tokenizer's own id range."""

    id: str
    units: np.ndarray | None = None  # speech units, [0, K_speech)
    text_ids: list[int] | None = None  # source/transcript text, text-tokenizer ids
    src_lang: str = "en"
    tgt_lang: str = "en"
    target_text_ids: list[int] | None = None  # translation / caption
    image_codes: np.ndarray | None = None
    extra: dict = field(default_factory=dict)


@dataclass
class Rendered:
    ids: list[int]
    target: list[int]  # 1 on the tokens the task is judged on
    modality: list[int]  # MOD_TEXT / MOD_SPEECH / MOD_IMAGE per token
    prompt_len: int  # tokens up to and including <|open_tgt|>


class Task(Protocol):
    name: str
    source: str  # source modality
    target: str  # target modality

    def prompt(self, sample: Sample, vocab: Vocab) -> list[int]: ...

    def target_ids(self, sample: Sample, vocab: Vocab) -> list[int]: ...


def render(task: Task, sample: Sample, vocab: Vocab) -> Rendered:
    """The full training sequence of `sample` for `task`."""
    prompt = task.prompt(sample, vocab)
    tgt = task.target_ids(sample, vocab) + [vocab.close(task.target), vocab.eos]
    ids = prompt + tgt
    return Rendered(
        ids=ids,
        target=[0] * len(prompt) + [1] * len(tgt),
        modality=[vocab.modality_of(i) for i in ids],
        prompt_len=len(prompt),
    )


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; registered tasks: {', '.join(sorted(TASKS))}")
    return TASKS[name]()


from dmlm.tasks.asr import ASR  # noqa: E402

TASKS: dict[str, type] = {"asr": ASR}
