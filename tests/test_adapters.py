"""The whole LLM, cheaply: LoRA adapters (peft), staged training and per-row learning rates.

A tiny random Llama saved with a BPE stands in for the pretrained LLM (`model.init=pretrained`;
it knows nothing, so its start check is waived with `train.allow_lossy_start`): an adapter run
saves a plain model that `transformers` and `dmlm.load` read with the trained model's logits,
resumes bitwise (across a stage boundary too), and each stage trains exactly what it says.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dmlm.modeling import ModelConfig, build_model
from dmlm.modeling.adapters import adapter_state, has_adapters, merged
from dmlm.tokenizers.text import TextTokenizer
from dmlm.training.loop import accelerator, prepare, save, start_or_resume, train_step
from dmlm.training.setup import setup
from dmlm.training.train import train
from dmlm.util.config import ConfigError
from dmlm.util.errors import UserError
from dmlm.vocab import Vocab

LORA = ("model.adapter=lora", "model.lora_rank=4", "model.lora_alpha=8")


def _save_llm(path: Path, texts: list[str], tie: bool) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = TextTokenizer.train_bpe(texts, vocab_size=120)
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=tok.vocab_size, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                 num_key_value_heads=2, intermediate_size=128, tie_word_embeddings=tie,
                                 bos_token_id=tok.bos_id, eos_token_id=tok.eos_id)).save_pretrained(path)
    tok.save(path)


@pytest.fixture(scope="module")
def llms(tmp_path_factory, corpus) -> dict[bool, Path]:
    """tied -> folder of a stand-in LLM (tied embeddings, or an untied output layer)."""
    root = tmp_path_factory.mktemp("llms")
    texts = corpus.texts(corpus.train) + ["a dog and a cat in the park", "the big red ball runs"]
    for tie in (True, False):
        _save_llm(root / f"tie{tie}", texts, tie)
    return {tie: root / f"tie{tie}" for tie in (True, False)}


def _config(run_config, out: Path, llm: Path, *more: str):
    return run_config(out, "model.init=pretrained", f"model.llm={llm}", "train.allow_lossy_start=true",
                      "train.batch_tokens=400", "train.warmup_steps=1", "train.lr=1e-2", "train.save_every=100",
                      "train.eval_every=3", *more)


def _log(out: Path) -> list[tuple]:
    rows = [json.loads(line) for line in Path(f"{out}.log.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"], r["lr"], r["grad_norm"], r.get("dev_loss"), r.get("stage"))
            for r in rows if "loss" in r]


def _same_files(a: Path, b: Path) -> None:
    wa, wb = load_file(a), load_file(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=0, msg=k)


# -- adapters: train, save merged, load anywhere -------------------------------------------------

def test_lora_run_saves_a_plain_model_with_the_trained_models_logits(llms, run_config, tmp_path):
    import dmlm
    from transformers import AutoModelForCausalLM

    cfg = _config(run_config, tmp_path / "m", llms[True], *LORA, "train.steps=3")
    S, acc = setup(cfg), accelerator(cfg)
    r = prepare(cfg, S, acc, *start_or_resume(cfg, S, acc, resume=False))
    for _ in range(3):
        train_step(r)
    save(r)
    model = acc.unwrap_model(r.model, keep_fp32_wrapper=False).eval()  # in fp32, as transformers runs it
    assert has_adapters(model)  # training goes on with the unmerged model
    saved = load_file(tmp_path / "m" / "model.safetensors")
    assert not [k for k in saved if "lora_" in k or "base_layer" in k]  # a plain Llama's weights
    ids = torch.tensor([S.train[0].ids])
    with torch.no_grad():
        want = model(input_ids=ids).logits
        plain = AutoModelForCausalLM.from_pretrained(tmp_path / "m")(input_ids=ids).logits
        ours = dmlm.load(tmp_path / "m").model(input_ids=ids).logits
    torch.testing.assert_close(plain, want, rtol=0, atol=1e-5)
    torch.testing.assert_close(ours, want, rtol=0, atol=1e-5)
    # the adapters trained, the body under them did not, the embedding rows did
    state = adapter_state(model)
    assert any(float(v.abs().max()) > 0 for k, v in state.items() if "lora_B" in k)
    llm = load_file(llms[True] / "model.safetensors")
    base = {k.replace(".base_layer", ""): v for k, v in state.items() if "base_layer" in k}
    assert base and all(torch.equal(v, llm[k]) for k, v in base.items())
    assert torch.equal(saved["model.norm.weight"], llm["model.norm.weight"])
    assert not torch.equal(saved["model.embed_tokens.weight"][: S.vocab.text_size], llm["model.embed_tokens.weight"])
    train_step(r)  # and training goes on after a save


@pytest.mark.parametrize("variant", ["lora", "staged"])
def test_resume_with_adapters_is_bitwise(llms, run_config, tmp_path, variant):
    """6 steps straight vs. 2, then resume: the same losses, weights, adapters and optimizer state; `staged`
    crosses its stage boundary (step 3) after the resume, with the new rows at 10x the rate."""
    more = {"lora": (*LORA, "train.grad_accum=2"),
            "staged": (*LORA, "train.stages=[{steps: 3, train: new_rows}, {train: adapters}]",
                       "train.lr_new_rows=10", "train.lr_text_rows=0.5")}[variant]
    straight = train(_config(run_config, tmp_path / "a" / "m", llms[False], "train.steps=6", *more))
    cfg = _config(run_config, tmp_path / "b" / "m", llms[False], "train.steps=6", *more)
    train(cfg, stop_at=2)
    assert (tmp_path / "b" / "m" / "training_state" / "adapters.safetensors").is_file()
    resumed = train(cfg, resume=True)
    a, b = _log(straight), _log(resumed)
    assert [r[0] for r in a] == [1, 2, 3, 4, 5, 6] and a == b
    if variant == "staged":
        assert [r[-1] for r in a] == [1, 1, 1, 2, 2, 2]
    _same_files(straight / "model.safetensors", resumed / "model.safetensors")
    state = Path("training_state") / "adapters.safetensors"
    _same_files(straight / state, resumed / state)
    oa = torch.load(straight / "training_state" / "optimizer.pt", weights_only=True)
    ob = torch.load(resumed / "training_state" / "optimizer.pt", weights_only=True)
    assert oa["state"].keys() == ob["state"].keys()
    for i in oa["state"]:
        torch.testing.assert_close(oa["state"][i]["exp_avg_sq"], ob["state"][i]["exp_avg_sq"], rtol=0, atol=0)


def test_resume_refuses_a_config_that_disagrees_on_adapters(llms, run_config, tmp_path):
    train(_config(run_config, tmp_path / "m", llms[True], *LORA, "train.steps=4"), stop_at=1)
    with pytest.raises(UserError, match="trained with adapters but the config has model.adapter=none"):
        train(_config(run_config, tmp_path / "m", llms[True], "train.steps=4"), resume=True)


# -- staged training: what each stage trains ----------------------------------------------------

def test_stages_train_the_new_rows_then_the_adapters(llms, run_config, tmp_path):
    """Untied head: after the new_rows stage only rows >= text_size of the embedding and the head moved; after the
    adapters stage the adapters and every embedding row moved too, and the body under the adapters never did."""
    cfg = _config(run_config, tmp_path / "m", llms[False], *LORA, "train.steps=4",
                  "train.stages=[{steps: 2, train: new_rows}, {train: adapters}]")
    S = setup(cfg)
    start = build_model(cfg.model, S.vocab, seed=cfg.train.seed, text_rows=S.text.source_ids)
    start_base, start_all = adapter_state(start), merged(start).state_dict()
    text = S.vocab.text_size
    out = train(cfg, stop_at=2)
    after1, adapters1 = load_file(out / "model.safetensors"), load_file(out / "training_state" / "adapters.safetensors")
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        assert torch.equal(after1[name][:text], start_all[name][:text]), name  # text rows frozen
        assert not torch.equal(after1[name][text:], start_all[name][text:]), name  # new rows trained
    assert all(torch.equal(v, start_base[k]) for k, v in adapters1.items())  # adapters (and base) untouched
    assert all(torch.equal(after1[k], start_all[k]) for k in after1 if "embed" not in k and "lm_head" not in k)
    train(cfg, resume=True)
    after2, adapters2 = load_file(out / "model.safetensors"), load_file(out / "training_state" / "adapters.safetensors")
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        assert not torch.equal(after2[name][:text], start_all[name][:text]), name
    assert any(not torch.equal(v, start_base[k]) for k, v in adapters2.items() if "lora_B" in k)
    assert all(torch.equal(v, start_base[k]) for k, v in adapters2.items() if "base_layer" in k)
    assert torch.equal(after2["model.norm.weight"], start_all["model.norm.weight"])


def _tiny(tie: bool = True):
    from dmlm.training.config import RunConfig
    from dmlm.util.config import apply_overrides

    cfg = apply_overrides(RunConfig(), ["model.hidden_size=32", "model.layers=1", "model.heads=2",
                                        "model.intermediate_size=64", f"model.tie_embeddings={tie}"])
    vocab = Vocab(text_size=40, speech_size=16)
    return cfg, vocab, build_model(cfg.model, vocab, seed=0)


def _one_step(cfg, vocab, model, processes: int = 1) -> dict[str, torch.Tensor]:
    """One AdamW step of `Trainable` on a fixed batch; returns the weights after it."""
    from dmlm.training.trainable import Trainable

    t = Trainable.of(cfg, model, vocab.text_size, processes)
    opt = torch.optim.AdamW([p for _, p in t.optimized()], lr=1e-2, weight_decay=0.1)
    t.enter(0)
    ids = torch.arange(60).reshape(2, 30) % vocab.size
    model(input_ids=ids, labels=ids).loss.backward()
    held = t.before_update()
    opt.step()
    t.after_update(held)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("processes", [1, 2])
def test_new_rows_stage_changes_only_the_new_rows_in_one_process_and_under_ddp(processes):
    """`processes=2` is the DDP path (every weight keeps requires_grad, frozen gradients dropped): the same step."""
    from dmlm.util.config import apply_overrides

    cfg, vocab, model = _tiny(tie=False)
    cfg = apply_overrides(cfg, ["train.stages=[{steps: 1, train: new_rows}, {train: all}]", "train.steps=5"])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    after = _one_step(cfg, vocab, model, processes)
    grads = {n for n, p in model.named_parameters() if p.grad is not None and bool(p.grad.any())}
    assert grads == {"model.embed_tokens.weight", "lm_head.weight"}
    for k in before:
        if k in ("model.embed_tokens.weight", "lm_head.weight"):
            assert torch.equal(after[k][: vocab.text_size], before[k][: vocab.text_size])
            assert not torch.equal(after[k][vocab.text_size :], before[k][vocab.text_size :])
        else:
            assert torch.equal(after[k], before[k]), k
    _, _, ref = _tiny(tie=False)
    other = _one_step(cfg, vocab, ref, 3 - processes)
    assert all(torch.equal(v, other[k]) for k, v in after.items())


def test_lr_new_rows_scales_the_new_rows_update_and_zero_text_rate_holds_text_rows():
    from dmlm.util.config import apply_overrides

    cfg, vocab, model = _tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    plain = _one_step(cfg, vocab, model)
    _, _, model = _tiny()
    fast = _one_step(apply_overrides(cfg, ["train.lr_new_rows=10", "train.lr_text_rows=0"]), vocab, model)
    emb, t = "model.embed_tokens.weight", vocab.text_size
    step_plain, step_fast = plain[emb] - before[emb], fast[emb] - before[emb]
    torch.testing.assert_close(step_fast[t:], 10 * step_plain[t:], rtol=1e-4, atol=1e-7)
    assert bool(step_plain[t:].abs().max() > 0)
    assert torch.equal(fast[emb][:t], before[emb][:t])
    for k in before:  # the body trains at train.lr either way
        if k != emb and k != "lm_head.weight":
            assert torch.equal(fast[k], plain[k]), k


# -- config --------------------------------------------------------------------------------------

@pytest.mark.parametrize("overrides, match", [
    (["train.stages=[{steps: 2, train: adapters}, {train: all}]"], "needs model.adapter=lora"),
    ([*LORA, "train.stages=[{steps: 2, train: new_rows}, {train: all}]"], "body stays frozen"),
    (["train.stages=[{steps: 2, train: new_rows}, {steps: 3, train: all}]"], "leave its steps 0"),
    (["train.stages=[{train: new_rows}, {train: all}]"], "needs steps > 0"),
    (["train.stages=[{steps: 30, train: new_rows}, {train: all}]"], "would never run"),
    (["train.stages=[{train: bodies}]"], "expected one of new_rows"),
    (["train.lr_new_rows=0"], "lr_new_rows must be > 0"),
    (["train.lr_text_rows=-1"], "lr_text_rows >= 0"),
])
def test_bad_schedules_are_refused_by_key(run_config, tmp_path, overrides, match):
    cfg = run_config(tmp_path / "m", *overrides)
    with pytest.raises(ConfigError, match=match):
        cfg.validate()


def test_bad_adapter_settings_are_refused(llms):
    vocab = Vocab(text_size=120, speech_size=16)
    for cfg, match in ((ModelConfig(adapter="dora"), "none or lora"),
                       (ModelConfig(adapter="lora", lora_rank=0), "lora_rank >= 1"),
                       (ModelConfig(init="pretrained", llm=str(llms[True]), adapter="lora", lora_targets=["nothing"]),
                        "lora_targets"),
                       (ModelConfig(init="pretrained", llm=str(llms[False]), adapter="lora", lora_targets=["lm_head"]),
                        "output layer"),
                       (ModelConfig(new_rows_init="spread"), "needs model.init=pretrained")):
        with pytest.raises(UserError, match=match):
            build_model(cfg, vocab)


def test_the_pretrained_lora_example_config_loads():
    from dmlm.training.config import RunConfig
    from dmlm.util.config import load_config

    cfg = load_config(Path(__file__).parent.parent / "configs" / "pretrained-lora.yaml", [], RunConfig)
    cfg.validate()
    assert (cfg.model.init, cfg.model.keep_layers, cfg.model.adapter) == ("pretrained", 0, "lora")
    assert [s.train for s in cfg.train.stages] == ["new_rows", "adapters"] and cfg.train.lr_new_rows == 10
