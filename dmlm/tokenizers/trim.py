"""Trim a pretrained byte-level BPE to the tokens a corpus uses, keeping it exact on any text.

A pretrained LLM's 49k-token vocabulary costs a CPU run an output layer and embedding
gradients over 49k rows, of which a corpus of a few thousand sentences uses a few thousand.
`trim_tokenizer` keeps only those, yet the result is still a complete tokenizer:

- Kept = the ids the corpus texts encode to, closed under BPE merges (every token that a kept
  token's merge tree passes through), plus the byte-level base tokens and the tokenizer's
  added/special tokens. The merges kept are the original merges whose parts and result are all
  kept, in their original order.
- Corpus texts encode to exactly the same pieces: BPE applies, at each step, the lowest-ranked
  merge among the adjacent pairs; every merge the original applies to a corpus word is kept (its
  result and parts are in the merge tree of a kept token), and the kept merges are a subset of
  the original's in the same order, so the lowest-ranked applicable one is the same.
- Any text still encodes and decodes exactly (any the original does: a pretrained BPE may lack
  a few byte tokens that UTF-8 text never or almost never holds): byte-level BPE starts from
  one token per byte, which are all kept, and every kept merge yields a kept token. An unseen
  word falls back to smaller kept pieces, at worst single bytes.
- New ids keep the original order (sorted by original id), so special tokens that led the
  original vocabulary lead the trimmed one. `TextTokenizer.source_ids` maps each new id to its
  original id: the model keeps those embedding rows (`dmlm.modeling.build`).
- The result is a plain `tokenizer.json` fast tokenizer (`PreTrainedTokenizerFast`), so a
  checkpoint made from it loads with `AutoTokenizer.from_pretrained`. Only byte-level BPE
  tokenizers are trimmed: with any other model, exactness on unseen text is not guaranteed.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from dmlm.tokenizers.text import TextTokenizer
from dmlm.util.errors import UserError


def _byte_level(section: dict | None) -> bool:
    """Whether a pre-tokenizer/decoder section is (or contains) ByteLevel."""
    if not section:
        return False
    if section.get("type") == "ByteLevel":
        return True
    parts = section.get("pretokenizers") or section.get("decoders") or []
    return any(_byte_level(p) for p in parts)


def _pair(merge: str | list[str]) -> tuple[str, str]:
    """A merge as (left, right); tokenizer.json writes "a b" (older) or ["a", "b"] (newer)."""
    if isinstance(merge, str):
        a, b = merge.split(" ", 1)
        return a, b
    return merge[0], merge[1]


def _remap_post_processor(section: dict | None, new_id: dict[str, int]) -> None:
    """Point the ids a post-processor adds (BOS/EOS templates) at their new ids, in place."""
    if not section:
        return
    kind = section.get("type")
    if kind == "TemplateProcessing":
        for spec in section.get("special_tokens", {}).values():
            spec["ids"] = [new_id[t] for t in spec["tokens"]]
    elif kind in ("RobertaProcessing", "BertProcessing"):
        for key in ("sep", "cls"):
            token, _ = section[key]
            section[key] = [token, new_id[token]]
    elif kind == "Sequence":
        for p in section.get("processors", []):
            _remap_post_processor(p, new_id)


def _kept_tokens(spec: dict, used: set[str]) -> set[str]:
    """`used` plus the byte alphabet, the added tokens and every token on a kept token's merge tree."""
    from tokenizers import pre_tokenizers

    vocab = spec["model"]["vocab"]
    # the base tokens the original has (SmolLM2 lacks 21 byte values: 6 control characters and lead bytes
    # of code points past U+3FFFF or of no UTF-8 at all), so the trimmed one covers every byte it covers
    alphabet = [c for c in pre_tokenizers.ByteLevel.alphabet() if c in vocab]
    parts_of: dict[str, list[tuple[str, str]]] = {}
    for m in spec["model"]["merges"]:
        a, b = _pair(m)
        parts_of.setdefault(a + b, []).append((a, b))
    kept = set(used) | set(alphabet) | {t["content"] for t in spec["added_tokens"] if t["content"] in vocab}
    todo = list(kept)
    while todo:  # every merge that can produce a kept token: its parts are intermediates of it
        for a, b in parts_of.get(todo.pop(), ()):
            for part in (a, b):
                if part not in kept:
                    kept.add(part)
                    todo.append(part)
    return kept


def trim_tokenizer(text: TextTokenizer, texts: Iterable[str]) -> TextTokenizer:
    """`text` restricted to the tokens `texts` use (closed under merges; see the module docstring).

    The result's `source_ids[i]` is the id of its token i in `text` (in `text.source_ids`' ids if
    `text` was itself trimmed).
    """
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    hf = text.hf
    backend = getattr(hf, "backend_tokenizer", None)
    if backend is None:
        raise UserError(f"{hf.name_or_path}: model.trim_vocab needs a fast (tokenizer.json) tokenizer")
    spec = json.loads(backend.to_str())
    model = spec["model"]
    if model.get("type") != "BPE" or not _byte_level(spec.get("pre_tokenizer")) or not _byte_level(spec.get("decoder")):
        raise UserError(f"{hf.name_or_path}: model.trim_vocab trims byte-level BPE tokenizers only (GPT-2, SmolLM2, "
                        f"Llama 3 style); this one is {model.get('type')} with pre-tokenizer "
                        f"{(spec.get('pre_tokenizer') or {}).get('type')}")
    if model.get("dropout"):
        raise UserError(f"{hf.name_or_path}: a BPE with dropout encodes at random; it cannot be trimmed exactly")
    vocab: dict[str, int] = model["vocab"]
    extra = [t["content"] for t in spec["added_tokens"] if t["content"] not in vocab]
    if extra:
        raise UserError(f"{hf.name_or_path}: added tokens outside the BPE vocabulary ({extra[:3]}) are not supported "
                        "by model.trim_vocab")
    id_to_token = {i: t for t, i in vocab.items()}
    texts = [t for t in texts if t]
    used = {id_to_token[i] for enc in backend.encode_batch(texts, add_special_tokens=False) for i in enc.ids}

    kept = sorted(_kept_tokens(spec, used), key=vocab.__getitem__)  # original order: specials stay in front
    new_id = {t: i for i, t in enumerate(kept)}
    model["vocab"] = new_id
    model["merges"] = [m for m in model["merges"] if all(p in new_id for p in (*_pair(m), "".join(_pair(m))))]
    for t in spec["added_tokens"]:
        t["id"] = new_id[t["content"]]
    _remap_post_processor(spec.get("post_processor"), new_id)

    tok = Tokenizer.from_str(json.dumps(spec))
    wrong = [t for t in kept if tok.token_to_id(t) != new_id[t]]
    if wrong or tok.get_vocab_size() != len(kept):  # the tokenizers library reassigned ids: a bug here
        raise ValueError(f"trimmed tokenizer ids disagree with the layout ({len(wrong)} tokens, e.g. {wrong[:3]})")
    special = {k: v for k, v in hf.special_tokens_map.items() if isinstance(v, str)}
    trimmed = PreTrainedTokenizerFast(
        tokenizer_object=tok, clean_up_tokenization_spaces=hf.clean_up_tokenization_spaces,
        model_max_length=hf.model_max_length, chat_template=getattr(hf, "chat_template", None), **special,
    )
    old_ids = [vocab[t] for t in kept]
    if text.source_ids is not None:
        old_ids = [text.source_ids[i] for i in old_ids]
    return TextTokenizer(trimmed, source_ids=old_ids)
