"""`dmlm.load()` and the `DMLM` object: every method with every input form, one item and a list.

The model is the tiny every-task model of conftest (`multitask_model`), with a 3-step vocoder
trained into a copy of it for the speech-out methods.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

import dmlm
from dmlm.data.manifest import read_manifest
from dmlm.data.shards import TokenStore
from dmlm.inference import transcribe_units
from dmlm.util.audio import load_audio
from dmlm.util.images import load_image


class FixedJudge:
    """A fake judge that hears the same words in every clip (checks only the plumbing)."""

    normalizer = "basic"

    def __init__(self, text: str):
        self.text = text

    def transcribe(self, wavs):
        assert all(np.asarray(w).dtype == np.float32 for w in wavs)
        return [self.text] * len(wavs)


@pytest.fixture(scope="module")
def m(multitask_model):
    return dmlm.load(multitask_model)


@pytest.fixture(scope="module")
def speaking(speaking_model):
    return dmlm.load(speaking_model)


@pytest.fixture(scope="module")
def recs(mixed):
    root, manifest = mixed
    return root, manifest, read_manifest(manifest)


def test_load_tasks_and_info(m, multitask_model):
    assert set(m.tasks) == {"asr", "s2tt:es", "t2s", "i2t", "text_lm:es", "speech_lm", "image_lm"}
    info = m.info
    assert info["path"] == str(multitask_model)
    assert set(info["fingerprints"]) == {"speech", "image"} and all(info["fingerprints"].values())
    assert info["params"] == sum(p.numel() for p in m.model.parameters()) > 0
    assert info["codebooks"] == ["speech", "image"] and info["vocoder"] is False
    assert info["config"]["data"]["tasks"] == m.tasks and info["step"] > 0
    assert "DMLM(" in repr(m)
    with pytest.raises(dmlm.MissingFileError, match="not a dmlm checkpoint"):
        dmlm.load(multitask_model.parent / "nowhere")


def test_transcribe_every_input_form(m, recs):
    root, manifest, records = recs
    r = records[0]
    path = r.audio_path(manifest)
    wav = load_audio(path)
    text = m.transcribe(path)
    assert isinstance(text, str) and text
    assert m.transcribe(str(path)) == text
    assert m.transcribe(wav) == text  # an array at the model's 16 kHz
    assert m.transcribe((wav, 16_000)) == text
    assert m.transcribe(dmlm.Audio(wav)) == text
    store = TokenStore(root / "units" / "mixed")
    assert m.transcribe(dmlm.Units(store.get(r.id))) == transcribe_units(m.checkpoint, [store.get(r.id)])[0]
    # another rate and channel count: resampled and downmixed, same length of speech
    import soxr

    wav8 = soxr.resample(wav, 16_000, 8_000).astype(np.float32)
    stereo = np.stack([wav8, wav8], axis=1)
    assert isinstance(m.transcribe((stereo, 8_000)), str)
    assert isinstance(m.transcribe(wav8, sample_rate=8_000), str)
    assert m.units(wav8, sample_rate=8_000)[0].shape[0] == pytest.approx(m.units(wav)[0].shape[0], abs=3)
    # a list in, a list out, in order (mixed forms in one batch)
    paths = [x.audio_path(manifest) for x in records]
    batch = m.transcribe(paths)
    assert isinstance(batch, list) and len(batch) == len(paths) and batch[0] == text
    assert m.transcribe([wav, paths[1]]) == batch[:2]


def test_transcribe_matches_the_references_it_overfit(m, recs):
    _, manifest, records = recs
    assert m.transcribe([x.audio_path(manifest) for x in records]) == [x.text for x in records]


def test_return_details(m, recs):
    _, manifest, records = recs
    path = records[0].audio_path(manifest)
    plain = m.transcribe(path)
    r = m.transcribe(path, return_details=True)
    assert isinstance(r, dmlm.Result) and r.text == plain and str(r) == plain
    assert m.tokenizer.decode(r.ids, skip_special_tokens=True).strip() == plain
    assert math.isfinite(r.logprob) and r.logprob <= 0 and r.seconds >= 0
    # an overfit model is sure of what it says: greedy output is likely (> 1/e per token on average)
    assert r.logprob / (len(r.ids) + 1) > -1.0
    many = m.transcribe([path, path], return_details=True)
    assert [x.text for x in many] == [plain, plain] and many[0].logprob == pytest.approx(r.logprob, abs=1e-4)


def test_decoding_keywords_are_checked(m, recs):
    _, manifest, records = recs
    path = records[0].audio_path(manifest)
    assert m.transcribe(path, strategy="beam", beam_size=2) == m.transcribe(path)
    assert m.transcribe(path, options=dmlm.DecodingOptions(max_new_tokens=1)) != m.transcribe(path)
    with pytest.raises(dmlm.UserError, match="unknown decoding option"):
        m.transcribe(path, beams=2)
    with pytest.raises(dmlm.UserError, match="rerank"):
        m.transcribe(path, rerank=4)
    with pytest.raises(dmlm.UserError, match="expected a path"):
        m.transcribe(object())
    with pytest.raises(dmlm.UserError, match="sample_rate"):
        m.transcribe((np.zeros(1600, np.float32), 16_000, 1))
    with pytest.raises(dmlm.UserError, match="empty list"):
        m.transcribe([])


def test_translate(m, recs):
    _, manifest, records = recs
    paths = [x.audio_path(manifest) for x in records]
    out = m.translate(paths, to="es")
    assert out == [x.translations["es"] for x in records]
    assert m.translate(paths[0], to="es") == out[0]
    with pytest.raises(dmlm.UserError, match="not 'fr'"):
        m.translate(paths[0], to="fr")


def test_caption_every_input_form(m, recs):
    root, manifest, records = recs
    r = records[1]
    path = r.image_path(manifest)
    text = m.caption(path)
    assert text == r.caption
    arr = load_image(path, size=None)
    assert m.caption(arr) == text
    assert m.caption(Image.fromarray(arr)) == text
    codes = TokenStore(root / "units" / "mixed.image").get(r.id)
    assert m.caption(dmlm.Codes(codes)) == m.caption([dmlm.Codes(codes)])[0] == text
    assert m.caption([x.image_path(manifest) for x in records]) == [x.caption for x in records]
    with pytest.raises(dmlm.UserError, match="uint8"):
        m.caption(np.zeros((16, 16, 3), np.float32))


def test_synthesize_units(m, recs):
    _, _, records = recs
    units = m.synthesize_units(records[2].text)
    assert isinstance(units, np.ndarray) and units.dtype == np.int64 and len(units)
    assert units.max() < m.codebook("speech").k
    batch = m.synthesize_units([x.text for x in records])
    assert len(batch) == len(records) and np.array_equal(batch[2], units)
    reranked = m.synthesize_units(records[2].text, rerank=2, temperature=0.8)
    assert reranked.dtype == np.int64
    d = m.synthesize_units(records[2].text, return_details=True)
    assert np.array_equal(d.units, units) and d.text is None and math.isfinite(d.logprob)
    with pytest.raises(dmlm.UserError, match="empty"):
        m.synthesize_units("  ")


def test_speech_out_needs_a_vocoder(m, recs):
    with pytest.raises(dmlm.MissingFileError, match="dmlm vocoder train"):
        m.speak(recs[2][2].text)


def test_speak_and_audio_save_round_trip(speaking, recs, tmp_path):
    _, manifest, records = recs
    audio = speaking.speak(records[2].text)
    assert isinstance(audio, dmlm.Audio) and audio.sample_rate == 16_000
    assert audio.samples.dtype == np.float32 and audio.samples.ndim == 1 and audio.seconds > 0
    out = audio.save(tmp_path / "sub" / "out.wav")
    back, sr = sf.read(str(out), dtype="float32")
    assert sr == 16_000 and len(back) == len(audio)
    assert np.abs(back - np.clip(audio.samples, -1, 1)).max() < 2 / 2**15  # 16-bit PCM
    assert np.array_equal(dmlm.Audio.load(out).samples, back)
    both = speaking.speak([x.text for x in records[:2]], return_details=True)
    assert len(both) == 2 and all(a.details.units is not None and a.details.seconds > 0 for a in both)
    assert speaking.info["vocoder"] is True


def test_resynthesize(speaking, recs):
    _, manifest, records = recs
    path = records[0].audio_path(manifest)
    audio = speaking.resynthesize(path)
    assert isinstance(audio, dmlm.Audio) and audio.seconds > 0
    from_units = speaking.resynthesize(dmlm.Units(speaking.units(path)[0]))
    assert np.allclose(from_units.samples, audio.samples, atol=1e-5)
    assert len(speaking.resynthesize([path, load_audio(path)])) == 2


@pytest.mark.parametrize("task, key", [("asr", "wer"), ("s2tt:es", "bleu"), ("i2t", "cider"), ("t2s", "unit_accuracy"),
                                       ("text_lm:es", "perplexity"), ("speech_lm", "perplexity"),
                                       ("image_lm", "perplexity")])
def test_evaluate_every_task(m, recs, task, key, tmp_path):
    root, manifest, _ = recs
    with_stores = m.evaluate(task, manifest, units=root / "units", out=tmp_path / "r.json", progress=False)
    computed = m.evaluate(task, manifest, progress=False)  # tokens computed with the model's codebooks
    assert key in with_stores and with_stores[key] == pytest.approx(computed[key])
    assert (tmp_path / "r.json").is_file()
    if key == "wer":
        assert with_stores["wer"] == 0.0  # the overfit references
    if key == "perplexity":
        assert 1.0 <= with_stores["perplexity"] < 10.0


def test_evaluate_speech_out_with_a_judge(speaking, recs, tmp_path):
    _, manifest, records = recs
    judge = FixedJudge(records[0].text)
    rep = speaking.evaluate("t2s", manifest, judge=judge, out=tmp_path / "t2s.json")
    assert rep["task"] == "t2s" and 0 <= rep["wer"] <= 100
    assert (tmp_path / "t2s.json").is_file() and (tmp_path / "t2s" / "hyps.jsonl").is_file()
    res = speaking.evaluate("resynthesis", manifest, judge=judge, limit=2)
    assert res["task"] == "resynthesis" and "wer" in res
    assert res["units"] == "computed with the codebook"
    with pytest.raises(dmlm.UserError, match="judge is for t2s"):
        speaking.evaluate("asr", manifest, judge=judge)
    with pytest.raises(dmlm.UserError, match="manifest not found"):
        speaking.evaluate("asr", tmp_path / "missing.jsonl")


def test_the_readme_python_block_shape(m, recs):
    """The README's API block, on the tiny model (the README's own block runs against runs/demo/model)."""
    _, manifest, records = recs
    wav = records[0].audio_path(manifest)
    assert isinstance(m.tasks, list)
    assert isinstance(m.transcribe(wav), str)
    assert isinstance(m.translate(wav, to="es", strategy="beam", beam_size=4), str)
    assert isinstance(m.caption(records[0].image_path(manifest)), str)
    assert isinstance(m.evaluate("s2tt:es", manifest, progress=False)["bleu"], float)


def test_a_training_config_without_data_paths_is_a_clear_error(tmp_path, capsys):
    from dmlm.cli import main
    from dmlm.training.config import RunConfig
    from dmlm.util.config import ConfigError

    with pytest.raises(ConfigError, match="data.train"):
        RunConfig().validate()
    assert main(["train", "train.steps=1"]) == 2
    err = capsys.readouterr().err
    assert "data.train" in err and "train.out" in err and "Traceback" not in err


def test_the_readme_python_block_uses_the_api_as_it_is():
    """Every `m.<name>` the README's Python block calls exists on DMLM, and every keyword it passes is accepted."""
    import ast
    import inspect
    import re
    from pathlib import Path

    from dmlm.api import DMLM
    from dmlm.decoding import SPEECH_OUT_FIELDS

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = re.search(r"## Python API\s+```python\n(.*?)```", readme, re.S).group(1)
    calls = [n for n in ast.walk(ast.parse(block)) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
             and isinstance(n.func.value, ast.Name) and n.func.value.id == "m"]
    assert {c.func.attr for c in calls} >= {"transcribe", "translate", "caption", "speak", "evaluate"}
    for c in calls:
        method = getattr(DMLM, c.func.attr)
        params = inspect.signature(method).parameters
        for kw in c.keywords:
            assert kw.arg in params or kw.arg in SPEECH_OUT_FIELDS, f"README: m.{c.func.attr}({kw.arg}=...)"
    assert "dmlm.load(" in block
