"""The offline neural voice (Piper en_US-joe-medium) in corpora, and Whisper-normalized judging."""

from __future__ import annotations

import json
import os
import random

import numpy as np
import pytest

from dmlm.data.synth import HELDOUT_VOICE, NEURAL_VOICE, Voice, draw_voice, synthesize, synthesize_many
from dmlm.evaluation.judge import judge
from dmlm.metrics import error_rates
from dmlm.metrics.normalize import get_normalizer, normalize, whisper_english
from dmlm.util.errors import UserError

TEXT = "the small yellow sheep is behind a lamp"


def _neural(length_scale: float = 1.0) -> Voice:
    return Voice(NEURAL_VOICE, rate=0, pitch=0, length_scale=length_scale)


def test_neural_voice_speaks_16k_with_a_plausible_length():
    wav = synthesize(TEXT, _neural())
    assert wav.dtype == np.float32 and wav.ndim == 1
    seconds = len(wav) / 16_000
    assert 1.0 < seconds < 5.0, seconds  # 8 words
    assert 0.05 < np.abs(wav).max() <= 1.0
    slow = synthesize(TEXT, _neural(1.4))
    assert len(slow) > 1.2 * len(wav)  # length_scale slows it down


def test_unknown_neural_voice_is_an_error():
    with pytest.raises(ValueError, match="unknown neural voice"):
        synthesize(TEXT, Voice("piper:nobody", 0, 0))


def test_draw_voice_shares():
    r_plain, r_zero = random.Random(3), random.Random(3)
    plain = [draw_voice(r_plain) for _ in range(200)]
    zero = [draw_voice(r_zero, neural_share=0.0) for _ in range(200)]
    assert plain == zero  # share 0: the same draws as corpora made before the neural voice
    assert not any(v.neural for v in zero)
    r = random.Random(5)
    half = [draw_voice(r, neural_share=0.5) for _ in range(4000)]
    share = sum(v.neural for v in half) / len(half)
    assert 0.46 < share < 0.54, share
    neural = [v for v in half if v.neural]
    assert len({v.length_scale for v in neural}) > 100  # rate and noise are drawn per utterance
    assert all(0.85 <= v.length_scale <= 1.15 for v in neural)
    assert all(draw_voice(r, neural_share=1.0).neural for _ in range(50))
    assert all(draw_voice(r, heldout=True, neural_share=1.0).name == HELDOUT_VOICE for _ in range(20))


def test_synthesize_many_mixes_engines_in_job_order(tmp_path):
    jobs = [("a red car", _neural(), tmp_path / "a.wav"),
            ("a red car", Voice("en-us+m3", 170, 50), tmp_path / "b.wav"),
            ("the big green house is near the tree", _neural(), tmp_path / "c.wav")]
    durations = synthesize_many(jobs, workers=2)
    assert all(p.is_file() for _, _, p in jobs)
    assert durations[2] > durations[0]  # durations come back in job order, not engine order
    assert synthesize_many(jobs, workers=2) == durations  # resume: existing files are kept


def test_prepare_with_a_neural_share(tmp_path):
    from dmlm.data.manifest import read_manifest
    from dmlm.data.prepare import PrepareConfig, prepare

    cfg = PrepareConfig(n_train=30, n_dev=5, n_test=10, neural_share=0.5, images=False)
    manifests = prepare(cfg, tmp_path)
    train = read_manifest(manifests["train"])
    speakers = [r.speaker for r in train]
    assert NEURAL_VOICE in speakers and any(s != NEURAL_VOICE for s in speakers)
    test = read_manifest(manifests["test"])
    assert all(r.speaker == HELDOUT_VOICE for r in test if r.custom["heldout_voice"])
    neural = next(r for r in train if r.speaker == NEURAL_VOICE)
    assert neural.custom["voice"]["length_scale"] != 1.0 and neural.duration > 0.3
    with pytest.raises(ValueError, match="other settings"):
        prepare(PrepareConfig(n_train=30, n_dev=5, n_test=10, neural_share=0.25, images=False), tmp_path)
    with pytest.raises(ValueError, match="neural_share"):
        prepare(PrepareConfig(neural_share=1.5), tmp_path / "bad")
    assert not (tmp_path / "bad" / "prepare.json").exists()


def test_prepare_speaks_unpaired_sentences_for_the_vocoder(tmp_path):
    from dmlm.data.manifest import read_manifest
    from dmlm.data.prepare import PrepareConfig, prepare

    cfg = PrepareConfig(n_train=20, n_dev=4, n_test=6, n_unpaired=5, images=False)
    plain = prepare(cfg, tmp_path)
    assert "neural_extra" not in plain
    more = prepare(PrepareConfig(**{**cfg.__dict__, "neural_extra": 3}), tmp_path)  # added to a finished folder
    extra = read_manifest(more["neural_extra"])
    unpaired = read_manifest(more["unpaired"])
    assert [r.text for r in extra] == [r.text for r in unpaired[:3]]
    assert all(r.speaker == NEURAL_VOICE and r.custom["vocoder_only"] and r.duration > 0.3 for r in extra)
    assert all(r.audio_path(more["neural_extra"]).is_file() for r in extra)
    split_texts = {r.text for s in ("train", "dev", "test") for r in read_manifest(more[s])}
    assert not split_texts & {r.text for r in extra}  # never a sentence of any split
    assert read_manifest(plain["train"]) == read_manifest(more["train"])  # the splits are untouched
    assert read_manifest(prepare(PrepareConfig(**{**cfg.__dict__, "neural_extra": 3}), tmp_path)["neural_extra"]) == extra
    with pytest.raises(ValueError, match=r"neural_extra.*n_unpaired_images = 5\], got 6"):
        prepare(PrepareConfig(**{**cfg.__dict__, "neural_extra": 6}), tmp_path / "bad")


def test_a_folder_prepared_before_neural_share_existed_is_still_accepted(tmp_path):
    from dmlm.data.prepare import PrepareConfig, prepare

    cfg = PrepareConfig(n_train=30, n_dev=5, n_test=10, images=False)
    prepare(cfg, tmp_path)
    settings = json.loads((tmp_path / "prepare.json").read_text())
    del settings["neural_share"]
    (tmp_path / "prepare.json").write_text(json.dumps(settings))
    assert prepare(cfg, tmp_path)["train"].is_file()


def test_whisper_english_normalizer():
    assert whisper_english("there are twelve grey horses") == whisper_english("There are 12 gray horses.")
    assert whisper_english("There's one small cat") == whisper_english("there is one small cat")
    assert normalize("nine grey horses") != normalize("9 gray horses")  # the simple rule keeps spellings apart
    refs, hyps = ["nine grey horses are here"], ["9 gray horses are here."]
    assert error_rates(refs, hyps)["wer"] == pytest.approx(40.0)
    assert error_rates(refs, hyps, normalizer="whisper_english")["wer"] == 0.0
    with pytest.raises(ValueError, match="unknown text normalizer"):
        get_normalizer("nope")


class _Judge:
    def __init__(self, text: str, normalizer: str | None = None):
        self.text = text
        if normalizer:
            self.normalizer = normalizer

    def transcribe(self, wavs):
        return [self.text] * len(wavs)


def test_judge_scores_with_the_judges_normalizer():
    wavs, refs = [np.zeros(1600, np.float32)], ["eleven grey cats"]
    assert judge(wavs, refs, _Judge("11 gray cats"))["wer"] == pytest.approx(200 / 3)
    assert judge(wavs, refs, _Judge("11 gray cats", "whisper_english"))["wer"] == 0.0


@pytest.mark.slow
def test_whisper_hears_the_neural_voice():
    from dmlm.data import miniworld
    from dmlm.evaluation.judge import WhisperJudge

    sents = miniworld.generate_splits(20, 0, 0, seed=7)["train"]
    rng = random.Random(0)
    wavs = [synthesize(s.text, draw_voice(rng, neural_share=1.0)) for s in sents]
    res = judge(wavs, [s.text for s in sents], WhisperJudge("whisper-base"))
    assert res["wer"] < 15, res  # measured 4.5 % on 100 demo test sentences


def test_the_neural_voice_session_has_the_threads_asked_for_and_does_not_spin():
    from dmlm.data.synth import neural_voice

    opts = neural_voice(NEURAL_VOICE, 1).session.get_session_options()
    assert opts.intra_op_num_threads == 1 and opts.inter_op_num_threads == 1
    assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_available_cores_follows_the_affinity_mask():
    import os
    import subprocess
    import sys

    from dmlm.util.cores import available_cores

    assert available_cores() == len(os.sched_getaffinity(0))
    code = "import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); " \
           "from dmlm.util.cores import available_cores; print(available_cores())"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "1"


def test_neural_synthesis_workers_run_from_any_script_and_report_failures(tmp_path):
    """Workers are subprocesses: a caller without a `__main__` guard (here `python -c`) works, and a
    worker that cannot write its wav is a UserError naming the worker, with the other wavs kept."""
    import subprocess
    import sys

    code = ("from pathlib import Path; from dmlm.data.synth import NEURAL_VOICE, Voice, synthesize_many; "
            f"d = synthesize_many([(t, Voice(NEURAL_VOICE, 0, 0), Path({str(tmp_path)!r}) / f'{{i}}.wav') "
            "for i, t in enumerate(['a red car', 'a big dog', 'the blue cup'])], workers=2); print(len(d), min(d) > 0.3)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.split()[-2:] == ["3", "True"], out.stderr[-2000:]
    assert sorted(p.name for p in tmp_path.glob("*.wav")) == ["0.wav", "1.wav", "2.wav"]

    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    jobs = [("a red car", _neural(), tmp_path / "ok.wav"), ("a big dog", _neural(), blocker / "bad.wav")]
    with pytest.raises(UserError, match="worker process"):
        synthesize_many(jobs, workers=2)
    assert (tmp_path / "ok.wav").is_file()


def test_a_synthesis_worker_stops_when_its_parent_is_killed(tmp_path):
    """A SIGTERM to the process synthesizing stops its workers too, at their next job: a parent that
    is killed while a worker has a long job list leaves no worker speaking on."""
    import json
    import signal
    import subprocess
    import sys
    import time
    from dataclasses import asdict

    spec = tmp_path / "jobs.jsonl"
    spec.write_text("".join(json.dumps({"index": i, "text": "a red car is under the big tree", "voice": asdict(_neural()),
                                        "path": str(tmp_path / f"{i}.wav")}) + "\n" for i in range(400)))
    pid_file = tmp_path / "worker.pid"
    code = ("import subprocess, sys, time; "
            f"p = subprocess.Popen([sys.executable, '-m', 'dmlm.data.synth', {str(spec)!r}], stdout=subprocess.DEVNULL); "
            f"open({str(pid_file)!r}, 'w').write(str(p.pid)); time.sleep(600)")
    parent = subprocess.Popen([sys.executable, "-c", code])
    try:
        deadline = time.time() + 120
        while not list(tmp_path.glob("*.wav")) and time.time() < deadline:  # the worker is speaking
            time.sleep(0.2)
        assert list(tmp_path.glob("*.wav")), "the worker wrote no wav in 120 s"
        worker = int(pid_file.read_text())
        parent.send_signal(signal.SIGTERM)
        parent.wait(timeout=10)
        def running(pid: int) -> bool:  # an exited orphan may linger as a zombie until init reaps it
            try:
                return "\nState:\tZ" not in open(f"/proc/{pid}/status").read()
            except FileNotFoundError:
                return False

        for _ in range(100):  # it finishes the clip it is on, then sees it has been orphaned
            if not running(worker):
                break
            time.sleep(0.1)
        else:
            os.kill(worker, signal.SIGKILL)
            raise AssertionError("the worker kept synthesizing 10 s after its parent was killed")
        assert len(list(tmp_path.glob("*.wav"))) < 400
    finally:
        parent.kill()
