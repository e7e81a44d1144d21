"""The start check on a real LLM: does the model `dmlm train` starts from keep what SmolLM2-135M knows?

`dmlm.training.start_check` runs before the first step of every `init: pretrained` run and
refuses a start whose text perplexity on held-out text is more than 2 % above the untouched
LLM's. This measures it for the starts the init study can choose, on each corpus of the study
(`mini-world`, `bible`; its split sizes and seed): the text vocabulary trimmed to the training
split's texts (`model.trim_vocab`), dmlm's 256 specials and `--units` speech rows added, and

    l30-mean     all 30 layers, new rows at the mean of the text rows (the default start)
    l30-spread   all 30 layers, new rows at the mean plus the rows' full spread (`model.new_rows_init`)
    l6-mean      the first 6 layers (the cut the CPU init study trained: bench/pretrained_cut.py)

each scored with `start_check.compare`'s numbers on the first `--sentences` test sentences: the
untouched LLM over the kept text rows (the reference), the start over all its rows, and the LLM
on its own tokens and whole vocabulary. The result's `ratio` is the first variant's perplexity
÷ the reference on the last corpus (`bible`; ≤ 1.02 passes); every row is under `variants`.

    python -m bench.start_check [--sentences 100] [--units 1000] [--corpora mini-world,bible]
                                [--variants l30-mean,l30-spread,l6-mean] [--quick]

`--quick` (CI smoke): a tiny random stand-in LLM saved to a temp folder, 3 sentences per corpus.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from bench.common import write_result

VARIANTS = {"l30-mean": (0, "mean"), "l30-spread": (0, "spread"), "l6-mean": (6, "mean")}


def splits(n: int, corpora: list[str]) -> dict[str, tuple[list[str], list[str]]]:
    """corpus -> (training texts, the first `n` test texts) of the init study's splits."""
    from dmlm.data import bible, miniworld

    out = {}
    for name, mod in (("mini-world", miniworld), ("bible", bible)):
        if name not in corpora:
            continue
        s = mod.generate_splits(3000, 200, 300, seed=0)
        out[name] = ([x.text for x in s["train"]], [x.text for x in s["test"]][:n])
    return out


def stand_in(folder: Path, texts: list[str]) -> str:
    """A random 4-layer Llama with a byte-level BPE, saved as an LLM folder (the --quick stand-in)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from dmlm.tokenizers.text import TextTokenizer

    tok = TextTokenizer.train_bpe(texts, vocab_size=400)
    LlamaForCausalLM(LlamaConfig(vocab_size=tok.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                                 num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=True,
                                 bos_token_id=tok.bos_id, eos_token_id=tok.eos_id)).save_pretrained(folder)
    tok.save(folder)
    return str(folder)


def measure(llm: str, corpus: str, train_texts: list[str], test_texts: list[str], units: int,
            variants: dict[str, tuple[int, str]]) -> list[dict]:
    """One row per variant: the start check's three perplexities on `test_texts`, and its verdict."""
    from transformers import AutoModelForCausalLM

    from dmlm.modeling.build import ModelConfig, build_model
    from dmlm.tokenizers.text import TextTokenizer
    from dmlm.tokenizers.trim import trim_tokenizer
    from dmlm.training.start_check import TOLERANCE, kept_rows, perplexity
    from dmlm.util.assets import llm_dir
    from dmlm.vocab import Vocab

    full = TextTokenizer.load(llm_dir(llm))
    text = trim_tokenizer(full, train_texts)
    vocab = Vocab(text_size=text.vocab_size, speech_size=units, bos_id=text.bos_id, eos_id=text.eos_id)
    untouched = AutoModelForCausalLM.from_pretrained(llm_dir(llm), dtype=torch.float32)
    reference, tokens = perplexity(untouched, text, test_texts, kept_rows(text))
    own, own_tokens = perplexity(untouched, full, test_texts)
    del untouched
    rows = []
    for name, (layers, init) in variants.items():
        t = time.perf_counter()
        torch.manual_seed(0)
        model = build_model(ModelConfig(init="pretrained", llm=llm, trim_vocab=True, keep_layers=layers,
                                        new_rows_init=init), vocab, text_rows=text.source_ids)
        ppl = perplexity(model, text, test_texts)[0]
        rows.append({"corpus": corpus, "variant": name, "layers": layers or model.config.num_hidden_layers,
                     "new_rows_init": init, "start_perplexity": ppl, "llm_perplexity": reference,
                     "llm_own_perplexity": own, "ratio": ppl / reference, "passed": ppl / reference <= 1 + TOLERANCE,
                     "tokens": tokens, "llm_own_tokens": own_tokens, "text_vocab": text.vocab_size,
                     "full_text_vocab": full.vocab_size, "vocab": vocab.size,
                     "seconds": round(time.perf_counter() - t, 1)})
        print(f"{corpus:>10} {name:>10}: start {ppl:.4g} vs LLM {reference:.4g} "
              f"({100 * (ppl / reference - 1):+.1f} %), "
              f"LLM own tokens {own:.4g}", flush=True)
        del model
    return rows


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--llm", default="smollm2-135m", help="LLM preset or folder")
    ap.add_argument("--sentences", type=int, default=100, help="held-out test sentences per corpus")
    ap.add_argument("--units", type=int, default=1000, help="speech rows added (the init study's k)")
    ap.add_argument("--corpora", default="mini-world,bible", help="corpora to score (the result reads the last)")
    ap.add_argument("--variants", default=",".join(VARIANTS), help="starts to score (the result reads the first)")
    ap.add_argument("--quick", action="store_true", help="CI smoke: a tiny stand-in LLM, 3 sentences per corpus")
    args = ap.parse_args(argv)
    corpora = args.corpora.split(",")
    data = splits(3 if args.quick else args.sentences, corpora)
    with tempfile.TemporaryDirectory(prefix="dmlm-start-") as tmp:
        llm, variants, units = args.llm, {v: VARIANTS[v] for v in args.variants.split(",")}, args.units
        if args.quick:
            llm = stand_in(Path(tmp) / "llm", [t for tr, _ in data.values() for t in tr[:200]])
            variants, units = {"l4-mean": (0, "mean"), "l2-mean": (2, "mean")}, 16
        rows = [r for corpus, (train, test) in data.items() for r in measure(llm, corpus, train, test, units, variants)]
    main_row = next(r for r in rows if r["corpus"] == corpora[-1])
    return write_result("start_check", f"{corpora[-1]} text perplexity of the {main_row['variant']} start (trimmed "
                        "vocabulary, dmlm's rows added) / the untouched LLM's over the same rows", "perplexity",
                        main_row["start_perplexity"], main_row["llm_perplexity"], higher_is_better=False, variants=rows,
                        sentences_per_corpus=len(next(iter(data.values()))[1]), units=units,
                        llm=args.llm if not args.quick else "tiny stand-in", quick=args.quick)


if __name__ == "__main__":
    main()
