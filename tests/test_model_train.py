"""The whole model: overfit one batch and decode it back exactly; decoding strategies;
exact resume; checkpoints that plain `transformers` loads."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from dmlm.inference import transcribe_units
from dmlm.data.shards import TokenStore
from dmlm.decoding import DecodingOptions, generate
from dmlm.modeling import load_checkpoint
from dmlm.tasks import Sample, get_task
from dmlm.tokenizers.speech import CodebookMismatch
from dmlm.training.data_order import bucket_batches
from dmlm.training.train import train
from dmlm.util.schedule import warmup_cosine


@pytest.fixture(scope="module")
def ck(trained):
    return load_checkpoint(trained)


def _units(corpus, name: str) -> list[np.ndarray]:
    store = TokenStore(corpus.units / name)
    return [store[i] for i in range(len(store))]


def test_overfit_batch_decodes_back_exactly(ck, corpus):
    """4 utterances, 150 steps: greedy decoding returns every transcript exactly."""
    refs = corpus.texts(corpus.tiny)
    assert transcribe_units(ck, _units(corpus, "tiny")) == refs
    # the same through `generate`: exactly the transcript's token ids, without the close tag
    task = get_task("asr")
    prompts = [task.prompt(Sample(id=str(i), units=u), ck.vocab) for i, u in enumerate(_units(corpus, "tiny"))]
    outs = generate(ck.model, prompts, ck.vocab, "text")
    assert outs == [ck.tokenizer.encode(t, add_special_tokens=False) for t in refs]
    rows = [json.loads(line) for line in Path(f"{ck.path}.log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert losses[-1] < 0.2 * losses[0]


def test_generated_ids_stay_in_the_target_modality(ck, corpus):
    outs = generate(ck.model, [get_task("asr").prompt(Sample(id="x", units=u), ck.vocab)
                               for u in _units(corpus, "dev")], ck.vocab, "text", DecodingOptions(max_new_tokens=8))
    text_hi = ck.vocab.range("text")[1]
    for o in outs:
        assert len(o) <= 8
        assert all(0 <= t < text_hi and t not in (ck.vocab.bos_id, ck.vocab.eos_id) for t in o)


def test_batched_decoding_equals_one_at_a_time(ck, corpus):
    units = _units(corpus, "tiny") + _units(corpus, "dev")  # several lengths: left padding is exercised
    batched = transcribe_units(ck, units, opts=DecodingOptions(batch_size=8, max_new_tokens=12))
    single = transcribe_units(ck, units, opts=DecodingOptions(batch_size=1, max_new_tokens=12))
    assert batched == single
    assert batched[:4] == corpus.texts(corpus.tiny)


def test_beam_search_and_sampling_run(ck, corpus):
    units = _units(corpus, "tiny")
    beam = transcribe_units(ck, units, opts=DecodingOptions(strategy="beam", beam_size=3, max_new_tokens=12))
    assert beam == corpus.texts(corpus.tiny)
    s1 = transcribe_units(ck, units, opts=DecodingOptions(strategy="sample", seed=5, max_new_tokens=12))
    s2 = transcribe_units(ck, units, opts=DecodingOptions(strategy="sample", seed=5, max_new_tokens=12))
    assert s1 == s2 and len(s1) == 4
    with pytest.raises(ValueError, match="strategy"):
        DecodingOptions(strategy="viterbi")


def test_resume_gives_the_same_losses_and_weights(run_config, tmp_path):
    """Train 6 steps straight vs. stop after 4 (mid-epoch) and resume: identical."""
    common = ("train.steps=6", "train.batch_tokens=400", "train.grad_accum=2", "train.eval_every=3",
              "train.save_every=100", "train.warmup_steps=2")
    straight = train(run_config(tmp_path / "a" / "model", *common))
    cfg = run_config(tmp_path / "b" / "model", *common)
    train(cfg, stop_at=4)
    assert json.loads((tmp_path / "b" / "model" / "training_state" / "progress.json").read_text())["step"] == 4
    resumed = train(cfg, resume=True)

    def steps(out: Path) -> list[tuple]:
        rows = [json.loads(line) for line in Path(f"{out}.log.jsonl").read_text().splitlines()]
        return [(r["step"], r["loss"], r["lr"], r["grad_norm"], r["tokens"], r.get("dev_loss")) for r in rows if "loss" in r]

    a, b = steps(straight), steps(resumed)
    assert [r[0] for r in a] == [1, 2, 3, 4, 5, 6]
    assert a == b
    wa, wb = load_file(straight / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=0, msg=k)
    oa = torch.load(straight / "training_state" / "optimizer.pt", weights_only=True)
    ob = torch.load(resumed / "training_state" / "optimizer.pt", weights_only=True)
    for i in oa["state"]:
        torch.testing.assert_close(oa["state"][i]["exp_avg_sq"], ob["state"][i]["exp_avg_sq"], rtol=0, atol=0)


def test_checkpoint_loads_with_plain_transformers(trained, corpus):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(trained)
    tok = AutoTokenizer.from_pretrained(trained)
    rows = model.get_input_embeddings().weight.shape[0]
    assert len(tok) == rows == model.config.vocab_size
    assert rows % 64 == 0
    info = json.loads((trained / "dmlm.json").read_text())
    assert info["vocab"]["size"] == rows and info["tasks"] == ["asr"]
    assert info["vocab"]["fingerprints"]["speech"] == TokenStore(corpus.units / "tiny").fingerprint
    assert (trained / "codebooks" / "speech.safetensors").is_file()
    # the unit tokens are ordinary tokens of the saved tokenizer
    speech0 = info["vocab"]["ranges"]["speech"][0]
    assert tok.convert_tokens_to_ids("<|s_0|>") == speech0
    assert tok.convert_tokens_to_ids("<|asr|>") == info["vocab"]["special_ids"]["<|asr|>"]
    # a prompt written as text gives the same logits as the ids dmlm builds
    ck = load_checkpoint(trained)
    u = _units(corpus, "tiny")[0]
    ids = get_task("asr").prompt(Sample(id="x", units=u), ck.vocab)
    as_text = tok.decode(ids)
    assert tok.encode(as_text, add_special_tokens=False) == ids
    with torch.no_grad():
        torch.testing.assert_close(model(torch.tensor([ids])).logits, ck.model(torch.tensor([ids])).logits)


def test_checkpoint_with_another_codebook_is_refused(trained, tmp_path):
    import shutil

    bad = tmp_path / "model"
    shutil.copytree(trained, bad)
    info = json.loads((bad / "dmlm.json").read_text())
    info["vocab"]["fingerprints"]["speech"] = "0000000000000000"
    (bad / "dmlm.json").write_text(json.dumps(info))
    (bad / "checksums.json").unlink()  # unverified, as an older dmlm wrote it (else: a checksum mismatch)
    with pytest.raises(CodebookMismatch, match="checkpoint"):
        load_checkpoint(bad).codebook("speech")


def test_bucket_batches_respect_the_budget_and_are_reproducible():
    lengths = np.random.default_rng(0).integers(5, 60, 200)
    b1 = bucket_batches(lengths, 300, seed=1, epoch=0)
    assert b1 == bucket_batches(lengths, 300, seed=1, epoch=0)
    assert b1 != bucket_batches(lengths, 300, seed=1, epoch=1)
    assert sorted(i for b in b1 for i in b) == list(range(200))  # every example once per epoch
    assert all(max(lengths[i] for i in b) * len(b) <= 300 for b in b1)


def test_lr_schedule():
    assert warmup_cosine(0.0, 0.1, 0.05) == pytest.approx(1e-3)
    assert warmup_cosine(0.05, 0.1, 0.05) == pytest.approx(0.5)
    assert warmup_cosine(0.1, 0.1, 0.05) == pytest.approx(1.0)
    assert warmup_cosine(1.0, 0.1, 0.05) == pytest.approx(0.05)
    xs = [warmup_cosine(x / 100, 0.1, 0.05) for x in range(10, 101)]
    assert all(a >= b for a, b in zip(xs, xs[1:]))


class _Exploit:
    """Unpickling this runs code: it writes a marker file."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "pwned"))


def test_rng_state_round_trips_as_json():
    import random

    import numpy as np

    from dmlm.training.state import rng_state, set_rng_state

    torch.manual_seed(3), np.random.seed(4), random.seed(5)
    saved = json.loads(json.dumps(rng_state()))  # plain JSON values only
    a = (torch.rand(3), np.random.rand(3), random.random(), np.random.randn())
    set_rng_state(saved)
    b = (torch.rand(3), np.random.rand(3), random.random(), np.random.randn())
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2:] == b[2:]


def test_a_crafted_rng_pickle_is_refused_not_run(run_config, tmp_path):
    """A state folder whose RNG state is a pickle (as older versions wrote) is never unpickled on --resume."""
    from dmlm.training.state import RNG_FILE
    from dmlm.util.errors import UserError

    cfg = run_config(tmp_path / "model", "train.steps=4", "train.batch_tokens=400", "train.save_every=100")
    train(cfg, stop_at=2)
    state = tmp_path / "model" / "training_state"
    (tmp_path / "model" / "checksums.json").unlink()  # as an older dmlm wrote it: no checksums to catch the edit
    assert (state / RNG_FILE).is_file() and not (state / "rng.pt").exists()
    (state / RNG_FILE).unlink()
    marker = tmp_path / "marker"
    torch.save({"torch": _Exploit(str(marker))}, state / "rng.pt")
    with pytest.raises(UserError, match="rng.pt: training state in a pickle file"):
        train(cfg, resume=True)
    assert not marker.exists()
    (state / RNG_FILE).write_text('{"torch": [1, 2]}')
    (state / "rng.pt").unlink()
    with pytest.raises(UserError, match="not a valid RNG state"):
        train(cfg, resume=True)


def test_training_into_a_trained_folder_needs_resume_or_overwrite(run_config, tmp_path, capsys):
    from dmlm.util.errors import UserError

    cfg = run_config(tmp_path / "model", "train.steps=2", "train.batch_tokens=400", "train.save_every=100")
    out = train(cfg)
    before = (out / "model.safetensors").stat().st_mtime_ns
    log = Path(f"{out}.log.jsonl").read_text()
    with pytest.raises(UserError, match="--resume to continue it or --overwrite"):
        train(cfg)
    assert (out / "model.safetensors").stat().st_mtime_ns == before and Path(f"{out}.log.jsonl").read_text() == log
    assert train(cfg, resume=True) == out  # finished: nothing to do
    assert train(cfg, overwrite=True) == out and (out / "model.safetensors").stat().st_mtime_ns != before
