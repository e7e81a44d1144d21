"""`python -m dmlm.recipes.intervals RUN`: the headline scores recomputed from a run's kept outputs, with intervals."""

from __future__ import annotations

import json

import pytest

from dmlm.data.manifest import Record, write_manifest
from dmlm.recipes.intervals import headline_intervals, main
from dmlm.util.errors import UserError


def _jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture
def run(tmp_path):
    refs = ["a red car", "the big dog runs", "two blue cups", "a cat sleeps"]
    _jsonl(tmp_path / "eval" / "asr.hyps.jsonl",
           [{"id": f"u{i}", "ref": r, "hyp": r if i % 2 else "a red", "heldout_voice": False} for i, r in enumerate(refs)]
           + [{"id": f"h{i}", "ref": r, "hyp": r, "heldout_voice": True} for i, r in enumerate(refs)])
    # resynthesis: two clips in the vocoder's voice (one among the groups, one added), one other voice
    _jsonl(tmp_path / "examples" / "resynthesis" / "hyps.jsonl", [
        {"id": "u0", "ref": "a red car", "hyp": "A red car.", "heldout_voice": False, "hyp_original": "a red car"},
        {"id": "u1", "ref": "the big dog runs", "hyp": "the dog", "heldout_voice": False, "hyp_original": "the big dog runs"},
        {"id": "u2", "ref": "two blue cups", "hyp": "two blue", "heldout_voice": False, "vocoder_voice_only": True,
         "hyp_original": "two blue cups"}])
    (tmp_path / "eval" / "resynthesis.json").write_text(json.dumps({"vocoder_voice": "joe"}))
    write_manifest(tmp_path / "data" / "test.jsonl", [Record(id="u0", text="a red car", speaker="joe"),
                                                      Record(id="u1", text="the big dog runs", speaker="m3"),
                                                      Record(id="u2", text="two blue cups", speaker="joe")])
    from dmlm.metrics import error_rates

    asr = error_rates(refs, ["a red", refs[1], "a red", refs[3]])["wer"]
    tasks = {"asr": {"wer": asr, "wer_heldout_voice": 0.0},
             "resynthesis": {"wer_vocoder_voice": 100 / 6, "original_wer_vocoder_voice": 0.0}}
    (tmp_path / "report.json").write_text(json.dumps({"tasks": tasks}))
    return tmp_path


def test_intervals_recompute_the_reported_scores_and_bracket_them(run, capsys):
    rows = {r["score"]: r for r in headline_intervals(run, draws=500)}
    assert set(rows) == {"ASR WER %", "ASR WER %, held-out voice", "resynthesis Whisper WER %, the vocoder's voice",
                         "the same recordings, Whisper WER %"}
    resyn = rows["resynthesis Whisper WER %, the vocoder's voice"]
    assert resyn["utterances"] == 2 and resyn["value"] == pytest.approx(100 / 6)  # u1 is another voice; "A red car." is right
    for r in rows.values():
        assert r["ci95"][0] <= r["value"] <= r["ci95"][1]
    assert rows["ASR WER %, held-out voice"]["ci95"] == [0.0, 0.0]  # every resample is error-free
    assert json.loads((run / "intervals.json").read_text())["draws"] == 500
    assert main([str(run), "--draws", "200"]) == 0 and "| ASR WER % |" in capsys.readouterr().out


def test_intervals_refuse_outputs_of_another_evaluation(run, capsys):
    report = json.loads((run / "report.json").read_text())
    report["tasks"]["asr"]["wer"] += 1.0
    (run / "report.json").write_text(json.dumps(report))
    with pytest.raises(UserError, match="ASR WER % recomputed from the kept outputs"):
        headline_intervals(run)
    assert main([str(run / "nowhere")]) == 2 and "no report.json" in capsys.readouterr().err


def test_a_run_with_another_language_pair_reports_it(tmp_path):
    """Rows are keyed by task spec: a run that trained `s2tt:de` gets an "S2TT en→de" row, example table and interval."""
    from dmlm.recipes.report import render_markdown

    refs = ["ein roter wagen", "der große hund läuft"]
    _jsonl(tmp_path / "eval" / "s2tt_de.hyps.jsonl", [{"id": f"u{i}", "ref": r, "hyp": r, "heldout_voice": False}
                                                      for i, r in enumerate(refs)])
    from dmlm.metrics import translation_scores

    bleu = translation_scores(refs, refs)["bleu"]
    report = {"tasks": {"s2tt:de": {"bleu": bleu, "chrf": 100.0}, "text_lm:de": {"perplexity": 3.5}},
              "machine": {"cores": 2, "cpu": "x", "gpu": None}, "minutes": 1.0, "stages_seconds": {"train": 60.0},
              "train": {}, "codebook": {"backend": "mel", "model": None, "layer": -1, "k": 16, "frame_rate": 50.0,
                                         "dedup": False, "fingerprint": "f"},
              "config": {"prepare": {"corpus": "mini-world"}}}
    (tmp_path / "report.json").write_text(json.dumps(report))
    md = render_markdown(report, tmp_path)
    assert "| S2TT en→de | BLEU |" in md and "en→es" not in md and "## S2TT en→de examples" in md
    assert "| text_lm:de (unpaired) | perplexity | 3.50 |" in md
    rows = {r["score"]: r for r in headline_intervals(tmp_path, draws=100)}
    assert set(rows) == {"S2TT en→de BLEU"} and rows["S2TT en→de BLEU"]["value"] == pytest.approx(bleu)
