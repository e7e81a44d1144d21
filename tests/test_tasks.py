"""Tasks render samples into the DMLM sequence format, deterministically."""

from __future__ import annotations

import numpy as np
import pytest

from dmlm.tasks import TASKS, Sample, get_task, render
from dmlm.vocab import MOD_SPEECH, MOD_TEXT, Vocab


@pytest.fixture(params=[None, 0], ids=["block-bos", "text-bos"])
def vocab(request) -> Vocab:
    bos = request.param
    return Vocab(text_size=300, speech_size=16, bos_id=bos, eos_id=None if bos is None else 1)


def test_asr_render_exact_layout(vocab):
    units = np.array([3, 0, 15, 7])
    text = [40, 41, 299]
    r = render(get_task("asr"), Sample(id="u1", units=units, text_ids=text), vocab)
    s = vocab.speech_start
    sp = vocab.special
    expected = (
        [vocab.bos, sp("<|asr|>"), sp("<|en|>"), sp("<|speech|>")]
        + [s + 3, s + 0, s + 15, s + 7]
        + [sp("<|/speech|>"), sp("<|en|>"), sp("<|text|>")]
        + [40, 41, 299]
        + [sp("<|/text|>"), vocab.eos]
    )
    assert r.ids == expected
    n_prompt = 4 + 4 + 3
    assert r.prompt_len == n_prompt
    # the loss target is exactly the transcript, its close tag and eos
    assert r.target == [0] * n_prompt + [1] * (3 + 2)
    assert [i for i, t in zip(r.ids, r.target) if t] == [40, 41, 299, sp("<|/text|>"), vocab.eos]
    assert r.modality == [MOD_TEXT] * 4 + [MOD_SPEECH] * 4 + [MOD_TEXT] * 8
    assert len(r.ids) == len(r.target) == len(r.modality)


def test_prompt_is_the_rendered_prefix(vocab):
    task = get_task("asr")
    sample = Sample(id="u", units=np.array([1, 2, 2, 9]), text_ids=[5, 6])
    r = render(task, sample, vocab)
    p = task.prompt(sample, vocab)
    assert p == r.ids[: r.prompt_len]
    assert p[-1] == vocab.open("text")
    # the prompt does not need the transcript (decoding has none)
    assert task.prompt(Sample(id="u", units=np.array([1, 2, 2, 9])), vocab) == p


def test_source_language_tags(vocab):
    r = render(get_task("asr"), Sample(id="u", units=np.array([1]), text_ids=[5], src_lang="es"), vocab)
    assert r.ids[2] == vocab.lang("es") and r.ids[r.prompt_len - 2] == vocab.lang("es")


def test_render_is_deterministic(vocab):
    sample = Sample(id="u", units=np.array([4, 4, 1]), text_ids=[7, 8])
    a, b = render(get_task("asr"), sample, vocab), render(get_task("asr"), sample, vocab)
    assert a == b


@pytest.mark.parametrize("units,text,msg", [(None, [1], "speech units"), (np.array([], dtype=np.int64), [1], "speech units"),
                                            (np.array([1]), None, "transcript"), (np.array([1]), [], "transcript")])
def test_asr_missing_pieces_are_errors_naming_the_record(vocab, units, text, msg):
    with pytest.raises(ValueError, match=f"'rec-7'.*{msg}"):
        render(get_task("asr"), Sample(id="rec-7", units=units, text_ids=text), vocab)


def test_unit_out_of_the_codebook_is_an_error(vocab):
    with pytest.raises(ValueError, match="out of range"):
        render(get_task("asr"), Sample(id="u", units=np.array([16]), text_ids=[1]), vocab)


def test_unknown_task_error_lists_registered_tasks():
    with pytest.raises(ValueError) as e:
        get_task("karaoke")
    assert str(e.value) == f"unknown task 'karaoke'; registered tasks: {', '.join(sorted(TASKS))}"
    assert "asr" in str(e.value)


def test_every_registered_task_has_its_modalities():
    for name in TASKS:
        t = get_task(name)
        assert t.name == name and t.target in ("text", "speech", "image")
        assert t.source in ("text", "speech", "image") or (t.source is None and name.endswith("_lm"))


# -- every task: exact layout, loss mask on the target only --------------------------------

@pytest.fixture
def mm_vocab() -> Vocab:
    return Vocab(text_size=300, speech_size=16, image_size=8)


def _expect(vocab, task, src, src_mod, src_lang, tgt, tgt_mod, tgt_lang):
    sp = vocab.special
    pre = [vocab.bos, sp(f"<|{task}|>")]
    if src_mod:
        pre += [vocab.lang(src_lang), vocab.open(src_mod)] + src + [vocab.close(src_mod)]
    pre += [vocab.lang(tgt_lang), vocab.open(tgt_mod)]
    return pre, tgt + [vocab.close(tgt_mod), vocab.eos]


@pytest.mark.parametrize("task", ["t2s", "s2tt", "i2t", "text_lm", "speech_lm", "image_lm"])
def test_every_task_renders_its_exact_layout(mm_vocab, task):
    v = mm_vocab
    units, codes, text, trans = np.array([3, 15, 0]), np.array([7, 0, 2, 2]), [40, 41], [50, 51, 52]
    s_ids = [v.speech_start + u for u in units.tolist()]
    i_ids = [v.image_start + c for c in codes.tolist()]
    sample, (pre, tgt) = {
        "t2s": (Sample(id="x", units=units, text_ids=text), _expect(v, "t2s", text, "text", "en", s_ids, "speech", "en")),
        "s2tt": (Sample(id="x", units=units, target_text_ids=trans, src_lang="en", tgt_lang="es"),
                 _expect(v, "s2tt", s_ids, "speech", "en", trans, "text", "es")),
        "i2t": (Sample(id="x", image_codes=codes, text_ids=text), _expect(v, "i2t", i_ids, "image", "en", text, "text", "en")),
        "text_lm": (Sample(id="x", text_ids=trans, tgt_lang="es"), _expect(v, "text_lm", None, None, None, trans, "text", "es")),
        "speech_lm": (Sample(id="x", units=units), _expect(v, "speech_lm", None, None, None, s_ids, "speech", "en")),
        "image_lm": (Sample(id="x", image_codes=codes), _expect(v, "image_lm", None, None, None, i_ids, "image", "en")),
    }[task]
    r = render(get_task(task), sample, v)
    assert r.ids == pre + tgt
    assert r.prompt_len == len(pre) and r.ids[: r.prompt_len] == get_task(task).prompt(sample, v)
    assert r.target == [0] * len(pre) + [1] * len(tgt)  # the loss mask covers only the target, close tag and eos
    assert r.modality == [v.modality_of(i) for i in r.ids]
    assert r.task == task
    mods = set(r.modality)
    assert (MOD_SPEECH in mods) == (task in ("t2s", "s2tt", "speech_lm"))


def test_image_code_out_of_the_codebook_is_an_error(mm_vocab):
    with pytest.raises(ValueError, match="out of range"):
        render(get_task("i2t"), Sample(id="u", image_codes=np.array([8]), text_ids=[1]), mm_vocab)


@pytest.mark.parametrize("task,sample,msg", [
    ("t2s", Sample(id="r9", units=np.array([1])), "needs text"),
    ("t2s", Sample(id="r9", text_ids=[1]), "speech units"),
    ("s2tt", Sample(id="r9", units=np.array([1])), "translation"),
    ("i2t", Sample(id="r9", text_ids=[1]), "image codes"),
    ("i2t", Sample(id="r9", image_codes=np.array([1])), "caption"),
    ("speech_lm", Sample(id="r9"), "speech units"),
])
def test_missing_pieces_name_the_record(mm_vocab, task, sample, msg):
    with pytest.raises(ValueError, match=f"'r9'.*{msg}"):
        render(get_task(task), sample, mm_vocab)


class _Tok:
    def encode(self, t):
        return [len(w) for w in t.split()]


class _Store:
    def __init__(self, d):
        self.d = d

    def get(self, rid):
        return np.array(self.d[rid])


def test_tasks_read_their_fields_from_records():
    from dmlm.data.manifest import Record
    from dmlm.tasks import Sources, parse_spec

    src = Sources("m.jsonl", _Tok(), speech=_Store({"a": [1, 2]}), image=_Store({"a": [3]}))
    rec = Record(id="a", lang="en", audio="a.wav", text="one two", translations={"es": "uno dos tres"},
                 image="a.png", caption="a red ball")
    assert get_task("asr").sample(rec, src, None).text_ids == [3, 3]
    s = get_task("s2tt").sample(rec, src, "es")
    assert s.target_text_ids == [3, 3, 4] and (s.src_lang, s.tgt_lang) == ("en", "es")
    assert get_task("i2t").sample(rec, src, None).text_ids == [1, 3, 4]
    assert get_task("text_lm").sample(rec, src, "es").text_ids == [3, 3, 4]
    assert get_task("text_lm").sample(rec, src, "de") is None  # unpaired text: no German here, not an error
    text_only = Record(id="b", text="hello")
    for t in ("asr", "t2s", "s2tt", "speech_lm", "i2t", "image_lm"):
        assert get_task(t).sample(text_only, src, "es" if t == "s2tt" else None) is None
    with pytest.raises(ValueError, match=r"m.jsonl: record 'a' has no 'fr' translation \(translations it has: es\)"):
        get_task("s2tt").sample(rec, src, "fr")
    with pytest.raises(ValueError, match="s2tt:LANG"):
        get_task("s2tt").sample(rec, src, None)
    assert parse_spec("s2tt:es") == ("s2tt", "es") and parse_spec("asr") == ("asr", None)
    with pytest.raises(ValueError, match="unknown task 'tts'"):
        parse_spec("tts:en")
