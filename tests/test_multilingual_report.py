"""The multilingual recipe's report (dmlm/recipes/multilingual_report.py, configs/multilingual.yaml): each language's
ASR beside Whisper-base on the same clips, and S2ST's three ways with the ceiling, in report.md and the results page.

On a hand-made run folder (a bilingual test manifest of short tones, the hypotheses an evaluation would have kept):
Whisper is a stub that hears each tone as its record's text (one word short in the held-out voice), so every number
is checked against one computed here. Nothing is trained.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from dmlm.data.manifest import HELDOUT_VOICE, Record, is_heldout_voice, read_manifest, write_manifest
from dmlm.evaluation.grouping import limit_per_group
from dmlm.evaluation.s2st import asr_bleu
from dmlm.metrics import error_rates
from dmlm.recipes.run_folder import RunFolder
from dmlm.tasks import get_task
from dmlm.util.config import ConfigError
from dmlm.util.errors import UserError
from dmlm.util.io import read_jsonl, write_jsonl

EN = ["a red ball", "two big dogs run", "the cat sleeps", "one blue cup"]
ES = ["una pelota roja", "dos perros grandes corren", "el gato duerme", "una taza azul"]
LIMIT = 2  # the run's eval_limit: the first two clips of each voice group


def _heard(text: str, held: bool) -> str:
    return text.rsplit(" ", 1)[0] if held else text


class _StubWhisper:
    """Hears each test tone as its record's text, one word short in the held-out voice; records the languages it was
    forced to and the clips it heard."""

    model_name, engine = "stub-whisper", "stub"
    heard: dict[str, str] = {}
    languages: list[str] = []
    calls = 0

    def __init__(self, model: str = "whisper-base", language: str = "en", **kwargs):
        type(self).languages.append(language)

    @staticmethod
    def key(wav: np.ndarray) -> str:
        return hashlib.sha1(np.ascontiguousarray(wav, dtype=np.float32).tobytes()).hexdigest()

    def transcribe(self, wavs):
        type(self).calls += len(wavs)
        return [self.heard[self.key(w)] for w in wavs]


@pytest.fixture
def run(tmp_path, monkeypatch) -> Path:
    """A run folder: data/test.jsonl (3 English and 3 Spanish clips in the training voices, 3 of each in the held-out
    voice) and what `asr:en` and `asr:es` evaluations with eval_limit 2 kept (dmlm misses a word on the first clip)."""
    from dmlm.evaluation import whisper_baseline
    from dmlm.util.audio import load_audio

    monkeypatch.setattr(whisper_baseline, "WhisperJudge", _StubWhisper)
    _StubWhisper.heard, _StubWhisper.languages, _StubWhisper.calls = {}, [], 0
    folder = RunFolder(tmp_path)
    test = folder.manifest("test")
    records = []
    for lang, texts in (("en", EN), ("es", ES)):
        for held in (False, True):
            for i, text in enumerate(texts[:3]):
                rid = f"{lang}-{'h' if held else 's'}{i}"
                records.append(Record(id=rid, split="test", lang=lang, audio=f"wav/{rid}.wav", text=text,
                                      speaker="held" if held else "m1", custom={HELDOUT_VOICE: True} if held else {}))
    (test.parent / "wav").mkdir(parents=True)
    for n, r in enumerate(records):
        sf.write(r.audio_path(test), np.sin(np.arange(1600) * (n + 1) / 50).astype(np.float32) * 0.1, 16000)
        _StubWhisper.heard[_StubWhisper.key(load_audio(r.audio_path(test)))] = _heard(r.text, is_heldout_voice(r))
    write_manifest(test, records)
    asr = get_task("asr")
    for lang in ("en", "es"):  # the records an `asr:LANG` evaluation scores, as dmlm.evaluation.tasks picks them
        scored = limit_per_group([r for r in records if asr.takes(r, lang)], LIMIT)
        write_jsonl(folder.eval_hyps(f"asr:{lang}"), [
            {"id": r.id, "ref": r.text, "hyp": r.text.split(" ", 1)[1] if k == 0 else r.text,
             HELDOUT_VOICE: is_heldout_voice(r)} for k, r in enumerate(scored)])
    return tmp_path


def _config(run: Path, *extra: str):
    from dmlm.recipes.demo import load_demo_config

    return load_demo_config(None, [f"out={run}", "prepare.speech_langs=[es]", "run.data.tasks=[asr, t2s]",
                                   "run.data.weights=[]", "eval_tasks=['asr:en', 'asr:es']", f"eval_limit={LIMIT}",
                                   "whisper_baseline=true", *extra])


def test_whisper_base_is_set_beside_each_language_on_the_same_clips(run):
    from dmlm.recipes.multilingual_report import SEEN, asr_beside_whisper

    folder = RunFolder(run)
    rows = asr_beside_whisper(_config(run), folder, folder.manifest("test"), progress=False)
    assert set(rows) == {"asr:en", "asr:es"} and sorted(_StubWhisper.languages) == ["en", "es"]  # forced, per language
    for spec, lang in (("asr:en", "en"), ("asr:es", "es")):
        row = rows[spec]
        assert (row["language"], row["limit"]) == (lang, LIMIT) and set(row["groups"]) == {SEEN, HELDOUT_VOICE}
        ours = read_jsonl(folder.eval_hyps(spec))
        theirs = read_jsonl(folder.eval_hyps(f"whisper_base_{spec}"))
        assert [r["id"] for r in theirs] == [r["id"] for r in ours]  # the very clips dmlm's evaluation scored
        for group, held in ((SEEN, False), (HELDOUT_VOICE, True)):
            g, mine = row["groups"][group], [r for r in ours if is_heldout_voice(r) == held]
            refs = [r["ref"] for r in mine]
            assert g["utterances"] == len(mine) == LIMIT
            want = {"dmlm": error_rates(refs, [r["hyp"] for r in mine]),
                    "whisper_base": error_rates(refs, [_heard(t, held) for t in refs])}
            for system, scores in want.items():
                got = g[system]
                assert (got["wer"], got["cer"]) == pytest.approx((scores["wer"], scores["cer"]))
                assert got["ci95"][0] <= got["wer"] <= got["ci95"][1]
                assert got["cer_ci95"][0] <= got["cer"] <= got["cer_ci95"][1]
                assert ("whisper_english" in got) == (lang == "en")  # Whisper's normalizer knows English only
            assert (g["whisper_base"]["wer"] > 0) == held
            assert g["dmlm_vs_whisper_base"]["delta"] == pytest.approx(g["dmlm"]["wer"] - g["whisper_base"]["wer"])
    # reused: a second report transcribes nothing
    calls = _StubWhisper.calls
    assert asr_beside_whisper(_config(run), folder, folder.manifest("test"), progress=False) == rows
    assert _StubWhisper.calls == calls == 4 * LIMIT


def test_a_baseline_that_heard_other_clips_is_refused(run):
    from dmlm.recipes.multilingual_report import asr_beside_whisper

    folder = RunFolder(run)
    path = folder.eval_hyps("asr:es")
    write_jsonl(path, read_jsonl(path)[1:])  # dmlm scored one clip fewer than its limit gives Whisper
    with pytest.raises(UserError, match="other clips"):
        asr_beside_whisper(_config(run), folder, folder.manifest("test"), progress=False)
    path.unlink()
    with pytest.raises(UserError, match="no hypotheses of asr:es"):
        asr_beside_whisper(_config(run), folder, folder.manifest("test"), progress=False)


# -- S2ST's ways ------------------------------------------------------------------------------------

WAYS = {"direct": ["una pelota", "dos perros grandes corren", "el gato"],
        "chained": ["una pelota roja", "dos perros", "el gato duerme"],
        "cascade": ["", "perros", "el gato duerme"]}


def _s2st_eval(run: Path, ceiling: bool = True) -> dict:
    """What `evaluate --task s2st:es` keeps: its report (every way, the ceiling), the ways' transcripts and the
    ceiling's. Clips 0 and 1 in the training voices, 2 in the held-out voice."""
    folder = RunFolder(run)
    refs = ES[:3]
    rows, ways = [], {}
    for way, hyps in WAYS.items():
        rows += [{"id": f"en-{i}", "way": way, "ref": r, "hyp": h, HELDOUT_VOICE: i == 2}
                 for i, (r, h) in enumerate(zip(refs, hyps))]
        ways[way] = {**asr_bleu(refs[:2], hyps[:2]),
                     **{f"{k}_{HELDOUT_VOICE}": v for k, v in asr_bleu(refs[2:], hyps[2:]).items()}}
    heard = ["una pelota roja", "dos perros grandes"]
    rep = {"task": "s2st:es", "judge": "whisper-base", "language": "es", "records": 3, "ways": ways, **ways["direct"],
           **{f"ceiling_{k}": v for k, v in asr_bleu(refs[:2], heard).items()}}
    folder.evals.mkdir(parents=True, exist_ok=True)
    folder.eval_report("s2st:es").write_text(json.dumps(rep))
    write_jsonl(folder.eval_dir("s2st:es") / "hyps.jsonl", rows)
    if ceiling:
        write_jsonl(folder.eval_dir("s2st:es") / "ceiling.hyps.jsonl",
                    [{"id": f"en-{i}", "recording": f"es-{i}", "ref": r, "hyp": h, HELDOUT_VOICE: False}
                     for i, (r, h) in enumerate(zip(refs, heard))])
    return rep


def test_the_ways_table_has_every_way_with_intervals_and_the_ceiling(run):
    from dmlm.recipes.multilingual_report import SEEN, s2st_ways

    rep = _s2st_eval(run)
    ways = s2st_ways(RunFolder(run), ["asr:es", "s2st:es"])
    assert list(ways) == ["s2st:es"]
    row = ways["s2st:es"]
    assert list(row["ways"]) == ["direct", "chained", "cascade"]
    assert (row["language"], row["judge"]) == ("es", "whisper-base")
    for way, groups in row["ways"].items():
        assert set(groups) == {SEEN, HELDOUT_VOICE}
        assert (groups[SEEN]["utterances"], groups[HELDOUT_VOICE]["utterances"]) == (2, 1)
        for m in ("asr_bleu", "asr_chrf"):
            assert groups[SEEN][m] == pytest.approx(rep["ways"][way][m])
            assert groups[HELDOUT_VOICE][m] == pytest.approx(rep["ways"][way][f"{m}_{HELDOUT_VOICE}"])
            lo, hi = groups[SEEN][f"{m}_ci95"]
            assert lo <= groups[SEEN][m] + 1e-9 and groups[SEEN][m] <= hi + 1e-9
    ceiling = row["ceiling"][SEEN]
    assert ceiling["utterances"] == 2 and ceiling["asr_bleu"] == pytest.approx(rep["ceiling_asr_bleu"])
    assert len(ceiling["asr_bleu_ci95"]) == 2 and len(ceiling["asr_chrf_ci95"]) == 2

    # an evaluation made before the ceiling's transcripts were kept: the ceiling without an interval
    (RunFolder(run).eval_dir("s2st:es") / "ceiling.hyps.jsonl").unlink()
    old = s2st_ways(RunFolder(run), ["s2st:es"])["s2st:es"]["ceiling"][SEEN]
    assert old == {"utterances": None, "asr_bleu": rep["ceiling_asr_bleu"], "asr_chrf": rep["ceiling_asr_chrf"]}

    # transcripts of another evaluation than the report are an error, not a silently different number
    rep["ways"]["chained"]["asr_bleu"] += 1.0
    RunFolder(run).eval_report("s2st:es").write_text(json.dumps(rep))
    with pytest.raises(UserError, match="s2st:es chained: asr_bleu recomputed"):
        s2st_ways(RunFolder(run), ["s2st:es"])


def _report(run: Path) -> dict:
    """report.json of a finished multilingual run, as `run_demo` assembles it (its sections made here)."""
    from dmlm.evaluation.headline import headline
    from dmlm.recipes.multilingual_report import asr_beside_whisper, s2st_ways

    folder = RunFolder(run)
    rep = _s2st_eval(run)
    return {"tasks": {"s2st:es": headline(rep)},
            "machine": {"cores": 2, "cpu": "x", "gpu": None, "python": "3.11", "torch": "2"}, "minutes": 3.0,
            "stages_seconds": {"train": 120.0, "evaluate": 50.0, "whisper_baseline": 10.0}, "train": {},
            "codebook": {"backend": "mel", "model": None, "layer": -1, "k": 16, "frame_rate": 50.0, "dedup": False,
                         "fingerprint": "f"},
            "config": {"prepare": {"corpus": "mini-world"}},
            "asr_languages": asr_beside_whisper(_config(run), folder, folder.manifest("test"), progress=False),
            "s2st_ways": s2st_ways(folder, ["s2st:es"])}


def test_report_and_results_page_show_both_tables_and_the_stage_times(run, tmp_path):
    from dmlm.recipes.intervals import headline_intervals
    from dmlm.recipes.report import write_reports

    report = _report(run)
    folder = RunFolder(run)
    folder.report_json.write_text(json.dumps(report))
    rows = {r["score"]: r for r in headline_intervals(run, draws=200)}  # S2ST's own way: once a KeyError
    assert rows["S2ST en→es (direct) ASR-BLEU"]["value"] == pytest.approx(report["tasks"]["s2st:es"]["asr_bleu"])
    page = tmp_path / "docs" / "multilingual.md"
    write_reports(run, results=page)
    md, res = folder.report_md.read_text(), page.read_text()
    es = report["asr_languages"]["asr:es"]["groups"]["training_voices"]
    ways = report["s2st_ways"]["s2st:es"]
    for text in (md, res):
        assert "## ASR per language beside Whisper-base" in text and "first 2 of each voice group" in text
        assert (f"| ASR es | training voices | 2 | {es['dmlm']['wer']:.1f} [{es['dmlm']['ci95'][0]:.1f}, "
                f"{es['dmlm']['ci95'][1]:.1f}] |") in text
        assert "| ASR en | held-out voice | 2 |" in text and "English WER after Whisper's English normalizer" in text
        assert "## Speech-to-speech translation: the three ways and the ceiling" in text
        for way in ("direct", "chained", "cascade"):
            g = ways["ways"][way]["training_voices"]
            assert f"| `s2st:es` | {way} | training voices | 2 | {g['asr_bleu']:.1f} [" in text
            assert f"| `s2st:es` | {way} | held-out voice | 1 |" in text
        c = ways["ceiling"]["training_voices"]
        assert (f"| `s2st:es` | ceiling: whisper-base on the es recordings | training voices | 2 | "
                f"{c['asr_bleu']:.1f} [{c['asr_bleu_ci95'][0]:.1f}, {c['asr_bleu_ci95'][1]:.1f}] |") in text
    assert "| S2ST en→es (direct) | ASR-BLEU |" in md  # the headline row the summary used to drop
    assert "whisper_baseline 10 s" in res and "Wall time" in res  # per-stage wall times on the page
    kept = json.loads(page.with_suffix(".json").read_text())
    assert kept["asr_languages"] == report["asr_languages"] and kept["s2st_ways"] == report["s2st_ways"]
    assert "(a `make demo` run" in res and "`multilingual.json` beside this page" in res  # no recipe recorded: the demo's
    assert res.startswith("# Results\n")
    folder.report_json.write_text(json.dumps({**report, "config": {**report.get("config", {}),
                                                                   "recipe": "configs/multilingual.yaml"}}))
    write_reports(run, results=page)
    res = page.read_text()  # the page names the run's recipe, in its title too
    assert "(a `dmlm demo configs/multilingual.yaml` run)" in res and res.startswith("# Results of `configs/multilingual.yaml`")


def test_a_report_without_them_is_unchanged():
    from dmlm.recipes.multilingual_report import render_section

    assert render_section({"tasks": {"asr": {"wer": 1.0}}}) == []


def test_the_ceiling_keeps_its_transcripts(tmp_path):
    """evaluate_s2st's ceiling: the target-language recordings of the training-voice clips' sentences, row by row."""
    from dmlm.data.split import Split
    from dmlm.evaluation.s2st import _ceiling

    manifest = tmp_path / "t.jsonl"
    (tmp_path / "wav").mkdir()
    recs = []
    for i in range(2):
        par = {"en": f"en-{i}", "es": f"es-{i}"}
        recs.append(Record(id=f"en-{i}", lang="en", audio=f"wav/en-{i}.wav", text=EN[i], custom={"parallel": par}))
        recs.append(Record(id=f"es-{i}", lang="es", audio=f"wav/es-{i}.wav", text=ES[i], custom={"parallel": par}))
    for r in recs:
        sf.write(r.audio_path(manifest), np.full(800, 0.1, dtype=np.float32), 16000)
    write_manifest(manifest, recs)

    class Judge:
        language = "es"

        def transcribe(self, wavs):
            return ["una pelota roja"] * len(wavs)

    en = [r for r in read_manifest(manifest) if r.lang == "en"]
    scores, rows = _ceiling(Split(manifest), en, "es", ES[:2], Judge())
    assert [(r["id"], r["recording"], r["ref"], r["hyp"]) for r in rows] == [
        ("en-0", "es-0", ES[0], "una pelota roja"), ("en-1", "es-1", ES[1], "una pelota roja")]
    assert scores["ceiling_asr_bleu"] == pytest.approx(asr_bleu(ES[:2], ["una pelota roja"] * 2)["asr_bleu"])


def test_the_multilingual_recipe_sets_whisper_beside_its_asr_and_the_demo_does_not(tmp_path):
    from dmlm.recipes.demo import load_demo_config

    ml = load_demo_config("configs/multilingual.yaml", [])
    assert ml.whisper_baseline and ml.eval_limit > 0 and all(ml.limit_of(s) == ml.eval_limit for s in ("asr:en", "asr:es", "s2st:es"))
    assert not load_demo_config("configs/demo.yaml", []).whisper_baseline
    with pytest.raises(ConfigError, match="name each in eval_tasks"):
        load_demo_config("configs/multilingual.yaml", [f"out={tmp_path}", "eval_tasks=[asr, 's2st:es']"])
    with pytest.raises(ConfigError, match="no speech recognition"):
        load_demo_config(None, [f"out={tmp_path}", "whisper_baseline=true", "eval_tasks=[t2s]"])
