"""Text tokenizers: the pretrained LLM's own, or a small byte-level BPE trained by dmlm.

Design decisions:
- Starting from a pretrained LLM, its tokenizer is used untouched so its embeddings stay
  aligned with their ids (the unified vocabulary appends after it).
- `model.trim_vocab` keeps only the pretrained tokens a corpus uses (`dmlm.tokenizers.trim`);
  `source_ids` then says which pretrained id each trimmed id was, so its embedding row is kept.
- From scratch, a byte-level BPE (Hugging Face `tokenizers`) trained on the training text
  only: byte-level means no input character is ever unknown. It is saved as a
  `PreTrainedTokenizerFast`, so checkpoints load with `AutoTokenizer`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from dmlm.util.errors import UserError


class TextTokenizer:
    modality = "text"

    def __init__(self, hf: PreTrainedTokenizerBase, source_ids: list[int] | None = None):
        self.hf = hf
        self.source_ids = source_ids  # trimmed: the id each of its ids had in the tokenizer it was cut from

    @classmethod
    def load(cls, name_or_path: str | Path) -> "TextTokenizer":
        return cls(AutoTokenizer.from_pretrained(str(name_or_path)))

    @classmethod
    def train_bpe(cls, texts: Iterable[str], vocab_size: int = 1000) -> "TextTokenizer":
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size, special_tokens=["<s>", "</s>"], show_progress=False,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        )
        tok.train_from_iterator(texts, trainer)
        hf = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>")
        return cls(hf)

    def save(self, path: str | Path) -> None:
        self.hf.save_pretrained(str(path))

    def encode(self, text: str) -> list[int]:
        if not text or not text.strip():
            raise UserError("cannot encode empty text")
        return self.hf.encode(text, add_special_tokens=False)

    def decode(self, ids: Sequence[int]) -> str:
        return self.hf.decode(list(ids), skip_special_tokens=True).strip()

    @property
    def vocab_size(self) -> int:
        return len(self.hf)

    @property
    def bos_id(self) -> int | None:
        return self.hf.bos_token_id

    @property
    def eos_id(self) -> int | None:
        return self.hf.eos_token_id


def unified_hf_tokenizer(text: TextTokenizer, vocab) -> PreTrainedTokenizerBase:
    """The text tokenizer plus every unified-vocabulary token as an added token.

    Added tokens take ids from len(tokenizer) on, which is V_text: exactly the layout.
    """
    import copy

    from tokenizers import AddedToken

    hf = copy.deepcopy(text.hf)
    if len(hf) != vocab.text_size:
        raise UserError(f"text tokenizer has {len(hf)} ids but the vocabulary says V_text={vocab.text_size}")
    names = vocab.token_strings()
    n_special = len(vocab.specials) + (256 - len(vocab.specials))
    hf.add_tokens([AddedToken(t, special=True, normalized=False) for t in names[:n_special]], special_tokens=True)
    hf.add_tokens([AddedToken(t, special=False, normalized=False) for t in names[n_special:]])
    if len(hf) != vocab.size:
        raise UserError(f"unified tokenizer has {len(hf)} ids, vocabulary layout expects {vocab.size}")
    if hf.pad_token is None:
        hf.pad_token = "<|pad|>"
    return hf
