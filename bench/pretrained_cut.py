"""What a CPU-sized pretrained start keeps of the LLM: text perplexity of SmolLM2-135M cut to its
first N layers, before any training.

bench/pretrained_speed.py measures what cutting layers buys (tokens/s); this measures what it costs.
The init study (configs/studies/init.yaml) compares a pretrained start with a random one of the
same cut architecture; if the cut model has lost what the LLM knew about English, that study
cannot show the paper's effect however it is run. Each variant is `dmlm.modeling.build.llm_body`,
the LLM body `dmlm train` starts from, with `model.keep_layers` = N and the untrimmed vocabulary
(trimming keeps the pretrained rows; the softmax over fewer rows would only lower these numbers),
without the speech rows `build_model` then adds; each is scored on plain
sentences with the LLM's own tokenizer: per-token negative log-likelihood of every token after the
first, exp'd to a perplexity. `ratio` = perplexity of the `--layers` cut ÷ the full model's (the
baseline, 30 layers); rows for every variant, and for the same architecture randomly initialized,
under `variants`.

Sentences: the first `--sentences` of the init study's test splits of mini-world and of `bible` (the
same sizes and seed), in their written form (the transcripts its ASR arms learn to write).

    python -m bench.pretrained_cut [--layers 6] [--variants 30,12,6,3] [--sentences 200] [--with-last] [--quick]

`--with-last` adds, for every cut of N layers, the pretrained model's first N-1 layers plus its last
one (`pretrained+last` rows): the same depth and cost, with the head reading the state it was
trained on.

`--quick` (CI smoke): a tiny stand-in LLM saved to a temp folder, 2 sentences per corpus.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import torch

from bench.common import write_result


def corpus_sentences(n: int) -> dict[str, list[str]]:
    """The first `n` test sentences of the init study's two corpora (its split sizes and seed)."""
    from dmlm.data import bible, miniworld

    return {name: [s.text for s in mod.generate_splits(3000, 200, 300, seed=0)["test"]][:n]
            for name, mod in (("mini-world", miniworld), ("bible", bible))}


@torch.no_grad()
def mean_nll(model, tokenizer, sentences: list[str]) -> tuple[float, int]:
    """Mean negative log-likelihood per predicted token (every token after the first), and the token count."""
    total, count = 0.0, 0
    for s in sentences:
        ids = tokenizer(s, return_tensors="pt").input_ids
        if ids.shape[1] < 2:
            continue
        logits = model(input_ids=ids).logits[0, :-1].float()
        total += torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum").item()
        count += ids.shape[1] - 1
    return total / max(count, 1), count


def build(llm: str, layers: int, init: str):
    """SmolLM2 cut to `layers` (0: all), pretrained or random: `dmlm train`'s LLM body (`llm_body`)."""
    from dmlm.modeling.build import ModelConfig, llm_body

    torch.manual_seed(0)
    return llm_body(ModelConfig(init=init, llm=llm, keep_layers=layers)).eval()


def keep_first_and_last(model, layers: int):
    """The pretrained model with its first `layers - 1` decoder layers and its last one (a variant no
    `ModelConfig` offers yet): the head then reads the state of the layer it was trained under."""
    blocks = model.model.layers
    idx = list(range(layers - 1)) + [len(blocks) - 1]
    model.model.layers = torch.nn.ModuleList(blocks[i] for i in idx)
    for new, block in enumerate(model.model.layers):
        block.self_attn.layer_idx = new  # the KV cache is indexed by position in the stack
    model.config.num_hidden_layers = layers
    if isinstance(getattr(model.config, "layer_types", None), list):
        model.config.layer_types = [model.config.layer_types[i] for i in idx]
    return model


def _tiny_llm(folder: Path) -> str:
    """A random 4-layer Llama with a BPE, saved as an LLM folder (the --quick stand-in)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    texts = [t for v in corpus_sentences(20).values() for t in v]
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>"]))
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>")
    cfg = LlamaConfig(vocab_size=hf_tok.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                      num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=True)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    hf_tok.save_pretrained(folder)
    return str(folder)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--llm", default="smollm2-135m", help="LLM preset or folder")
    ap.add_argument("--layers", type=int, default=6, help="the cut the result's ratio reports (the init study's)")
    ap.add_argument("--variants", default="30,12,6,3", help="layer counts to score, pretrained and random")
    ap.add_argument("--sentences", type=int, default=200, help="sentences per corpus")
    ap.add_argument("--with-last", action="store_true",
                    help="also score each cut as its first N-1 layers plus the last one (pretrained+last)")
    ap.add_argument("--quick", action="store_true", help="CI smoke: a tiny stand-in LLM, 2 sentences per corpus")
    args = ap.parse_args(argv)
    from transformers import AutoTokenizer

    from dmlm.util.assets import llm_dir

    with tempfile.TemporaryDirectory(prefix="dmlm-cut-") as tmp:
        llm, layers, variants, n = args.llm, args.layers, [int(x) for x in args.variants.split(",")], args.sentences
        if args.quick:
            llm, layers, variants, n = _tiny_llm(Path(tmp) / "llm"), 2, [4, 2], 2
        tokenizer = AutoTokenizer.from_pretrained(llm_dir(llm))
        texts = corpus_sentences(n)
        full = max(variants)
        rows = []
        for k in sorted(set(variants) | {layers}, reverse=True):
            kinds = ("pretrained", "random") + (("pretrained+last",) if args.with_last and 1 < k < full else ())
            for init in kinds:
                t = time.perf_counter()
                if init == "pretrained+last":
                    model = keep_first_and_last(build(llm, 0, "pretrained"), k)
                else:
                    model = build(llm, 0 if k == full else k, init)
                row = {"layers": k, "init": init, "seconds": 0.0}
                for name, sents in texts.items():
                    nll, count = mean_nll(model, tokenizer, sents)
                    row[name] = {"nll": nll, "perplexity": math.exp(nll), "tokens": count}
                row["seconds"] = round(time.perf_counter() - t, 1)
                rows.append(row)
                print(f"{init:>15} {k:>2} layers: " + ", ".join(
                    f"{c} ppl {row[c]['perplexity']:.1f}" for c in texts), flush=True)
                del model
    ppl = {(r["layers"], r["init"]): r["bible"]["perplexity"] for r in rows}
    return write_result("pretrained_cut", f"bible text perplexity, pretrained {layers} of {full} layers vs. all",
                        "perplexity", ppl[(layers, "pretrained")], ppl[(full, "pretrained")], higher_is_better=False,
                        variants=rows, sentences_per_corpus=n, llm=args.llm if not args.quick else "tiny stand-in",
                        quick=args.quick)


if __name__ == "__main__":
    main()
