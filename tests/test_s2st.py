"""Speech in es/de/fr and speech-to-speech translation (issue 31): the corpus, the task rows, the chained
decode, the ASR-BLEU scorer, and the API, CLI and serve route on a tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dmlm.data.manifest import Record, is_heldout_voice, read_manifest, write_manifest
from dmlm.tasks import Sources, get_task, render
from dmlm.util.errors import UserError
from dmlm.vocab import SPECIALS, Vocab

ES = {"the": "el", "a": "un", "red": "rojo", "big": "grande", "cat": "gato", "dog": "perro", "runs": "corre",
      "sees": "ve", "likes": "quiere"}


class _Store:
    def __init__(self, units: dict[str, list[int]]):
        self.units = units

    def get(self, rid: str) -> np.ndarray:
        if rid not in self.units:
            raise UserError(f"no tokens for record {rid!r}")
        return np.asarray(self.units[rid])


class _Text:
    def encode(self, text: str) -> list[int]:
        return [3 + (sum(map(ord, w)) % 90) for w in text.split()]


def _pair() -> tuple[Record, Record, Sources]:
    par = {"en": "s1", "es": "s1-es"}
    en = Record(id="s1", lang="en", audio="wav/s1.wav", text="the red cat", translations={"es": "el gato rojo"},
                custom={"parallel": par})
    es = Record(id="s1-es", lang="es", audio="wav/s1-es.wav", text="el gato rojo",
                translations={"en": "the red cat"}, custom={"parallel": par})
    return en, es, Sources("m.jsonl", _Text(), speech=_Store({"s1": [1, 2, 3], "s1-es": [7, 8]}))


def _vocab() -> Vocab:
    return Vocab(text_size=100, speech_size=16)


def test_task_tags_are_appended_not_inserted():
    # append-only: every id of a model saved before these tasks stays where it was
    assert SPECIALS[-2:] == ("<|s2st|>", "<|s2st_chain|>") and SPECIALS.index("<|el|>") == 45


def test_s2st_renders_source_units_then_the_translations_units_and_round_trips():
    en, _, src = _pair()
    v, task = _vocab(), get_task("s2st")
    r = render(task, task.sample(en, src, "es"), v, "s2st:es")
    s = v.speech_start
    assert r.ids == [v.bos, v.task("s2st"), v.lang("en"), v.open("speech"), s + 1, s + 2, s + 3, v.close("speech"),
                     v.lang("es"), v.open("speech"), s + 7, s + 8, v.close("speech"), v.eos]
    assert r.ids[: r.prompt_len] == task.prompt(task.source_sample(en, src, "es"), v)  # decoding prompts the same
    assert task.output_units(r.ids[r.prompt_len : -2], v) == [7, 8]  # the target's units, back out
    assert task.reference(en, src, "es") == "el gato rojo"  # judged against the translation (ASR-BLEU)


def test_chained_s2st_writes_the_target_text_then_its_units():
    en, _, src = _pair()
    v, task = _vocab(), get_task("s2st_chain")
    r = render(task, task.sample(en, src, "es"), v, "s2st_chain:es")
    text = _Text().encode("el gato rojo")
    tgt = r.ids[r.prompt_len :]
    assert r.ids[r.prompt_len - 2 : r.prompt_len] == [v.lang("es"), v.open("text")]  # the prompt opens text
    assert tgt == text + [v.close("text"), v.open("speech"), v.speech_start + 7, v.speech_start + 8,
                          v.close("speech"), v.eos]
    assert [v.modality_of(i) for i in tgt[:3]] == [0, 0, 0] and r.target[r.prompt_len :] == [1] * len(tgt)
    assert task.output_text_ids(tgt, v) == text and task.output_units(tgt[:-2], v) == [7, 8]


def test_language_in_a_spec_selects_the_recordings():
    en, es, src = _pair()
    assert get_task("asr").sample(es, src, "es").src_lang == "es"
    assert get_task("asr").sample(en, src, "es") is None  # English audio is never tagged Spanish
    assert get_task("t2s").sample(es, src, "es").text_ids == _Text().encode("el gato rojo")
    assert get_task("s2tt").sample(es, src, "es") is None  # no translation into the language spoken
    s = get_task("s2tt").sample(es, src, "en")
    assert (s.src_lang, s.tgt_lang, s.target_text_ids) == ("es", "en", _Text().encode("the red cat"))
    assert get_task("s2st").sample(es, src, "en").target_units.tolist() == [1, 2, 3]  # es -> en
    assert get_task("s2st").sample(en, src, "de") is None  # no German recording of it
    assert get_task("asr").sample(en, src, None).src_lang == "en"  # no language: every recording in its own


def test_s2st_without_the_target_recording_names_the_record():
    en, _, _ = _pair()
    src = Sources("m.jsonl", _Text(), speech=_Store({"s1": [1, 2]}))
    with pytest.raises(UserError, match="s1-es"):
        get_task("s2st").sample(en, src, "es")


def test_s2st_rows_are_scored_by_ear_against_the_translation():
    from dmlm.tasks import check_scorable, scoring_for

    assert scoring_for("s2st:es").judged_against == "translation" and scoring_for("s2st:es").by_ear == "always"
    assert scoring_for("s2st:es").row_label("s2st:es") == "S2ST en→es (direct)"
    with pytest.raises(UserError, match="s2st:LANG"):
        check_scorable(["s2st"])


def test_multilingual_row_labels_name_the_language_and_the_direction():
    from dmlm.tasks import scoring_for

    labels = {s: scoring_for(s).row_label(s) for s in ("asr", "asr:es", "t2s:de", "s2tt:es", "s2tt:en")}
    assert labels == {"asr": "ASR", "asr:es": "ASR es", "t2s:de": "T2S de", "s2tt:es": "S2TT en→es",
                      "s2tt:en": "S2TT *→en"}


def test_interval_and_example_names_use_the_headline_labels():
    # the intervals table and the examples once named `asr:es` "ASR en→es", a translation it is not
    from dmlm.recipes.report import short_label

    assert [short_label(s) for s in ("asr:es", "t2s:de", "s2tt:es", "s2tt:en")] == \
        ["ASR es", "T2S de", "S2TT en→es", "S2TT *→en"]


# -- the corpus ------------------------------------------------------------------------------------------------

def test_prepare_speaks_the_translations_with_a_heldout_voice_per_language(tmp_path):
    from dmlm.data.prepare import PrepareConfig, prepare
    from dmlm.data.synth import LANG_HELDOUT, language_voices

    paths = prepare(PrepareConfig(n_train=30, n_dev=3, n_test=3, images=False, speech_langs=["es", "de"]), tmp_path)
    train, test = read_manifest(paths["train"]), read_manifest(paths["test"])
    assert {r.lang for r in train} == {"en", "es", "de"} and len(train) == 90
    es = next(r for r in train if r.lang == "es")
    en = next(r for r in train if r.id == es.custom["parallel"]["en"])
    assert es.text == en.translations["es"] and es.translations["en"] == en.text and "es" not in es.translations
    assert es.speaker in language_voices("es") and (tmp_path / es.audio).is_file() and es.duration > 0.3
    assert en.custom["parallel"] == {"en": en.id, "es": f"{en.id}-es", "de": f"{en.id}-de"}
    held = {r.lang: r.speaker for r in test if is_heldout_voice(r)}
    assert held == {"en": LANG_HELDOUT["en"], "es": LANG_HELDOUT["es"], "de": LANG_HELDOUT["de"]}
    assert not any(r.speaker == LANG_HELDOUT[r.lang] for r in train)
    assert len(test) == 18  # 3 sentences x 3 languages x (a training voice, the held-out voice)


def test_prepare_without_speech_langs_is_unchanged(tmp_path):
    from dmlm.data.prepare import PrepareConfig, prepare

    paths = prepare(PrepareConfig(n_train=30, n_dev=3, n_test=3, images=False), tmp_path)
    recs = read_manifest(paths["train"])
    assert {r.lang for r in recs} == {"en"} and not any("parallel" in r.custom for r in recs)
    with pytest.raises(UserError, match="speech_langs"):
        prepare(PrepareConfig(n_train=30, n_dev=3, n_test=3, images=False, speech_langs=["it"]), tmp_path / "x")


def test_whisper_prompt_forces_the_language():
    from dmlm.evaluation.judge import WHISPER_PROMPT, whisper_prompt

    assert whisper_prompt("es") == ("<|startoftranscript|>", "<|es|>", "<|transcribe|>", "<|notimestamps|>")
    assert whisper_prompt() == WHISPER_PROMPT


# -- a tiny model that translates speech into speech -------------------------------------------------------------

@pytest.fixture(scope="module")
def bilingual(corpus, tmp_path_factory):
    """The four tiny sentences in English (the corpus's clips) and Spanish (espeak-ng es), each naming the other."""
    from dmlm.data.synth import Voice, synthesize_many
    from dmlm.tokenizers.speech import Codebook
    from dmlm.tokenizers.tokenize import tokenize_manifest

    root = tmp_path_factory.mktemp("bilingual")
    en = read_manifest(corpus.tiny)
    es_text = {r.id: " ".join(ES[w] for w in r.text.split()) for r in en}
    durations = synthesize_many([(es_text[r.id], Voice("es+m3", 170, 50), root / "wav" / f"{r.id}-es.wav") for r in en])
    recs = []
    for r, d in zip(en, durations):
        par = {"en": r.id, "es": f"{r.id}-es"}
        recs.append(Record(**{**r.__dict__, "audio": str(r.audio_path(corpus.tiny)), "translations": {"es": es_text[r.id]},
                              "custom": {"parallel": par}}))
        recs.append(Record(id=f"{r.id}-es", split="train", lang="es", audio=f"wav/{r.id}-es.wav", duration=round(d, 3),
                           text=es_text[r.id], translations={"en": r.text}, speaker="es+m3", custom={"parallel": par}))
    manifest = root / "bi.jsonl"
    write_manifest(manifest, recs)
    tokenize_manifest(Codebook.load(corpus.codebook), manifest, root / "units")
    return root, manifest


S2ST_TASKS = ["asr", "s2tt:es", "t2s", "s2st:es", "s2st_chain:es"]


@pytest.fixture(scope="module")
def s2st_model(bilingual, run_config):
    from dmlm.training.train import train
    from dmlm.vocoder import VocoderConfig, train_vocoder

    root, manifest = bilingual
    cfg = run_config(root / "model", "train.steps=60", "train.lr=3e-3", "train.eval_every=1000", "train.save_every=1000",
                     "train.log_every=20", f"data.units={root / 'units'}", f"data.tasks={json.dumps(S2ST_TASKS)}",
                     train=manifest, dev=manifest)
    model = Path(train(cfg))
    train_vocoder([manifest], [root / "units" / "bi"], model / "codebooks" / "speech.safetensors",
                  VocoderConfig(dim=32, frame_dim=32, batch_size=2), model / "vocoder", steps=3, progress=False)
    return model


def test_chained_decode_writes_text_then_units(s2st_model, bilingual):
    from dmlm.inference import run_task
    from dmlm.modeling import load_checkpoint

    ck = load_checkpoint(s2st_model)
    _, manifest = bilingual
    r = read_manifest(manifest)[0]
    task = get_task("s2st_chain")
    sample = task.make_sample("x", np.arange(12) % 16, "en", "es")
    out = run_task(ck, "s2st_chain", [sample])[0]
    v = ck.vocab
    # text ids, then exactly one <|/text|> <|speech|>, then speech ids only
    cut = out.index(v.close("text"))
    assert out[cut + 1] == v.open("speech")
    assert all(v.modality_of(i) == 0 for i in out[:cut]) and all(v.modality_of(i) == 1 for i in out[cut + 2 :])
    assert r.translations["es"]


def test_api_translates_speech_into_audio_three_ways(s2st_model, bilingual):
    import dmlm

    _, manifest = bilingual
    wav = read_manifest(manifest)[0].audio_path(manifest)
    m = dmlm.load(s2st_model)
    for how in ("direct", "chained", "cascade"):
        try:
            out = m.translate(str(wav), to="es", speech=True, how=how, strategy="sample", max_new_tokens=40)
        except UserError as e:  # a 60-step model may say nothing: the error must say so, naming the clip
            assert "generated no speech units" in str(e) and how in str(e)
            continue
        assert isinstance(out, dmlm.Audio) and out.sample_rate == 16000 and out.seconds > 0
    assert isinstance(m.translate(str(wav), to="es"), str)  # text out unchanged
    with pytest.raises(UserError, match="how="):
        m.translate(str(wav), to="es", speech=True, how="telepathy")


def test_cli_translate_speech_writes_a_wav(s2st_model, bilingual, tmp_path):
    from dmlm.cli import main

    _, manifest = bilingual
    wav = read_manifest(manifest)[0].audio_path(manifest)
    out = tmp_path / "out.wav"
    assert not main(["translate", str(s2st_model), str(wav), "--to", "es", "--speech", "-o", str(out),
                     "--strategy", "sample", "--how", "chained"])
    import soundfile as sf

    assert sf.info(str(out)).samplerate == 16000 and sf.info(str(out)).frames > 0
    assert main(["translate", str(s2st_model), str(wav), "--to", "es", "--speech"])  # no -o: an error status


def test_serve_translates_speech_every_way_it_was_trained_for(s2st_model, bilingual):
    import io

    import soundfile as sf
    from fastapi.testclient import TestClient

    import dmlm
    from dmlm.serve import ServeConfig, create_app

    _, manifest = bilingual
    wav = read_manifest(manifest)[0].audio_path(manifest)
    m = dmlm.load(s2st_model)
    with TestClient(create_app(m, ServeConfig()), base_url="http://localhost") as c:
        h = c.get("/health").json()
        assert h["routes"]["translate-speech"] is True
        assert h["speech_ways"] == {"direct": ["es"], "chained": ["es"], "cascade": ["es"]}
        said = 0
        for how in (None, "chained", "cascade"):  # None: the model's first way, direct
            data = {"strategy": "sample", "max_new_tokens": "40", **({"how": how} if how else {})}
            r = c.post("/v1/translate-speech", files={"audio": ("a.wav", wav.read_bytes())}, data=data)
            try:
                want = m.translate(str(wav), to="es", speech=True, how=how or "direct", strategy="sample",
                                   max_new_tokens=40)
            except UserError:  # a 60-step model may say nothing: the route says so too, as a 400
                assert r.status_code == 400 and "generated no speech units" in r.json()["error"]["message"], r.text
                continue
            assert r.status_code == 200, r.text
            assert (r.headers["x-dmlm-how"], r.headers["x-dmlm-to"]) == (how or "direct", "es")
            got, rate = sf.read(io.BytesIO(r.content), dtype="float32")
            assert rate == 16000 and len(got) == len(want.samples) and np.abs(got - np.clip(want.samples, -1, 1)).max() < 1e-3
            said += 1
        assert said  # at least one way spoke: the route is not only tested on its errors


class _EchoJudge:
    """Hears every clip as a fixed Spanish sentence."""

    language = "es"
    model_name = "echo"

    def __init__(self, said: str):
        self.said = said

    def transcribe(self, wavs):
        return [self.said for _ in wavs]


def test_s2st_scorer_on_two_clips(s2st_model, bilingual, tmp_path):
    from dmlm.data.split import Split
    from dmlm.decoding import DecodingOptions
    from dmlm.evaluation.options import EvalOptions
    from dmlm.evaluation.s2st import asr_bleu, evaluate_s2st
    from dmlm.modeling import load_checkpoint

    root, manifest = bilingual
    two = tmp_path / "two.jsonl"
    recs = read_manifest(manifest)
    en = [r for r in recs if r.lang == "en"][:2]
    write_manifest(two, [Record(**{**r.__dict__, "audio": str(r.audio_path(manifest))}) for r in recs
                         if r.lang == "en" and r in en or r.id in {e.custom["parallel"]["es"] for e in en}])
    ref = en[0].translations["es"]
    rep = evaluate_s2st(load_checkpoint(s2st_model), "s2st:es", Split(two), _EchoJudge(ref + "."),
                        DecodingOptions(strategy="sample", max_new_tokens=30), EvalOptions(progress=False),
                        out_dir=tmp_path / "rep")
    assert rep["records"] == 2 and set(rep["ways"]) == {"direct", "chained", "cascade"}
    # the judge says the first reference for every clip: one exact sentence of two, for every way and the ceiling
    want = asr_bleu([ref, en[1].translations["es"]], [ref, ref])["asr_bleu"]
    assert rep["ceiling_asr_bleu"] == pytest.approx(want) and 0 < want < 100
    assert (tmp_path / "rep" / "hyps.jsonl").is_file()
    from dmlm.util.io import read_jsonl

    ceiling = read_jsonl(tmp_path / "rep" / "ceiling.hyps.jsonl")  # kept, so the recipe's report gives it an interval
    assert [(r["id"], r["hyp"]) for r in ceiling] == [(e.id, ref + ".") for e in en]
    with pytest.raises(UserError, match="language"):
        evaluate_s2st(load_checkpoint(s2st_model), "s2st:de", Split(two), _EchoJudge(ref))


def test_a_translation_or_transcript_in_one_language_scores_only_that_languages_recordings(s2st_model, bilingual):
    """s2tt:es on a bilingual test split scores the English recordings (a Spanish one has no 'es' translation);
    asr:es scores the Spanish ones; a limit counts scored records."""
    from dmlm.data.split import Split
    from dmlm.decoding import DecodingOptions
    from dmlm.evaluation.options import EvalOptions
    from dmlm.evaluation.tasks import evaluate_task
    from dmlm.modeling import load_checkpoint

    root, manifest = bilingual
    ck = load_checkpoint(s2st_model)
    opts = DecodingOptions(max_new_tokens=20)
    s2tt = evaluate_task(ck, "s2tt:es", Split(manifest, root / "units"), opts=opts, options=EvalOptions(progress=False, limit=3))
    assert s2tt["records"] == 3
    asr_es = evaluate_task(ck, "asr:es", Split(manifest, root / "units"), opts=opts, options=EvalOptions(progress=False))
    assert asr_es["records"] == len([r for r in read_manifest(manifest) if r.lang == "es"])


def test_speech_out_speaks_the_target_language_in_a_voice_of_that_language(s2st_model, bilingual, monkeypatch,
                                                                           tmp_path):
    """The vocoder learned an English and a Spanish voice: every speech-out path that knows the target language
    (the API's translate and speak, the serve route, the s2st scorer) has it speak Spanish in the Spanish one."""
    from fastapi.testclient import TestClient

    import dmlm
    import dmlm.inference as infer
    from dmlm.api import DMLM
    from dmlm.data.split import Split
    from dmlm.evaluation.options import EvalOptions
    from dmlm.evaluation.s2st import evaluate_s2st
    from dmlm.modeling import load_checkpoint
    from dmlm.serve import ServeConfig, create_app
    from dmlm.vocoder import Vocoder

    root, manifest = bilingual
    said = np.arange(1, 13) % 16  # the model's output is not what is tested: fixed units, every way
    monkeypatch.setattr(infer, "translate_speech_units", lambda ck, units, **kw: [said for _ in units])
    monkeypatch.setattr(infer, "s2st_units", lambda ck, samples, *a, **kw: [said for _ in samples])
    monkeypatch.setattr(DMLM, "synthesize_units", lambda self, texts, **kw: [said for _ in texts])
    voices: list = []
    spectrogram = Vocoder.spectrogram_batch
    monkeypatch.setattr(Vocoder, "spectrogram_batch",
                        lambda self, seqs, voice=None: voices.append(voice) or spectrogram(self, seqs, voice))

    m = dmlm.load(s2st_model)
    assert m.vocoder.cfg.voice_by_lang == {"en": "en-us+m3", "es": "es+m3"}
    wav = read_manifest(manifest)[0].audio_path(manifest)
    m.translate(str(wav), to="es", speech=True)
    m.speak(["el gato rojo"], lang="es")
    m.speak(["the red cat"])
    assert voices == ["es+m3", "es+m3", "en-us+m3"]
    with TestClient(create_app(m, ServeConfig()), base_url="http://localhost") as c:
        r = c.post("/v1/translate-speech", files={"audio": ("a.wav", wav.read_bytes())}, data={"to": "es"})
        assert r.status_code == 200, r.text
    assert voices[3:] == ["es+m3"]
    rep = evaluate_s2st(load_checkpoint(s2st_model), "s2st:es", Split(manifest, root / "units"), _EchoJudge("el gato"),
                        options=EvalOptions(progress=False, limit=1))
    assert set(rep["ways"]) == {"direct", "chained", "cascade"} and voices[4:] == ["es+m3"] * 3


def test_the_speech_codebook_is_fitted_on_every_recording_language():
    from dmlm.data.manifest import Record
    from dmlm.recipes.stages import interleave_languages

    en = [Record(id=f"e{i}", audio=f"e{i}.wav", text="x", lang="en") for i in range(3)]
    es = [Record(id=f"s{i}", audio=f"s{i}.wav", text="x", lang="es") for i in range(2)]
    assert [r.id for r in interleave_languages(en + es)[:4]] == ["e0", "s0", "e1", "s1"]
    assert [r.id for r in interleave_languages(en + es)] == ["e0", "s0", "e1", "s1", "e2"]
    assert interleave_languages(en) == en  # one language: the manifest's own order, as before
