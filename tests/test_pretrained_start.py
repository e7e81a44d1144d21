"""A CPU-sized pretrained start: vocabulary trimming, layer keeping and the random-init control arm.

A tiny Llama and a byte-level BPE trained here stand in for SmolLM2-135M (the `slow` test
uses the real one): trimming must keep every text's encoding exact, the kept rows and layers
must be the pretrained ones, `init=random` must match `init=pretrained` in every shape, and a
trimmed model trained by dmlm must load and round-trip text in plain transformers.
"""

from __future__ import annotations

import json

import pytest
import torch

from dmlm.modeling.build import ModelConfig, build_model
from dmlm.tokenizers.text import TextTokenizer
from dmlm.tokenizers.trim import trim_tokenizer
from dmlm.util.errors import UserError
from dmlm.vocab import Vocab

# the "pretraining" text of the stand-in LLM: broader than the test corpus, so trimming removes tokens
PRETRAIN = [
    "the red cat runs and the big dog sees a cat", "a dog likes the red ball", "cats and dogs run in the park",
    "In the beginning was the word, and the word was with the reader.", "Numbers: 0 1 2 3 4 5 6 7 8 9, 42 and 1999.",
    "Punctuation! Does it work? Yes: (brackets) [and] {braces}; quotes \"like this\" and 'this'.",
    "Café, naïve, résumé, über, señor, Øresund, Ελληνικά, русский, 日本語, emoji 🙂🚀.",
    "She sells sea shells by the sea shore; the shells she sells are surely sea shells.",
    "tabs\tand\nnewlines  and  double spaces", "running runner runs ran; seeing seen sees saw",
] * 3
CORPUS = ["the red cat runs", "a big dog sees the cat", "the dog likes a red cat"]
UNSEEN = [
    "Completely unseen words: zebra, quixotic, xylophone.", "digits 0123456789 and 3.14159, -7e-3",
    "punctuation ?!.,;:'\"()[]{}<>/\\|@#$%^&*_+=~`", "unicode: déjà vu, Ærøskøbing, Ελληνικά, 中文, 🙂👍🏽",
    "  leading spaces", "trailing spaces   ", "tab\tnew\nline\r\nand\x00nul", "the red cat runs",
]


def _tokenizer() -> TextTokenizer:
    """A byte-level BPE like SmolLM2's (no prefix space, so decode(encode(x)) == x), specials first."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(PRETRAIN, trainers.BpeTrainer(
        vocab_size=420, special_tokens=["<s>", "</s>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return TextTokenizer(PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>"))


def _save_llm(path, tok: TextTokenizer, tie: bool = True, layers: int = 3, seed: int = 0) -> dict[str, torch.Tensor]:
    """A tiny SmolLM2-shaped Llama (grouped-query attention) saved with its tokenizer; returns its weights."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    lm = LlamaForCausalLM(LlamaConfig(
        vocab_size=tok.vocab_size, hidden_size=64, num_hidden_layers=layers, num_attention_heads=4,
        num_key_value_heads=2, intermediate_size=128, tie_word_embeddings=tie, bos_token_id=tok.bos_id,
        eos_token_id=tok.eos_id,
    ))
    lm.save_pretrained(path)
    tok.save(path)
    return {k: v.detach().clone() for k, v in lm.state_dict().items()}


@pytest.fixture(scope="module")
def llm(tmp_path_factory):
    """(folder, weights) of the stand-in LLM, tied embeddings as in SmolLM2."""
    path = tmp_path_factory.mktemp("llm") / "lm"
    return path, _save_llm(path, _tokenizer())


# -- trimming -----------------------------------------------------------------------------

def test_trimmed_tokenizer_encodes_corpus_to_the_same_pieces_and_any_text_exactly():
    full = _tokenizer()
    trimmed = trim_tokenizer(full, CORPUS)
    assert trimmed.vocab_size < full.vocab_size
    for text in CORPUS:  # the same pieces: each trimmed id names the original id it came from
        ids = trimmed.hf.encode(text, add_special_tokens=False)
        assert [trimmed.source_ids[i] for i in ids] == full.hf.encode(text, add_special_tokens=False)
    for text in CORPUS + UNSEEN + PRETRAIN[:10]:
        ids = trimmed.hf.encode(text, add_special_tokens=False)
        assert trimmed.hf.decode(ids) == text
        assert trimmed.hf.decode(ids) == full.hf.decode(full.hf.encode(text, add_special_tokens=False))
        assert trimmed.decode(trimmed.encode(text)) == text.strip()  # dmlm's wrapper strips the ends
    unseen = trimmed.hf.encode(UNSEEN[0], add_special_tokens=False)
    assert len(unseen) > len(full.hf.encode(UNSEEN[0], add_special_tokens=False))  # smaller pieces, still exact


def test_trimming_keeps_specials_and_token_strings_and_is_deterministic():
    full = _tokenizer()
    a, b = trim_tokenizer(full, CORPUS), trim_tokenizer(full, list(reversed(CORPUS)))
    assert a.source_ids == b.source_ids and a.hf.backend_tokenizer.to_str() == b.hf.backend_tokenizer.to_str()
    assert a.source_ids == sorted(a.source_ids)  # original order
    assert (a.bos_id, a.eos_id) == (full.bos_id, full.eos_id) == (0, 1)  # specials led the vocabulary: still do
    old = full.hf.convert_ids_to_tokens(a.source_ids)
    assert a.hf.convert_ids_to_tokens(list(range(a.vocab_size))) == old  # id i is the token source_ids[i] was


def test_trimming_dmlms_own_bpe_behaves_like_the_original():
    full = TextTokenizer.train_bpe(PRETRAIN, vocab_size=420)  # add_prefix_space: decode adds a leading space
    trimmed = trim_tokenizer(full, CORPUS)
    for text in CORPUS + UNSEEN:
        assert trimmed.decode(trimmed.encode(text)) == full.decode(full.encode(text))


def test_trimming_a_trimmed_tokenizer_maps_to_the_first_ids():
    full = _tokenizer()
    once = trim_tokenizer(full, CORPUS + ["dogs run in the park"])
    twice = trim_tokenizer(once, CORPUS)
    direct = trim_tokenizer(full, CORPUS)
    assert twice.source_ids == direct.source_ids


def test_trimming_refuses_a_tokenizer_that_is_not_byte_level_bpe():
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(PRETRAIN, trainers.BpeTrainer(vocab_size=200, special_tokens=["[UNK]"], show_progress=False))
    with pytest.raises(UserError, match="byte-level BPE"):
        trim_tokenizer(TextTokenizer(PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]")), CORPUS)


# -- model building -----------------------------------------------------------------------

def test_trimmed_pretrained_model_keeps_the_original_rows_in_the_new_order(tmp_path):
    tok = _tokenizer()
    old = _save_llm(tmp_path / "lm", tok, tie=False)
    trimmed = trim_tokenizer(tok, CORPUS)
    vocab = Vocab(text_size=trimmed.vocab_size, speech_size=16)
    model = build_model(ModelConfig(init="pretrained", llm=str(tmp_path / "lm"), trim_vocab=True), vocab,
                        text_rows=trimmed.source_ids)
    rows = torch.tensor(trimmed.source_ids)
    w_in, w_out = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    assert w_in.shape[0] == w_out.shape[0] == model.config.vocab_size == vocab.size
    assert torch.equal(w_in[: vocab.text_size], old["model.embed_tokens.weight"][rows])
    assert torch.equal(w_out[: vocab.text_size], old["lm_head.weight"][rows])
    mean = old["model.embed_tokens.weight"][rows].mean(0)
    assert (w_in[vocab.text_size :] - mean).abs().max() < 0.1  # new rows: the mean of the kept rows + noise


def test_keep_layers_gives_the_first_layers_with_their_pretrained_weights(llm):
    path, old = llm
    vocab = Vocab(text_size=_tokenizer().vocab_size, speech_size=16)
    model = build_model(ModelConfig(init="pretrained", llm=str(path), keep_layers=2), vocab)
    assert model.config.num_hidden_layers == len(model.model.layers) == 2
    new = model.state_dict()
    kept = [k for k in old if not k.startswith("model.layers.") or int(k.split(".")[2]) < 2]
    assert {k for k in new if k != "lm_head.weight"} == {k for k in kept if k != "lm_head.weight"}
    for k in kept:
        if "embed_tokens" in k or k == "lm_head.weight":
            assert torch.equal(new[k][: vocab.text_size], old[k][: vocab.text_size])
        else:
            assert torch.equal(new[k], old[k]), k
    with pytest.raises(UserError, match="keep_layers=4 but .* has 3 layers"):
        build_model(ModelConfig(init="pretrained", llm=str(path), keep_layers=4), vocab)


def test_random_init_has_the_pretrained_shapes_but_other_weights(llm):
    path, _ = llm
    trimmed = trim_tokenizer(_tokenizer(), CORPUS)
    vocab = Vocab(text_size=trimmed.vocab_size, speech_size=16)

    def build(init: str, seed: int = 0):
        cfg = ModelConfig(init=init, llm=str(path), trim_vocab=True, keep_layers=2)
        return build_model(cfg, vocab, seed=seed, text_rows=trimmed.source_ids).state_dict()

    pre, rnd = build("pretrained"), build("random")
    assert {k: v.shape for k, v in pre.items()} == {k: v.shape for k, v in rnd.items()}
    assert all(not torch.equal(pre[k], rnd[k]) for k in pre if pre[k].ndim == 2)  # every matrix differs
    assert torch.equal(rnd["model.embed_tokens.weight"], build("random")["model.embed_tokens.weight"])  # seeded
    assert not torch.equal(rnd["model.embed_tokens.weight"], build("random", seed=1)["model.embed_tokens.weight"])
    new_rows = rnd["model.embed_tokens.weight"][vocab.text_size :]
    assert 0.01 < float(new_rows.std()) < 0.04  # random like every other row (init std 0.02), not a mean


def test_cutting_options_need_an_llm_start():
    for cfg in (ModelConfig(trim_vocab=True), ModelConfig(keep_layers=2), ModelConfig(init="random", keep_layers=-1),
                ModelConfig(init="warm")):
        with pytest.raises(UserError, match="model\\."):
            build_model(cfg, Vocab(text_size=300))


# -- end to end: dmlm train, then plain transformers ----------------------------------------

@pytest.mark.parametrize("init", ["pretrained", "random"])
def test_trimmed_cut_llm_trains_and_loads_in_plain_transformers(llm, run_config, corpus, tmp_path, init):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from dmlm.modeling import load_checkpoint
    from dmlm.training.train import train

    path, _ = llm
    out = train(run_config(tmp_path / "m", f"model.init={init}", f"model.llm={path}", "model.trim_vocab=true",
                           "model.keep_layers=2", "train.steps=4", "train.eval_every=2", "train.save_every=4",
                           "train.warmup_steps=1", "train.allow_lossy_start=true"))  # a cut start fails the check
    rows = [json.loads(line) for line in (tmp_path / "m.log.jsonl").read_text().splitlines()]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in rows if "loss" in r)
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4]

    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    vocab = load_checkpoint(out).vocab
    assert model.config.num_hidden_layers == 2 and model.config.vocab_size == vocab.size == len(tok)
    assert vocab.text_size < _tokenizer().vocab_size  # trimmed
    for text in [*corpus.texts(corpus.train)[:3], *UNSEEN]:
        ids = tok.encode(text, add_special_tokens=False)
        assert max(ids) < vocab.text_size and tok.decode(ids) == text
    ids = torch.tensor([tok.encode("the red cat", add_special_tokens=False)])
    assert model(input_ids=ids).logits.shape == (1, ids.shape[1], vocab.size)


def test_trim_vocab_refuses_a_separate_text_tokenizer(llm, run_config, tmp_path):
    from dmlm.training.setup import build_text_tokenizer

    path, _ = llm
    cfg = run_config(tmp_path / "m", "model.init=pretrained", f"model.llm={path}", "model.trim_vocab=true",
                     f"data.text_tokenizer={path}")
    with pytest.raises(UserError, match="data.text_tokenizer"):
        build_text_tokenizer(cfg)


@pytest.mark.slow
def test_smollm2_trimmed_to_mini_world_is_exact_and_keeps_its_rows():
    from dmlm.data.miniworld import generate_splits
    from dmlm.util.assets import llm_dir

    full = TextTokenizer.load(llm_dir("smollm2-135m"))
    texts = [s.text for s in generate_splits(500, 50, 50)["train"]] + CORPUS + PRETRAIN  # the init study's text
    trimmed = trim_tokenizer(full, texts)
    assert trimmed.vocab_size < 2000 < full.vocab_size
    for text in texts:
        ids = trimmed.hf.encode(text, add_special_tokens=False)
        assert [trimmed.source_ids[i] for i in ids] == full.hf.encode(text, add_special_tokens=False)
    for text in UNSEEN:
        assert trimmed.hf.decode(trimmed.hf.encode(text, add_special_tokens=False)) == text
    vocab = Vocab(text_size=trimmed.vocab_size, speech_size=100)
    model = build_model(ModelConfig(init="pretrained", trim_vocab=True, keep_layers=6), vocab,
                        text_rows=trimmed.source_ids)
    from transformers import AutoModelForCausalLM

    ref = AutoModelForCausalLM.from_pretrained(llm_dir("smollm2-135m"))
    rows = torch.tensor(trimmed.source_ids)
    assert torch.equal(model.get_input_embeddings().weight[: vocab.text_size], ref.get_input_embeddings().weight[rows])
    assert torch.equal(model.model.layers[5].mlp.up_proj.weight, ref.model.layers[5].mlp.up_proj.weight)


def test_pretrained_speed_bench_times_every_recipe_on_the_same_utterances(tmp_path, monkeypatch):
    import bench.common
    from bench import pretrained_speed

    monkeypatch.setattr(bench.common, "RESULTS", tmp_path)
    pretrained_speed.main(["--quick", "--recipes", "bpe,lora,new_rows,dedup_bpe,targets,bf16", "--paired", "2"])
    saved = json.loads((tmp_path / "pretrained_speed.json").read_text())
    rows = {r["recipe"]: r for r in saved["recipes"]}
    assert list(rows) == ["fp32", "bpe", "lora", "new_rows", "dedup_bpe", "targets", "bf16", "staged"]  # baseline first
    assert rows["fp32"]["ratio"] == 1.0 and {r["layers"] for r in saved["recipes"] if "layers" in r} == {4}  # full depth
    assert saved["ratio"] == pytest.approx(saved["dmlm"] / saved["baseline"]) and saved["recommend"] == "staged"
    assert rows["staged"]["derived_from"] == ["new_rows", "dedup_bpe"]
    # the same utterances, the bpe renderings shorter
    assert rows["dedup_bpe"]["tokens_per_utt"] < rows["bpe"]["tokens_per_utt"] < rows["targets"]["tokens_per_utt"]
    assert rows["targets"]["tokens_per_utt"] == rows["fp32"]["tokens_per_utt"]
    # FLOPs actually executed: logits at targets skip most of the output layer, shorter sequences the rest
    # (LoRA's saving shows at full width only: on this 64-wide stand-in r=16 adapters cost more than they save)
    assert rows["dedup_bpe"]["gflops_per_utt"] < rows["bpe"]["gflops_per_utt"] < rows["targets"]["gflops_per_utt"]
    assert rows["targets"]["gflops_per_utt"] < rows["lora"]["gflops_per_utt"]
    assert rows["bf16"]["gflops_per_utt"] == rows["fp32"]["gflops_per_utt"]  # the same work, in another format
    assert rows["lora"]["trainable"] < rows["bf16"]["trainable"] == rows["fp32"]["trainable"]
    assert all(r["mfu_bf16"] > 0 and r["mfu_fp32"] > 0 for r in saved["recipes"] if "mfu_bf16" in r)
    assert {"lscpu_model", "avx512_bf16", "load_average_before", "load_average_after"} <= saved.keys()
    arms = saved["paired"]["arms"]
    assert [c["utterances"] for c in arms["fp32"]["curve"]] == [c["utterances"] for c in arms["staged"]["curve"]]
    assert arms["staged"]["stages"] == ["new_rows:1", "adapters:rest"]


def test_pretrained_speed_runs_the_cheap_recipes_in_the_precision_train_would_pick(monkeypatch):
    """On a CPU without native bf16 `train.precision: auto` trains fp32, so the LoRA recipes are timed in fp32 there
    (bf16 where it is native); the bf16 recipe measures autocast either way; the choice is pinnable."""
    from bench import pretrained_speed
    from dmlm.util import precision

    for native, want in ((False, "fp32"), (True, "bf16")):
        monkeypatch.setattr(precision, "native_bf16", lambda device="cpu", native=native: native)
        args = pretrained_speed.parse(["--quick"])
        assert args.cheap_precision == want
        assert args.table["compiled"].bf16 == (want == "bf16") and args.table["lora"].bf16 == (want == "bf16")
        assert args.table["bf16"].bf16 and not args.table["fp32"].bf16
    args = pretrained_speed.parse(["--quick", "--cheap-precision", "fp32"])
    assert args.table["targets"].what == "LoRA r=16, fp32, loss and logits at the transcript"
    assert pretrained_speed.run_config(args.table["lora"], "x").train.precision == "fp32"


# -- the start check: a start that keeps what the LLM knows ----------------------------------

def _teach(path, steps: int = 100) -> None:
    """A stand-in LLM that knows some English: the tiny Llama trained on PRETRAIN and sentences like the
    test corpus's for `steps` full-batch steps (seconds), saved with its tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = _tokenizer()
    torch.manual_seed(0)
    lm = LlamaForCausalLM(LlamaConfig(vocab_size=tok.vocab_size, hidden_size=64, num_hidden_layers=3,
                                      num_attention_heads=4, num_key_value_heads=2, intermediate_size=128,
                                      tie_word_embeddings=True, bos_token_id=tok.bos_id, eos_token_id=tok.eos_id))
    texts = sorted(set(PRETRAIN)) + [f"{d} {a} {b} {c}" for d in ("the", "a") for a in ("red", "big")
                                     for b in ("cat", "dog") for c in ("runs", "sees", "likes")]
    seqs = [[tok.bos_id] + tok.encode(t) for t in texts]
    width = max(map(len, seqs))
    ids = torch.tensor([s + [0] * (width - len(s)) for s in seqs])
    mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs])
    opt = torch.optim.AdamW(lm.parameters(), lr=3e-3)
    for _ in range(steps):
        lm(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100)).loss.backward()
        opt.step()
        opt.zero_grad()
    lm.save_pretrained(path)
    tok.save(path)


@pytest.fixture(scope="module")
def taught(tmp_path_factory):
    path = tmp_path_factory.mktemp("taught") / "lm"
    _teach(path)
    return path


HELD_OUT = ["the big cat sees a dog", "a red dog likes the cat", "the dog runs", "a big red cat likes a dog"]


def test_start_check_passes_an_untouched_start_and_fails_a_cut_one(taught):
    from transformers import AutoModelForCausalLM

    from dmlm.training.start_check import TOLERANCE, compare

    tok = _tokenizer()
    llm = AutoModelForCausalLM.from_pretrained(taught)
    vocab = Vocab(text_size=tok.vocab_size, speech_size=16, bos_id=tok.bos_id, eos_id=tok.eos_id)

    def check(**kw):
        return compare(llm, tok, build_model(ModelConfig(init="pretrained", llm=str(taught), **kw), vocab), tok, HELD_OUT)

    whole, cut = check(), check(keep_layers=1)
    assert whole.llm_perplexity == cut.llm_perplexity == pytest.approx(whole.llm_own_perplexity)  # untrimmed: one LLM
    assert whole.passed and abs(whole.ratio - 1) < TOLERANCE  # the new rows (mean) take almost nothing
    assert not cut.passed and cut.ratio > 1.2
    assert whole.tokens == sum(len(tok.encode(t)) for t in HELD_OUT)  # every token after the BOS
    same = compare(llm, tok, llm, tok, HELD_OUT)
    assert same.ratio == pytest.approx(1.0, abs=1e-6)


def test_start_check_scores_a_trimmed_start_against_the_llm_on_the_same_rows(taught):
    """Trimming shrinks the softmax: the LLM is scored over the kept rows too, so trimming alone costs nothing."""
    from transformers import AutoModelForCausalLM

    from dmlm.training.start_check import compare

    full = _tokenizer()
    trimmed = trim_tokenizer(full, CORPUS + HELD_OUT)
    llm = AutoModelForCausalLM.from_pretrained(taught)
    vocab = Vocab(text_size=trimmed.vocab_size, bos_id=trimmed.bos_id, eos_id=trimmed.eos_id)
    model = build_model(ModelConfig(init="pretrained", llm=str(taught), trim_vocab=True), vocab,
                        text_rows=trimmed.source_ids)
    model.resize_token_embeddings(trimmed.vocab_size)  # no rows added: the trimmed LLM itself
    res = compare(llm, full, model, trimmed, HELD_OUT)
    assert res.ratio == pytest.approx(1.0, abs=1e-5)
    assert res.llm_perplexity < res.llm_own_perplexity  # fewer rivals: against the whole vocabulary it would pass anyway


def test_dmlm_train_refuses_a_lossy_pretrained_start_unless_allowed(taught, run_config, tmp_path, caplog):
    import logging

    from dmlm.training.train import train

    common = ("model.init=pretrained", f"model.llm={taught}", "train.steps=1", "train.save_every=1",
              "train.eval_every=1", "train.warmup_steps=0")
    with caplog.at_level(logging.INFO, logger="dmlm.training.start_check"):
        train(run_config(tmp_path / "whole", *common))
    assert "start check passed" in caplog.text
    with pytest.raises(UserError, match=r"start check failed: .* has text perplexity [\d.]+ against the untouched "
                                        r"LLM's [\d.]+ .*train.allow_lossy_start"):
        train(run_config(tmp_path / "cut", *common, "model.keep_layers=1"))
    assert not (tmp_path / "cut").exists()  # refused before anything was written
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="dmlm.training.start_check"):
        train(run_config(tmp_path / "cut", *common, "model.keep_layers=1", "train.allow_lossy_start=true"))
    assert "start check FAILED (train.allow_lossy_start" in caplog.text


def test_new_rows_init_spread_gives_rows_as_distinct_as_the_text_rows(llm):
    path, old = llm
    vocab = Vocab(text_size=_tokenizer().vocab_size, speech_size=64)
    rows = {init: build_model(ModelConfig(init="pretrained", llm=str(path), new_rows_init=init), vocab)
            .get_input_embeddings().weight[vocab.text_size :].detach() for init in ("mean", "spread", "auto")}
    text_std = old["model.embed_tokens.weight"][: vocab.text_size].std(0)
    assert torch.equal(rows["auto"], rows["mean"])  # init=pretrained: today's start
    assert float((rows["mean"].std(0) / text_std).mean()) < 0.05
    assert 0.8 < float((rows["spread"].std(0) / text_std).mean()) < 1.2
