"""Unpaired data for mixed supervision: text-only, audio-only and image-only records disjoint from
the paired splits and from each other, and LM tasks that read only them (`data.unpaired_only`)."""

from __future__ import annotations

import pytest

from dmlm.data.manifest import read_manifest
from dmlm.data.prepare import PrepareConfig, prepare
from dmlm.util.errors import UserError


def _sentence(rid: str) -> str:
    return rid.removesuffix("-hv").removesuffix("-us").removesuffix("-ui")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("unpaired")
    cfg = PrepareConfig(n_train=30, n_dev=4, n_test=4, n_unpaired=40, n_unpaired_speech=6, n_unpaired_images=10)
    return out, prepare(cfg, out)


def test_each_unpaired_sentence_comes_in_one_modality_alone(corpus):
    out, m = corpus
    text, speech, images = (read_manifest(m[k]) for k in ("unpaired", "unpaired_speech", "unpaired_images"))
    assert len(text) == 40 - 6 - 10 and len(speech) == 6 and 0 < len(images) <= 10
    assert all(r.text and r.audio is None and r.image is None for r in text)
    assert all(r.audio and r.text is None and r.image is None and r.duration > 0 for r in speech)
    assert all(r.image and r.text is None and r.caption is None and r.audio is None for r in images)
    assert all((out / r.image).is_file() for r in images) and all((out / r.audio).is_file() for r in speech)
    groups = [{_sentence(r.id) for r in rs} for rs in (text, speech, images)]
    paired = {_sentence(r.id) for s in ("train", "dev", "test") for r in read_manifest(m[s])}
    assert not (groups[0] & groups[1] or groups[0] & groups[2] or groups[1] & groups[2])
    assert not (paired & (groups[0] | groups[1] | groups[2]))
    # a re-run of the same settings finds everything in place
    again = prepare(PrepareConfig(n_train=30, n_dev=4, n_test=4, n_unpaired=40, n_unpaired_speech=6,
                                  n_unpaired_images=10), out)
    assert again == m and read_manifest(m["unpaired_speech"]) == speech


def test_unpaired_counts_are_checked(tmp_path):
    with pytest.raises(UserError, match="sum to at most n_unpaired = 10"):
        prepare(PrepareConfig(n_train=4, n_dev=1, n_test=1, n_unpaired=10, n_unpaired_speech=6, n_unpaired_images=6),
                tmp_path)


def test_lm_tasks_read_only_the_unpaired_manifests(corpus, tmp_path):
    from dmlm.recipes.stages import tokenize_unpaired, unpaired_manifests
    from dmlm.tokenizers.speech import CodebookSettings, fit_codebook
    from dmlm.tokenizers.tokenize import load_record_audio, tokenize_manifest
    from dmlm.training.config import RunConfig
    from dmlm.training.setup import setup
    from dmlm.util.config import load_config

    out, m = corpus
    train = read_manifest(m["train"])
    cb = fit_codebook((load_record_audio(m["train"], r) for r in train),
                      CodebookSettings(backend="mel", model=None, layer=None, k=16, pooling=1))
    cb.save(tmp_path / "cb.safetensors")
    for s in ("train", "dev"):
        tokenize_manifest(cb, m[s], tmp_path / "units")
    tokenize_unpaired(cb, None, m, tmp_path / "units")
    unpaired = [p for p in unpaired_manifests(m) if not p.endswith("unpaired_images.jsonl")]

    def cfg(*extra):
        return load_config(None, [f"data.train={m['train']}", f"data.dev={m['dev']}", f"data.units={tmp_path / 'units'}",
                                  f"data.codebook={tmp_path / 'cb.safetensors'}", f"data.unpaired={unpaired}",
                                  "data.tasks=[asr, text_lm, speech_lm]", "data.bpe_vocab_size=300",
                                  f"train.out={tmp_path / 'model'}", *extra], RunConfig)

    both = setup(cfg())
    only = setup(cfg("data.unpaired_only=[text_lm, speech_lm]"))
    size = {spec: b - a for spec, (a, b) in only.pools.items()}
    assert size["speech_lm"] == 6 and size["text_lm"] == 40 - 16  # the unpaired records alone
    assert {spec: b - a for spec, (a, b) in both.pools.items()}["speech_lm"] == 6 + len(train)
    assert size["asr"] == len(train)
    with pytest.raises(UserError, match="unpaired_only names tasks"):
        setup(cfg("data.unpaired_only=[image_lm]"))
