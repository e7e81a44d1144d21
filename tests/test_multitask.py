"""One tiny model on a mixture of every task: it overfits a mixed batch and decodes each target back."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dmlm.data.manifest import Record, read_manifest, write_manifest

from conftest import TASKS  # noqa: E402  (the fixtures `mixed` and `multitask_model` live in conftest)


def test_mixture_is_logged_per_task_and_modality(multitask_model):
    rows = [json.loads(x) for x in multitask_model.with_name("model.log.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "loss" in r]
    assert all(r["tokens_text"] > 0 and r["tokens_speech"] > 0 and r["tokens_image"] > 0 for r in steps)
    seen = {t: sum(r.get(f"examples_{t}", 0) for r in steps) for t in TASKS}
    assert all(n > 0 for n in seen.values()), seen
    dev = [r for r in rows if "dev_loss" in r]
    assert dev and all(f"dev_loss_{t}" in dev[-1] for t in TASKS)


def test_overfit_mixed_batch_decodes_every_task(multitask_model, mixed):
    from dmlm.data.split import Split
    from dmlm.evaluation.options import EvalOptions
    from dmlm.evaluation.tasks import evaluate_task
    from dmlm.modeling import load_checkpoint

    root, manifest = mixed
    ck, split, quiet = load_checkpoint(multitask_model), Split(manifest, root / "units"), EvalOptions(progress=False)
    asr = evaluate_task(ck, "asr", split, options=quiet)
    assert asr["wer"] == 0.0
    s2tt = evaluate_task(ck, "s2tt:es", split, options=quiet)
    assert s2tt["bleu"] > 99.0 and s2tt["chrf"] > 99.0
    i2t = evaluate_task(ck, "i2t", split, options=quiet)
    assert i2t["bleu"] > 99.0
    t2s = evaluate_task(ck, "t2s", split, options=quiet)
    assert t2s["unit_accuracy"] > 90.0, t2s
    lm = evaluate_task(ck, "text_lm:es", split, options=quiet)
    assert 1.0 <= lm["perplexity"] < 1.5


def test_cli_verbs_for_every_task(multitask_model, mixed, capsys):
    from dmlm.cli import main

    root, manifest = mixed
    recs = read_manifest(manifest)
    assert main(["translate", str(multitask_model), recs[0].audio, "--to", "es"]) == 0
    assert capsys.readouterr().out.strip().split("\t")[1] == recs[0].translations["es"]
    assert main(["caption", str(multitask_model), str(root / recs[1].image)]) == 0
    assert capsys.readouterr().out.strip().split("\t")[1] == recs[1].caption
    assert main(["synthesize-units", str(multitask_model), recs[2].text]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["text"] == recs[2].text and len(out["units"]) > 0
    hyps = root / "hyps.jsonl"
    assert main(["decode", str(multitask_model), "--task", "s2tt:es", "--manifest", str(manifest), "--out", str(hyps)]) == 0
    got = {r["id"]: r["hyp"] for r in map(json.loads, hyps.read_text().splitlines())}
    assert got == {r.id: r.translations["es"] for r in recs}


def test_task_errors(multitask_model, mixed, capsys):
    from dmlm.cli import main

    root, manifest = mixed
    assert main(["evaluate", str(multitask_model), "--task", "tts", "--manifest", str(manifest)]) == 2
    assert "unknown task 'tts'; registered tasks:" in capsys.readouterr().err
    assert main(["evaluate", str(multitask_model), "--task", "s2tt:fr", "--manifest", str(manifest)]) == 2
    assert "has no 'fr' translation (translations it has: es)" in capsys.readouterr().err
    assert main(["evaluate", str(multitask_model), "--task", "s2tt", "--manifest", str(manifest)]) == 2
    assert "s2tt:LANG" in capsys.readouterr().err


def test_cli_image_codebooks_and_external_codes(mixed, tmp_path, capsys):
    from dmlm.cli import main
    from dmlm.data.shards import TokenStore

    root, manifest = mixed
    cb = tmp_path / "icb.safetensors"
    assert main(["codebook", "fit", str(manifest), "-o", str(cb), "--modality", "image", "k=4", "image_size=16", "patch=4"]) == 0
    assert main(["tokenize", str(cb), str(manifest), "--out", str(tmp_path / "u")]) == 0
    assert "4 images, 64 tokens" in capsys.readouterr().out
    assert len(TokenStore(tmp_path / "u" / "mixed.image")) == 4
    # codes from an external tokenizer (e.g. a DALL-E dVAE), with a codebook that only names it
    ext = tmp_path / "ext.safetensors"
    assert main(["codebook", "fit", str(manifest), "-o", str(ext), "--modality", "image", "backend=external",
                 "name=dalle-dvae", "k=8192"]) == 0
    codes = tmp_path / "codes.jsonl"
    ids = [r.id for r in read_manifest(manifest)]
    codes.write_text("".join(json.dumps({"id": i, "codes": [n, 8191, 0]}) + "\n" for n, i in enumerate(ids)))
    assert main(["tokenize", str(ext), str(manifest), "--out", str(tmp_path / "x"), "--external-codes", str(codes)]) == 0
    assert TokenStore(tmp_path / "x" / "mixed.image").get(ids[2]).tolist() == [2, 8191, 0]
    capsys.readouterr()
    codes.write_text(json.dumps({"id": ids[0], "codes": [8192]}) + "\n")
    assert main(["tokenize", str(ext), str(manifest), "--out", str(tmp_path / "y"), "--external-codes", str(codes)]) == 2
    assert "codes.jsonl:1" in capsys.readouterr().err


def test_codebook_of_the_wrong_modality_is_an_error(mixed, corpus, run_config, tmp_path, capsys):
    from dmlm.cli import main

    root, manifest = mixed
    # an image codebook where the speech codebook belongs, and the other way round
    assert main(["train", f"data.train={manifest}", "data.dev=", f"data.units={root / 'units'}",
                 f"data.codebook={root / 'icb.safetensors'}", f"train.out={tmp_path / 'm'}", "train.steps=1"]) == 2
    assert "codebook for image, not for speech" in capsys.readouterr().err
    assert main(["train", f"data.train={manifest}", "data.dev=", f"data.units={root / 'units'}", "data.tasks=[i2t]",
                 f"data.codebook={corpus.codebook}", f"data.image_codebook={corpus.codebook}",
                 f"train.out={tmp_path / 'm'}", "train.steps=1"]) == 2
    assert "speech" in capsys.readouterr().err


def test_cli_speech_out(multitask_model, mixed, tmp_path, capsys):
    import soundfile as sf

    from dmlm.cli import main

    root, manifest = mixed
    rec = read_manifest(manifest)[0]
    model = tmp_path / "model"
    import shutil

    shutil.copytree(multitask_model, model)
    assert main(["speak", str(model), rec.text, "-o", str(tmp_path / "x.wav")]) == 2
    assert "dmlm vocoder train" in capsys.readouterr().err  # no vocoder yet: the error says how to make one
    assert main(["vocoder", "train", str(model), "--manifest", str(manifest), "--units", str(root / "units" / "mixed"),
                 "--minutes", "0", "--steps", "3", "dim=32", "frame_dim=32", "batch_size=2"]) == 0
    assert (model / "vocoder" / "config.json").is_file()
    # the matching set, rebuilt from another number of clips (a vocoder without one gets one the same way)
    (model / "vocoder" / "matching.safetensors").unlink()
    assert main(["vocoder", "match", str(model), "--manifest", str(manifest), "--units", str(root / "units" / "mixed"),
                 "--clips", "2"]) == 0
    assert json.loads((model / "vocoder" / "config.json").read_text())["matching_clips"] == 2
    from dmlm.vocoder import MatchingSet

    assert 0 < len(MatchingSet.load(model / "vocoder").frames)
    assert main(["vocoder", "match", str(tmp_path), "--clips", "2"]) == 2  # no vocoder there: a clear error
    assert "not a dmlm checkpoint" in capsys.readouterr().err
    assert main(["vocoder", "match", str(model), "--manifest", str(manifest), "--units", str(root / "units" / "mixed"),
                 "--clips", "0"]) == 2  # nothing changed on a bad size
    assert "at least 1 clip" in capsys.readouterr().err
    assert json.loads((model / "vocoder" / "config.json").read_text())["matching_clips"] == 2
    # --manifest repeats to pool several; --units then needs one store per manifest
    assert main(["vocoder", "match", str(model), "--manifest", str(manifest), "--manifest", str(manifest),
                 "--units", str(root / "units" / "mixed"), "--clips", "2"]) == 2
    assert "2 --manifest but 1 --units" in capsys.readouterr().err
    assert main(["speak", str(model), rec.text, "-o", str(tmp_path / "s.wav")]) == 0
    wav, sr = sf.read(tmp_path / "s.wav")
    assert sr == 16000 and len(wav) > 1600
    assert main(["resynthesize", str(model), rec.audio, "-o", str(tmp_path / "r.wav")]) == 0
    wav, sr = sf.read(tmp_path / "r.wav")
    assert sr == 16000 and abs(len(wav) / sr - sf.info(rec.audio).duration) < 0.2
    capsys.readouterr()
    # judged by ear, with the model's own ASR as the judge (a dmlm checkpoint folder as --judge)
    for task, extra in (("t2s", []), ("resynthesis", ["--units", str(root / "units"), "--voice-clips", "all"])):
        report = tmp_path / f"{task}.json"
        assert main(["evaluate", str(model), "--task", task, "--manifest", str(manifest), "--judge", str(model),
                     "--limit", "2", "--out", str(report), *extra]) == 0
        rep = json.loads(report.read_text())
        assert 0 <= rep["wer"] and "original_wer" in rep and (tmp_path / task / "spectrograms.png").is_file()
    # every clip in the vocoder's voice is judged, those past --limit in the voice's group only
    voice = json.loads((model / "vocoder" / "config.json").read_text())["voice"]
    in_voice = [r for r in read_manifest(manifest) if r.speaker == voice and not r.custom.get("heldout_voice")]
    assert rep["scores"]["vocoder_voice"]["utterances"] == len(in_voice) and rep["scores"]["seen"]["utterances"] == 2
    capsys.readouterr()
    assert main(["evaluate", str(model), "--task", "t2s", "--manifest", str(manifest), "--judge", str(model),
                 "--voice-clips", "3", "--out", str(tmp_path / "x.json")]) == 2
    assert "voice_clips is for the resynthesis task" in capsys.readouterr().err
    # an output that cannot be written (its "folder" is a file): one clear line, no partial wav
    assert main(["speak", str(model), rec.text, "-o", str(tmp_path / "s.wav" / "out.wav")]) == 2
    assert "s.wav/out.wav" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".wav" or p.name.startswith(".")) == ["r.wav", "s.wav"]


def test_a_task_can_train_on_chosen_speakers(mixed, run_config, tmp_path):
    """data.speakers: T2S learns one voice while ASR hears every voice; bad names are clear errors."""
    from dmlm.training.setup import setup

    root, manifest = mixed
    recs = read_manifest(manifest)
    other = tmp_path / "mixed.jsonl"  # same name: the token stores in root/units serve it
    write_manifest(other, [Record(**{**r.__dict__, "audio": str(r.audio_path(manifest)), "image": str(r.image_path(manifest)),
                                     "speaker": "b" if i >= 2 else "a"}) for i, r in enumerate(recs)])

    def cfg(*extra):
        return run_config(tmp_path / "model", f"data.units={root / 'units'}", f"data.image_codebook={root / 'icb.safetensors'}",
                          f"data.tasks={json.dumps(TASKS)}", *extra, train=other, dev=other)

    s = setup(cfg('data.speakers={"t2s": ["b"]}'))
    size = {spec: b - a for spec, (a, b) in s.pools.items()}
    assert size["t2s"] == 2 and size["asr"] == 4 and size["speech_lm"] == 4
    assert [x.id for x, r in zip(s.dev_samples, s.dev) if r.task == "t2s"] == [recs[2].id, recs[3].id]
    with pytest.raises(ValueError, match=r"task t2s: no training record of speakers \['nobody'\]"):
        setup(cfg('data.speakers={"t2s": ["nobody"]}'))
    with pytest.raises(ValueError, match=r"data.speakers names tasks \['tts'\] that are not in data.tasks"):
        setup(cfg('data.speakers={"tts": ["a"]}'))


def test_t2s_rerank_keeps_the_candidate_the_models_asr_likes_best(multitask_model, mixed):
    from dmlm.decoding import DecodingOptions
    from dmlm.inference import asr_log_likelihood, encode_text, run_task, synthesize_units
    from dmlm.modeling import load_checkpoint

    root, manifest = mixed
    ck = load_checkpoint(multitask_model)
    recs = read_manifest(manifest)
    from dmlm.data.shards import TokenStore

    store = TokenStore(root / "units" / "mixed")
    units = [np.asarray(store.get(r.id)) for r in recs]
    texts = [encode_text(ck, r.text) for r in recs]
    # the overfit model's ASR: a recording's own units say its own text likelier than another's units do
    own = asr_log_likelihood(ck, units, texts)
    other = asr_log_likelihood(ck, units[1:] + units[:1], texts)
    assert all(a > b for a, b in zip(own, other)), (own, other)
    assert asr_log_likelihood(ck, [np.zeros(0, np.int64)], texts[:1]) == [float("-inf")]
    with pytest.raises(ValueError, match="texts"):
        asr_log_likelihood(ck, units, texts[:1])

    words = [r.text for r in recs]
    greedy = synthesize_units(ck, words)
    assert all(np.array_equal(a, b) for a, b in zip(synthesize_units(ck, words, opts=DecodingOptions(rerank=1)), greedy))
    opts = DecodingOptions(rerank=4, temperature=1.5, seed=1)
    best = synthesize_units(ck, words, opts=opts)
    assert all(len(u) for u in best)
    # greedy is one of the candidates, so the kept one scores at least as well under the model's ASR
    assert all(b >= g - 1e-4 for b, g in zip(asr_log_likelihood(ck, best, texts), asr_log_likelihood(ck, greedy, texts)))
    again = synthesize_units(ck, words, opts=opts)
    assert all(np.array_equal(a, b) for a, b in zip(again, best))  # seeded: reproducible

    with pytest.raises(ValueError, match="reranking is for t2s"):
        run_task(ck, "asr", [], DecodingOptions(rerank=4))
    with pytest.raises(ValueError, match="rerank"):
        DecodingOptions(rerank=-1)
    ck.meta["tasks"] = ["t2s"]
    with pytest.raises(ValueError, match="ASR task"):
        synthesize_units(ck, words[:1], opts=opts)
