"""The evaluation's API below the front door (issue 28): scoring facts as rows of the task table,
per-spec headline rows, config-time scoring checks, one text tokenizer, one checksum per load,
`Split.tokens`, and greedy's attention functions registered on first use."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from dmlm.data.split import Split
from dmlm.evaluation.headline import headline_row, scorable_metrics, scoring_order
from dmlm.tasks import TASKS, check_scorable, get_task, scoring_for
from dmlm.util.errors import UserError


def test_headline_row_is_per_spec_with_its_language_pair():
    label, metrics = headline_row("s2tt:de")
    assert label == "S2TT en→de" and ("bleu", "BLEU") in metrics
    assert headline_row("s2tt:es")[0] == "S2TT en→es"
    assert headline_row("asr", model="ASR-only model")[0] == "ASR (ASR-only model)"
    assert headline_row("resynthesis")[0] == "Resynthesis (codebook + vocoder)"
    assert headline_row("text_lm:es") == ("text_lm:es (unpaired)", [("perplexity", "perplexity")])
    assert "unit_accuracy" in scorable_metrics("t2s") and "cider" in scorable_metrics("i2t")
    with pytest.raises(UserError, match="unknown task 'karaoke'"):
        headline_row("karaoke")


def test_report_order_follows_the_task_rows():
    assert scoring_order(["text_lm", "resynthesis", "t2s", "i2t", "s2tt:de", "asr"]) == \
        ["asr", "s2tt:de", "i2t", "t2s", "resynthesis", "text_lm"]


def test_every_task_row_says_how_it_is_scored():
    for name, task in TASKS.items():
        s = task.scoring
        assert s.metrics and s.by_ear in ("never", "with_judge", "always"), name
        assert task.decoded == (task.source is not None), name  # the paired tasks decode, LM tasks do not
    assert scoring_for("s2tt:es").baseline and scoring_for("i2t").baseline and not scoring_for("asr").baseline
    assert scoring_for("resynthesis").by_ear == "always" and scoring_for("t2s").by_ear == "with_judge"


def test_an_unscorable_spec_is_refused_naming_it():
    check_scorable(["asr", "s2tt:de", "t2s", "i2t", "text_lm:es", "speech_lm", "image_lm", "resynthesis"])
    with pytest.raises(UserError, match="task 'karaoke' cannot be scored: unknown task 'karaoke'"):
        check_scorable(["asr", "karaoke"])
    with pytest.raises(UserError, match="task 's2tt' cannot be scored: .*s2tt:LANG"):
        check_scorable(["s2tt"])


def test_baseline_targets_come_from_the_task_row():
    from dmlm.data.manifest import Record
    from dmlm.tasks import Sources

    s2tt, i2t = get_task("s2tt"), get_task("i2t")
    src = Sources("m.jsonl", None)
    r = Record(id="a", lang="en", audio="a.wav", text="hi", translations={"es": "hola"})
    assert s2tt.baseline_target(r, src, "es") == "hola" and s2tt.baseline_target(r, src, "de") is None
    assert s2tt.baseline_target(Record(id="b", lang="en", text="hi", translations={"es": "hola"}), src, "es") is None
    img = Record(id="c", lang="en", image="c.png", caption="a red ball", custom={"captions": ["x"]})
    assert i2t.baseline_target(img, src, None) == "a red ball"


def test_split_tokens_reads_computed_tokens_before_the_store(tmp_path):
    from dmlm.data.manifest import Record

    split = Split(tmp_path / "m.jsonl")
    split.put("speech", {"a": np.array([1, 2])})
    assert split.tokens(Record(id="a", lang="en"), "speech").tolist() == [1, 2]
    assert split.reader("speech").get("a").tolist() == [1, 2]
    with pytest.raises(UserError, match="no token-store folder"):
        split.tokens(Record(id="a", lang="en"), "image")


def test_training_and_the_checkpoint_encode_text_through_the_same_tokenizer():
    from dmlm.tokenizers.text import TextTokenizer, unified_hf_tokenizer
    from dmlm.vocab import Vocab

    texts = ["the red cat runs", "a big dog sleeps under the table", "el gato rojo corre"]
    text = TextTokenizer.train_bpe(texts * 5, vocab_size=300)  # what training encodes with
    unified = unified_hf_tokenizer(text, Vocab(text_size=text.vocab_size, speech_size=16))  # what a checkpoint saves
    ck_text = TextTokenizer(unified)  # `Checkpoint.text`
    for t in texts + ["unseen words, too!"]:
        assert ck_text.encode(t) == text.encode(t)
        assert ck_text.decode(ck_text.encode(t)) == text.decode(text.encode(t))


def test_checkpoint_text_is_what_inference_encodes_with(trained):
    from dmlm.inference import decode_text, encode_text
    from dmlm.modeling import load_checkpoint
    from dmlm.tokenizers.text import TextTokenizer

    ck = load_checkpoint(trained)
    assert isinstance(ck.text, TextTokenizer) and ck.text.hf is ck.tokenizer
    ids = encode_text(ck, "the red cat runs")
    assert ids == ck.text.encode("the red cat runs") and decode_text(ck, ids) == ck.text.decode(ids)


def test_a_checkpoint_load_hashes_each_file_once(trained, monkeypatch):
    import dmlm.modeling.checkpoint as C

    hashed = []
    real = C.sha256_file
    monkeypatch.setattr(C, "sha256_file", lambda p: hashed.append(p.name) or real(p))
    ck = C.load_checkpoint(trained)
    ck.codebook("speech")
    assert hashed and len(hashed) == len(set(hashed)), hashed
    assert "speech.safetensors" in hashed


def test_a_lazy_checkpoint_loads_its_lm_on_first_use(trained):
    from dmlm.modeling import load_checkpoint

    ck = load_checkpoint(trained, lazy=True)
    assert ck._model is None
    assert ck.codebook("speech").k > 0 and ck._model is None
    assert ck.model is not None and ck.tokenizer is not None


def test_importing_greedy_registers_nothing_until_it_decodes():
    code = ("import dmlm.decoding.greedy as g; from transformers import AttentionInterface as A; "
            "assert g.PACKED not in A._global_mapping and g.STEP not in A._global_mapping; "
            "g._register_attention(); assert g.PACKED in A._global_mapping and g.STEP in A._global_mapping")
    subprocess.run([sys.executable, "-c", code], check=True)
