"""The start check: a pretrained start must keep what its LLM knows about text.

Design decisions:
- After `build_model` has trimmed the vocabulary, cut layers and added dmlm's rows, the model's
  text perplexity on held-out text must be at most 2 % above the untouched LLM's (all its
  layers, its whole vocabulary) on the same text. It catches a cut that forgets the language
  (SmolLM2-135M's first 6 of 30 layers: bench/pretrained_cut.py), new rows that take
  probability from text, and a trimmed tokenizer that cuts unseen words into pieces the LLM
  never saw together. One-sided: a start that scores better (a trimmed softmax has fewer
  rivals) passes.
- The same token sequences and the same text rows: both models score the held-out text as the
  run's tokenizer cuts it (after its BOS, where it has one), the LLM through the ids the trimmed
  ones came from and with its softmax over those rows only. Against the whole vocabulary a
  trimmed softmax has fewer rivals, and that alone lowers the start's perplexity enough to hide
  a loss (in the toy test a 2-of-3-layer cut scored 16 % *below* the untouched LLM). So the check
  measures what the cut and the new rows cost; what trimming costs in extra pieces for unseen
  words is the same for both and shows in a third number, the LLM on its own tokens and whole
  vocabulary, logged beside them.
- Held-out text: the run's dev manifest (its transcripts, translations and captions), else its
  training manifest; the first `MAX_TEXTS` strings. It is the text the run is about, offline
  and small, and no model has trained on it yet (the LLM's pretraining aside); dev text also
  tests the trimmed tokenizer on words the trimming never saw.
- `dmlm train` runs it before the first step of an `init: pretrained` run, logs both
  perplexities, and refuses a start that fails unless `train.allow_lossy_start`;
  bench/start_check.py measures it on SmolLM2-135M.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch

from dmlm.data.manifest import read_manifest
from dmlm.tokenizers.text import TextTokenizer
from dmlm.training.config import RunConfig
from dmlm.training.setup import training_texts
from dmlm.util.errors import UserError

log = logging.getLogger(__name__)

TOLERANCE = 0.02  # the start's perplexity may be at most this much above the LLM's
MAX_TEXTS = 200  # held-out strings scored (seconds for a 135M model on 2 cores)


@dataclass
class StartCheck:
    """Text perplexity of the untouched LLM and of the built start on the same token sequences."""

    llm_perplexity: float  # the untouched LLM, its softmax over the text rows the start kept
    start_perplexity: float  # the start, its softmax over every row it has (dmlm's rows included)
    llm_own_perplexity: float  # the untouched LLM on its own tokens, whole vocabulary (for the record)
    tokens: int  # tokens scored (the run's tokenizer)
    texts: int

    @property
    def ratio(self) -> float:
        return self.start_perplexity / self.llm_perplexity

    @property
    def passed(self) -> bool:
        return self.ratio <= 1 + TOLERANCE

    def describe(self) -> str:
        return (f"text perplexity {self.start_perplexity:.4g} against the untouched LLM's {self.llm_perplexity:.4g} "
                f"({100 * (self.ratio - 1):+.1f} %, limit +{100 * TOLERANCE:.0f} %; {self.llm_own_perplexity:.4g} with "
                f"its own tokens and whole vocabulary) on {self.texts} held-out texts ({self.tokens} tokens)")


@torch.no_grad()
def summed_nll(model, sequences: Sequence[Sequence[int]], rows: Sequence[int] | None = None, batch: int = 16) -> float:
    """Summed negative log-likelihood of every token after the first of each sequence (right-padded batches).
    With `rows`, the sequences' ids index `rows` (id i is the model's row rows[i]) and the softmax is over them."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    index = None if rows is None else torch.as_tensor(list(rows), device=device)
    total = 0.0
    try:
        for i in range(0, len(sequences), batch):
            seqs = [list(s) for s in sequences[i : i + batch]]
            width = max(len(s) for s in seqs)
            ids = torch.tensor([s + [0] * (width - len(s)) for s in seqs], device=device)  # (B, T)
            mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs], device=device)
            inputs = ids if index is None else index[ids]
            logits = model(input_ids=inputs, attention_mask=mask).logits[:, :-1].float()  # (B, T-1, V)
            if index is not None:
                logits = logits[..., index]  # (B, T-1, len(rows))
            ce = torch.nn.functional.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")
            total += float((ce * mask[:, 1:]).sum())
    finally:
        model.train(was_training)
    return total


def _sequences(tokenizer: TextTokenizer, texts: Sequence[str]) -> list[list[int]]:
    bos = [] if tokenizer.bos_id is None else [tokenizer.bos_id]
    return [bos + tokenizer.encode(t) for t in texts]


def perplexity(model, tokenizer: TextTokenizer, texts: Sequence[str], rows: Sequence[int] | None = None
               ) -> tuple[float, int]:
    """(perplexity, tokens scored) of `model` on `texts` as `tokenizer` cuts them, after its BOS; with `rows`,
    through the model's rows `rows[id]` and a softmax over those rows only (`summed_nll`)."""
    sequences = _sequences(tokenizer, texts)
    tokens = sum(len(s) - 1 for s in sequences)
    if tokens < 1:
        raise UserError("the start check needs held-out text of at least two tokens")
    return math.exp(summed_nll(model, sequences, rows) / tokens), tokens


def kept_rows(text: TextTokenizer) -> list[int]:
    """The LLM rows the run's text ids name: a trimmed tokenizer's `source_ids`, else the ids themselves."""
    return list(text.source_ids) if text.source_ids is not None else list(range(text.vocab_size))


def compare(llm, llm_text: TextTokenizer, start, start_text: TextTokenizer, texts: Sequence[str]) -> StartCheck:
    """The start check's numbers: `llm` (untouched, with its tokenizer `llm_text`) and `start` (built with the
    run's tokenizer `start_text`, trimmed or not) on `texts`.

    Both score the run's token sequences, the LLM through the ids they were trimmed from and with its softmax over
    those rows only: a trimmed softmax has fewer rivals, and against the whole vocabulary that alone would lower
    the start's perplexity enough to hide a loss."""
    reference, tokens = perplexity(llm, start_text, texts, kept_rows(start_text))
    return StartCheck(reference, perplexity(start, start_text, texts)[0], perplexity(llm, llm_text, texts)[0],
                      tokens, len(texts))


def held_out_texts(cfg: RunConfig) -> list[str]:
    """The first `MAX_TEXTS` strings of the dev manifest (else the training manifest)."""
    return training_texts(read_manifest(cfg.data.dev or cfg.data.train))[:MAX_TEXTS]


def check_start(cfg: RunConfig, model, text: TextTokenizer) -> StartCheck | None:
    """Run the start check on the built `model` and the run's `text` tokenizer (logged); a start that fails is a
    UserError naming both perplexities unless `train.allow_lossy_start`. None when the data has no text."""
    from dmlm.modeling.build import llm_body
    from dmlm.util.assets import llm_dir

    texts = held_out_texts(cfg)
    if not texts:
        log.info("start check skipped: %s has no text", cfg.data.dev or cfg.data.train)
        return None
    llm = llm_body(replace(cfg.model, init="pretrained", keep_layers=0))
    result = compare(llm, TextTokenizer.load(llm_dir(cfg.model.llm)), model, text, texts)
    del llm
    if result.passed:
        log.info("start check passed: %s", result.describe())
    elif cfg.train.allow_lossy_start:
        log.warning("start check FAILED (train.allow_lossy_start: training anyway): %s", result.describe())
    else:
        raise UserError(f"start check failed: the model built from {cfg.model.llm} has {result.describe()}; "
                        "this start has lost what the LLM knew (model.keep_layers cuts layers, model.trim_vocab "
                        "and model.new_rows_init change the vocabulary). Set train.allow_lossy_start=true to train "
                        "it anyway")
    return result
