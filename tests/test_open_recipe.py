"""The open-vocabulary recipe (configs/open.yaml, `make demo OPEN=1`) and its report (dmlm/recipes/open_report.py).

End to end on a tiny stand-in: a fake bible and held-out domain (as tests/test_open_data.py fakes them), a tiny
random byte-level Llama standing in for SmolLM2-135M (`model.init=pretrained`, LoRA, staged, trimmed vocabulary,
its start check waived), a 16-unit mel codebook, a barely trained vocoder and a scratch reference model. Whisper
is replaced by a stub that hears every recording by its samples (exact, except one word dropped in the held-out
voice) so the side-by-side column is checked against numbers computed here; the real Whisper-base path is tested
in tests/test_open_data.py (`slow`).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from dmlm.data import bible, heldout_domain
from dmlm.data.manifest import HELDOUT_VOICE, is_heldout_voice, read_manifest
from dmlm.data.synth import NEURAL_VOICE
from dmlm.metrics import error_rates
from dmlm.util.config import ConfigError
from dmlm.util.errors import UserError
from dmlm.util.io import read_jsonl

_WORDS = "one two three four five six seven eight nine ten".split()
_NAMES = ("moses", "david", "ruth", "paul")


def _bible_rows() -> list[dict]:
    rows = []
    for b, book in enumerate(("Gen", "Exod", "Matt", "John")):
        for c in range(1, 7):
            for v in range(1, 5):
                text = f"{_NAMES[b]} went to chapter {_WORDS[c]} and verse {_WORDS[v]}"
                rows.append({"book": book, "chapter": c, "verse": v, "text": text, "en": text,
                             "es": f"{_NAMES[b]} fue al capitulo {c} versiculo {v}"})
    return rows


def _domain_rows() -> list[dict]:
    texts = ["a decent and customary mental attitude", "the vice of idleness is a leisure",
             "money is a blessing of no advantage", "marriage is a household of a master",
             "a lawyer is skilled in circumvention", "the debt is an ingenious substitute"]
    return [{"id": f"devil-t-{i}", "entry": "t", "text": t, "original": t} for i, t in enumerate(texts)]


def _byte_bpe(texts: list[str]):
    """A byte-level BPE like SmolLM2's (any text encodes exactly, so the trimmed vocabulary can read the domain)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from dmlm.tokenizers.text import TextTokenizer

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=400, special_tokens=["<s>", "</s>"], show_progress=False,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return TextTokenizer(PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>"))


@pytest.fixture(scope="module")
def stand_in_llm(tmp_path_factory) -> Path:
    """A tiny random Llama with a byte-level BPE, in a folder `model.llm` reads (as tests/test_pretrained_start.py)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    path = tmp_path_factory.mktemp("llm") / "lm"
    texts = [r["text"] for r in _bible_rows()] + [r["es"] for r in _bible_rows()] + [r["text"] for r in _domain_rows()]
    tok = _byte_bpe(texts)
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                 num_key_value_heads=2, intermediate_size=64, tie_word_embeddings=True,
                                 bos_token_id=tok.bos_id, eos_token_id=tok.eos_id)).save_pretrained(path)
    tok.save(path)
    return path


class _StubWhisper:
    """Hears each prepared recording by its samples: its text, one word short in the held-out voice; anything else
    (synthesized speech) as silence. Counts the clips it was asked to transcribe."""

    model_name, engine, normalizer = "stub-whisper", "stub", "whisper_english"
    heard: dict[str, str] = {}
    calls = 0

    def __init__(self, *args, **kwargs):
        pass

    @staticmethod
    def key(wav: np.ndarray) -> str:
        return hashlib.sha1(np.ascontiguousarray(wav, dtype=np.float32).tobytes()).hexdigest()

    @classmethod
    def learn(cls, data: Path) -> None:
        from dmlm.util.audio import load_audio

        for manifest in data.glob("*.jsonl"):
            for r in read_manifest(manifest):
                if r.audio:
                    cls.heard[cls.key(load_audio(r.audio_path(manifest)))] = _heard(r.text, is_heldout_voice(r))

    def transcribe(self, wavs):
        type(self).calls += len(wavs)
        return [self.heard.get(self.key(w), "") for w in wavs]


def _heard(text: str, held: bool) -> str:
    return text.rsplit(" ", 1)[0] if held else text


def _tiny_open(tmp_path: Path, llm: Path, *extra: str):
    from dmlm.recipes.demo import load_demo_config

    return load_demo_config("configs/open.yaml", [
        f"out={tmp_path / 'open'}", "prepare.n_train=14", "prepare.n_dev=4", "prepare.n_test=4", "prepare.n_test_domain=3",
        "prepare.n_unpaired=20", "prepare.seed=1", "codebook.backend=mel", "codebook.k=16", "codebook.pooling=1",
        "codebook_fit_utts=20", "processes=1", f"run.model.llm={llm}", "run.model.lora_rank=4", "run.model.lora_alpha=8",
        "run.train.allow_lossy_start=true", "run.train.compile=false", "run.train.steps=4", "run.train.batch_tokens=1500",
        "run.train.stages=[{steps: 1, train: new_rows}, {train: adapters}]", "run.train.eval_every=2",
        "run.train.save_every=2", "run.train.warmup_steps=1", "run.train.log_every=1", "run.train.lr=0.01",
        "run.data.bpe_vocab_size=200", "scratch.minutes=1", "scratch.steps=3", "scratch.batch_tokens=1500",
        "scratch.model.hidden_size=32", "scratch.model.layers=1", "scratch.model.heads=2",
        "scratch.model.intermediate_size=64", "vocoder_minutes=0.01", "vocoder.dim=32", "vocoder.frame_dim=32",
        "vocoder.unit_layers=1", "vocoder.duration_dim=16", "vocoder.batch_size=2", "t2s_eval=2", "t2s_decoding.rerank=1",
        "t2s_decoding.max_new_tokens=24", "resynthesis_voice_clips=1", *extra,
    ])


@pytest.fixture
def fakes(tmp_path, monkeypatch):
    """The fake corpora and the stub Whisper (in the side-by-side and as the T2S judge)."""
    from dmlm.evaluation import judge, whisper_baseline

    monkeypatch.setenv("DMLM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(bible, "extract", _bible_rows)
    monkeypatch.setattr(heldout_domain, "extract", _domain_rows)
    monkeypatch.setattr(whisper_baseline, "WhisperJudge", _StubWhisper)
    monkeypatch.setattr(judge, "WhisperJudge", _StubWhisper)
    _StubWhisper.heard, _StubWhisper.calls = {}, 0


def _expected_sets(data: Path) -> dict[str, list]:
    test, domain = read_manifest(data / "test.jsonl"), read_manifest(data / "test_domain.jsonl")
    return {"chapters": [r for r in test if not is_heldout_voice(r)], HELDOUT_VOICE: [r for r in test if is_heldout_voice(r)],
            "neural_voice": [r for r in test if not is_heldout_voice(r) and r.speaker == NEURAL_VOICE],
            "domain": [r for r in domain if not is_heldout_voice(r)],
            f"domain_{HELDOUT_VOICE}": [r for r in domain if is_heldout_voice(r)]}


def test_tiny_open_recipe_end_to_end(tmp_path, stand_in_llm, fakes, monkeypatch):
    from dmlm.data.shards import TokenStore
    from dmlm.recipes import demo
    from dmlm.recipes.run_folder import RunFolder

    original = demo.evaluate_demo

    def learn_then_evaluate(cfg, folder, *args):  # the stub learns the recordings once they exist
        _StubWhisper.learn(folder.data)
        return original(cfg, folder, *args)

    monkeypatch.setattr(demo, "evaluate_demo", learn_then_evaluate)
    rep = demo.run_demo(_tiny_open(tmp_path, stand_in_llm))
    out = tmp_path / "open"
    folder = RunFolder(out)
    assert len(TokenStore(out / "units" / "test_domain")) == 6  # the held-out domain is tokenized like test
    assert len(read_manifest(folder.data / "unpaired.jsonl")) == 20  # text_lm's unpaired verses
    assert (out / "model_scratch" / "model.safetensors").is_file() and set(rep["train"]) == {"mixture", "scratch"}

    expected = _expected_sets(folder.data)
    assert expected["neural_voice"], "the seed must give a neural-voice test clip"
    sets = rep["test_sets"]
    assert set(sets) == set(expected)
    dmlm_test = {r["id"]: r for r in read_jsonl(folder.eval_hyps("asr"))}
    for name, records in expected.items():
        row = sets[name]
        assert row["utterances"] == len(records)
        for system in ("dmlm", "whisper_base", "scratch"):
            assert {"wer", "cer", "ci95", "whisper_english"} <= set(row[system])
            assert row[system]["ci95"][0] <= row[system]["wer"] <= row[system]["ci95"][1]
        refs = [r.text for r in records]
        held = is_heldout_voice(records[0])
        assert row["whisper_base"]["wer"] == pytest.approx(error_rates(refs, [_heard(t, held) for t in refs])["wer"])
        assert (row["whisper_base"]["wer"] > 0) == held
        if row["manifest"] == "test":  # the mixture's column is its own ASR evaluation of those clips
            assert row["dmlm"]["wer"] == pytest.approx(error_rates(refs, [dmlm_test[r.id]["hyp"] for r in records])["wer"])
        assert row["dmlm_vs_whisper_base"]["delta"] == pytest.approx(row["dmlm"]["wer"] - row["whisper_base"]["wer"])
    assert {t["test_set"] for t in rep["targets"]} == set(expected) and all(isinstance(t["met"], bool) for t in rep["targets"])
    assert rep["s2tt"]["spec"] == "s2tt:es" and rep["s2tt"]["whisper_base"] is None
    assert {"bleu", "chrf", "ci95"} <= set(rep["s2tt"]["dmlm"]) and {"bleu", "chrf"} <= set(rep["s2tt"]["scratch"])
    assert rep["t2s"]["judge"] == "whisper-base" and rep["t2s"]["utterances"] >= 1 and rep["t2s"]["wer"] is not None
    from dmlm.training.state import read_progress

    for key, model in (("train_minutes", "model"), ("scratch_train_minutes", "model_scratch")):  # the budget's clock
        assert rep[key] == round(read_progress(out / model).elapsed / 60, 2) is not None
    assert "open_report" in rep["stages_seconds"] and "train_scratch" in rep["stages_seconds"]
    assert json.loads(folder.report_json.read_text())["test_sets"] == sets
    md = folder.report_md.read_text()
    assert "## Open vocabulary: every test set beside Whisper-base" in md and "| scratch WER | scratch CER |" in md
    assert f"| {HELDOUT_VOICE} | {len(expected[HELDOUT_VOICE])} |" in md and "Targets (issue 30)" in md

    # `dmlm report RUN --open` publishes docs/open/report.{md,json}; the results page is left alone
    from dmlm.cli import main

    docs = tmp_path / "docs_open"
    assert main(["report", str(out), "--open", str(docs), "--results", str(tmp_path / "results.md")]) == 0
    published = json.loads((docs / "report.json").read_text())
    assert published["test_sets"] == sets and published["train_minutes"] == rep["train_minutes"]
    assert {"machine", "train", "all_invocations", "config"} <= set(published)
    page = (docs / "report.md").read_text()
    assert f"dmlm report {out} --open" in page and "| chapters |" in page and not (tmp_path / "results.md").exists()

    # a re-run resumes: nothing trained again, Whisper not run again, the same report
    calls = _StubWhisper.calls
    again = demo.run_demo(_tiny_open(tmp_path, stand_in_llm))
    assert again["test_sets"] == sets and _StubWhisper.calls == calls


def test_score_test_set_pairs_the_same_clips():
    from dmlm.recipes.open_report import score_test_set

    refs = ["the red cat runs", "a big dog sees", "the dog likes it"]
    dmlm = [{"id": f"u{i}", "ref": r, "hyp": h} for i, (r, h) in enumerate(zip(refs, ["the red cat", "a big dog sees",
                                                                                       "the cat likes it"]))]
    whisper = [{"id": f"u{i}", "ref": r, "hyp": r} for i, r in reversed(list(enumerate(refs)))]  # another order: paired by id
    row = score_test_set({"dmlm": dmlm, "whisper_base": whisper}, draws=200)
    assert row["utterances"] == 3 and row["whisper_base"]["wer"] == 0.0
    assert row["dmlm"]["wer"] == pytest.approx(error_rates(refs, [r["hyp"] for r in dmlm])["wer"]) == pytest.approx(200 / 12)
    assert row["dmlm_vs_whisper_base"]["delta"] == pytest.approx(row["dmlm"]["wer"])
    assert row["dmlm"]["whisper_english"]["wer"] == pytest.approx(200 / 12)
    with pytest.raises(UserError, match="other clips"):
        score_test_set({"dmlm": dmlm, "whisper_base": whisper[:2]})


def test_targets_are_checked_against_whisper_base():
    from dmlm.recipes.open_report import check_targets

    def row(d, w):
        return {"dmlm": {"wer": d}, "whisper_base": {"wer": w}}

    got = {t["test_set"]: t["met"] for t in check_targets(
        {"chapters": row(12.0, 14.0), HELDOUT_VOICE: row(26.0, 30.0), "neural_voice": row(9.0, 5.0),
         "domain": row(19.0, 10.0), f"domain_{HELDOUT_VOICE}": row(21.0, 10.0)})}
    assert got == {"chapters": True, HELDOUT_VOICE: False, "neural_voice": False, "domain": True,
                   f"domain_{HELDOUT_VOICE}": False}  # 26 % is below Whisper's 30 but not below 25 %


def test_open_config_is_the_issues_recipe_and_the_demo_is_unchanged():
    from dmlm.recipes.demo import load_demo_config

    cfg = load_demo_config("configs/open.yaml", [])
    p, m, t = cfg.prepare, cfg.run.model, cfg.run.train
    assert cfg.open_report and p.corpus == "bible" and p.n_test_domain > 0 and p.max_words > 0 and p.neural_share > 0
    assert (m.init, m.llm, m.keep_layers) == ("pretrained", "smollm2-135m", 0)  # SmolLM2-135M at full depth
    assert cfg.run.data.tasks == ["asr", "s2tt:es", "t2s", "text_lm"]
    assert p.n_unpaired > 0 and cfg.run.data.unpaired_only == ["text_lm"]  # text_lm reads unpaired verses only
    assert cfg.run.data.speakers == {"t2s": [NEURAL_VOICE]} and cfg.vocoder.speakers == [NEURAL_VOICE]
    assert t.max_minutes == 180 and cfg.scratch.minutes == t.max_minutes  # the reference trains the same minutes
    assert cfg.codebook.backend == "whisper" and cfg.codebook.model == "whisper-base"
    demo = load_demo_config("configs/demo.yaml", [])
    assert not demo.open_report and demo.scratch.minutes == 0


@pytest.mark.parametrize("overrides, message", [
    (["scratch.minutes=5"], "scratch.minutes: the from-scratch reference is scored by the open report only"),
    (["open_report=true", "scratch.minutes=-1"], "scratch.minutes: a training budget >= 0"),
    (["open_report=true", "scratch.model.init=pretrained"], "scratch.model.init"),
    (["open_report=true", "run.data.tasks=[t2s, text_lm]", "run.data.weights=[]"], "no speech recognition task"),
])
def test_open_settings_are_refused_when_the_config_loads(tmp_path, overrides, message):
    from dmlm.recipes.demo import load_demo_config

    with pytest.raises(ConfigError, match=message):
        load_demo_config(None, [f"out={tmp_path / 'x'}", *overrides])
    assert not (tmp_path / "x").exists()


def test_publish_refuses_a_run_that_is_not_open(tmp_path):
    from dmlm.recipes.open_report import publish

    with pytest.raises(UserError, match="no report.json"):
        publish(tmp_path, tmp_path / "docs")
    (tmp_path / "report.json").write_text(json.dumps({"tasks": {}}))
    with pytest.raises(UserError, match="not an open-vocabulary run"):
        publish(tmp_path, tmp_path / "docs")


@pytest.mark.skipif(shutil.which("make") is None, reason="no make")
def test_make_demo_open_runs_the_open_config():
    """`make demo OPEN=1` converts SmolLM2-135M too and runs configs/open.yaml; `make demo` is unchanged."""
    root = Path(__file__).resolve().parents[1]

    def commands(*args: str) -> list[str]:
        out = subprocess.run(["make", "-n", "-B", "demo", *args], cwd=root, capture_output=True, text=True, check=True)
        return [line.strip() for line in out.stdout.splitlines() if "bin/dmlm " in line]

    assert commands() == [".venv/bin/dmlm assets whisper-base", ".venv/bin/dmlm demo configs/demo.yaml"]
    assert commands("OPEN=1", "OUT=/tmp/open-run") == [".venv/bin/dmlm assets whisper-base smollm2-135m",
                                                       ".venv/bin/dmlm demo configs/open.yaml out=/tmp/open-run"]
    assert commands("MULTI=1") == [".venv/bin/dmlm assets whisper-base", ".venv/bin/dmlm demo configs/multilingual.yaml"]
    assert commands("QUICK=1")[-1] == ".venv/bin/dmlm demo configs/demo-quick.yaml"
