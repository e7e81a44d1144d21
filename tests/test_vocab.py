"""The unified vocabulary: layout, append-only specials, offsets, persistence, HF tokenizer."""

from __future__ import annotations

import json

import pytest

from dmlm.tokenizers.text import TextTokenizer, unified_hf_tokenizer
from dmlm.vocab import MOD_IMAGE, MOD_SPEECH, MOD_TEXT, SPECIAL_BLOCK, SPECIALS, Vocab, VocabError


@pytest.fixture(scope="module")
def text_tok() -> TextTokenizer:
    return TextTokenizer.train_bpe(["the red cat runs", "a big dog sees the cat", "hello world"], vocab_size=280)


def test_layout_ranges_are_contiguous_and_disjoint():
    v = Vocab(text_size=1000, speech_size=500, image_size=100)
    r = v.ranges()
    assert r == {"text": (0, 1000), "special": (1000, 1256), "speech": (1256, 1756), "image": (1756, 1856)}
    spans = sorted(r.values())
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))  # contiguous, no overlap
    assert v.used_size == 1856
    assert v.size == 1856  # already a multiple of 64


@pytest.mark.parametrize("text_size,speech,image,size", [(64, 0, 0, 320), (100, 16, 0, 384), (128, 128, 0, 512)])
def test_size_is_padded_to_a_multiple_of_64(text_size, speech, image, size):
    v = Vocab(text_size=text_size, speech_size=speech, image_size=image)
    assert v.size == size
    assert v.size >= v.used_size and v.size - v.used_size < 64


def test_bad_sizes_are_rejected():
    with pytest.raises(VocabError):
        Vocab(text_size=0)
    with pytest.raises(VocabError):
        Vocab(text_size=10, speech_size=-1)


def test_special_ids_are_stable_positions_in_the_block():
    v = Vocab(text_size=300, speech_size=16)
    assert v.special("<|pad|>") == 300
    assert v.bos == 301 and v.eos == 302  # no text-tokenizer bos/eos: the block's own
    assert v.task("asr") == 300 + SPECIALS.index("<|asr|>")
    assert v.lang("en") == 300 + SPECIALS.index("<|en|>")
    assert v.open("speech") == 300 + SPECIALS.index("<|speech|>")
    assert v.close("text") == 300 + SPECIALS.index("<|/text|>")
    # dmlm's special block is pinned: these numbers are in every checkpoint's dmlm.json
    assert SPECIALS[:16] == ("<|pad|>", "<|bos|>", "<|eos|>", "<|asr|>", "<|t2s|>", "<|s2tt|>", "<|i2t|>",
                             "<|text_lm|>", "<|speech_lm|>", "<|image_lm|>", "<|text|>", "<|/text|>",
                             "<|speech|>", "<|/speech|>", "<|image|>", "<|/image|>")
    with pytest.raises(VocabError, match="unknown special"):
        v.special("<|nope|>")


def test_text_tokenizer_bos_eos_take_precedence():
    v = Vocab(text_size=300, bos_id=0, eos_id=1)
    assert (v.bos, v.eos) == (0, 1)


def test_special_block_is_append_only():
    reordered = list(SPECIALS)
    reordered[3], reordered[4] = reordered[4], reordered[3]
    with pytest.raises(VocabError, match="append-only"):
        Vocab(text_size=100, specials=reordered)
    with pytest.raises(VocabError, match="append-only"):
        Vocab(text_size=100, specials=[s for s in SPECIALS if s != "<|asr|>"])
    with pytest.raises(VocabError):
        Vocab(text_size=100, specials=list(SPECIALS) + ["<|asr|>"])  # repeated name
    with pytest.raises(VocabError):
        Vocab(text_size=100, specials=list(SPECIALS) + [f"<|x{i}|>" for i in range(SPECIAL_BLOCK)])  # overflow
    # appending a new tag keeps every existing id
    old = Vocab(text_size=100)
    new = Vocab(text_size=100, specials=list(SPECIALS) + ["<|new_task|>"])
    assert all(new.special(s) == old.special(s) for s in SPECIALS)
    assert new.special("<|new_task|>") == 100 + len(SPECIALS)
    # a stored vocabulary whose specials were reordered is refused on load
    d = old.to_dict()
    d["specials"] = reordered
    with pytest.raises(VocabError, match="append-only"):
        Vocab.from_dict(d)


def test_speech_offset_and_inverse():
    v = Vocab(text_size=300, speech_size=16, image_size=8)
    units = [0, 5, 15, 5]
    ids = v.speech_ids(units)
    assert ids == [v.speech_start + u for u in units] == [556, 561, 571, 561]
    assert v.ids_to_units(ids) == units
    # ids outside the speech range are dropped by the inverse
    assert v.ids_to_units([0, v.eos, *ids, v.image_start]) == units
    assert [v.modality_of(i) for i in (0, v.task("asr"), ids[0], v.image_ids([0])[0])] == [
        MOD_TEXT, MOD_TEXT, MOD_SPEECH, MOD_IMAGE]
    assert v.speech_ids([]) == []


@pytest.mark.parametrize("bad", [[16], [-1], [0, 3, 99]])
def test_out_of_range_unit_is_an_error(bad):
    v = Vocab(text_size=300, speech_size=16)
    with pytest.raises(VocabError, match="out of range"):
        v.speech_ids(bad)


def test_unknown_modality_is_an_error():
    with pytest.raises(VocabError, match="unknown modality"):
        Vocab(text_size=10).range("smell")


def test_dict_and_file_round_trip(tmp_path):
    v = Vocab(text_size=300, speech_size=16, bos_id=0, eos_id=1, fingerprints={"speech": "abc123"})
    d = v.to_dict()
    assert d["ranges"]["speech"] == [556, 572] and d["size"] == v.size
    assert d["special_ids"]["<|asr|>"] == v.task("asr")
    assert Vocab.from_dict(json.loads(json.dumps(d))) == v
    v.save(tmp_path / "vocab.json")
    w = Vocab.load(tmp_path / "vocab.json")
    assert w == v and w.to_dict() == d


def test_load_rejects_inconsistent_or_newer_layouts():
    d = Vocab(text_size=300, speech_size=16).to_dict()
    with pytest.raises(VocabError, match="ranges"):
        Vocab.from_dict({**d, "ranges": {**d["ranges"], "speech": [556, 600]}})
    with pytest.raises(VocabError, match="newer"):
        Vocab.from_dict({**d, "version": 99})


def test_token_strings_cover_every_id_past_text():
    v = Vocab(text_size=300, speech_size=16, image_size=4)
    names = v.token_strings()
    assert len(names) == v.size - v.text_size
    assert names[0] == "<|pad|>" and names[SPECIAL_BLOCK] == "<|s_0|>"
    assert names[SPECIAL_BLOCK + 16] == "<|i_0|>"
    assert len(set(names)) == len(names)


def test_unified_hf_tokenizer_matches_the_layout(text_tok, tmp_path):
    from transformers import AutoTokenizer

    v = Vocab(text_size=text_tok.vocab_size, speech_size=16, bos_id=text_tok.bos_id, eos_id=text_tok.eos_id)
    hf = unified_hf_tokenizer(text_tok, v)
    assert len(hf) == v.size
    assert len(text_tok.hf) == v.text_size  # the text tokenizer itself is untouched
    for u in (0, 7, 15):
        assert hf.convert_tokens_to_ids(f"<|s_{u}|>") == v.speech_ids([u])[0]
    for name in ("<|asr|>", "<|speech|>", "<|/text|>", "<|en|>", "<|pad|>"):
        assert hf.convert_tokens_to_ids(name) == v.special(name)
    assert hf.pad_token_id == v.pad
    # text ids are the text tokenizer's own
    assert hf.encode("the red cat", add_special_tokens=False) == text_tok.encode("the red cat")
    # unit strings inside text tokenize to exactly their ids
    assert hf.encode("<|s_3|><|s_12|>", add_special_tokens=False) == v.speech_ids([3, 12])
    # and it survives save/load with plain transformers
    hf.save_pretrained(tmp_path / "tok")
    back = AutoTokenizer.from_pretrained(tmp_path / "tok")
    assert len(back) == v.size
    assert back.convert_tokens_to_ids("<|s_15|>") == v.speech_ids([15])[0]


def test_unified_hf_tokenizer_rejects_a_wrong_text_size(text_tok):
    with pytest.raises(ValueError, match="V_text"):
        unified_hf_tokenizer(text_tok, Vocab(text_size=text_tok.vocab_size + 1, speech_size=16))


def test_text_tokenizer_registry_round_trip(text_tok, tmp_path):
    from dmlm.tokenizers import REGISTRY, Tokenizer, load_tokenizer

    assert "text" in REGISTRY
    text_tok.save(tmp_path / "text")
    tok = load_tokenizer("text", str(tmp_path / "text"))
    assert isinstance(tok, Tokenizer) and tok.modality == "text"
    ids = tok.encode("a big dog sees the cat")
    assert ids == text_tok.encode("a big dog sees the cat")
    assert tok.decode(ids) == "a big dog sees the cat"
    assert tok.vocab_size == text_tok.vocab_size
    with pytest.raises(ValueError, match="empty"):
        tok.encode("  ")
    with pytest.raises(ValueError, match="unknown tokenizer kind"):
        load_tokenizer("smell", "x")
