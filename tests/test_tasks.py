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
        assert t.name == name and t.source in ("text", "speech", "image") and t.target in ("text", "speech", "image")
