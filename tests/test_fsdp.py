"""FSDP2 is exact, and its sharded checkpoints resume exactly, also with another world size.

2 CPU ranks (gloo, torchrun) with `train.parallel=fsdp` against one process accumulating both
ranks' micro-batches (`grad_accum=2`). The gradients are the same bits (each rank's is its
micro-batch's times 2, averaged: exact in floats), but the clipping norm is summed from each
rank's shard, in another order than one process sums it: the clip factor differs in its last
bits, and AdamW, which divides each weight's step by its own gradient scale, turns that into
differences of up to ~3e-5 in weights of ~0.08 whose gradients are near zero. So: per-step
losses equal to rel 5e-5 (bitwise until the first clipped update has an effect), weights to
atol 1e-4. A rank killed inside a save (kill -9) resumes bitwise the run it interrupted; the
sharded state of 2 ranks resumes in 1 process and that of 1 process in 2 ranks, the same steps to
those tolerances.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dmlm.training.state import SHARDS_DIR
from dmlm.util.config import dump_config

COMMON = ("train.steps=4", "train.batch_tokens=400", "train.eval_every=100", "train.save_every=2",
          "train.warmup_steps=1", "train.loss=length_normalized")
LORA = ("model.init=pretrained", "model.adapter=lora", "model.lora_rank=4", "model.lora_alpha=8",
        "train.allow_lossy_start=true", "train.lr=1e-2")


def steps(out: Path) -> list[tuple]:
    rows = [json.loads(x) for x in Path(f"{out}.log.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"], r["tokens"]) for r in rows if "loss" in r]


def torchrun(config: Path, *args: str, port: int, env: dict | None = None, resume: bool = False,
             check: bool = True) -> subprocess.CompletedProcess:
    """`dmlm train CONFIG` under torchrun (2 ranks on this machine unless `args` say otherwise)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo", **(env or {})}
    launch = list(args) or ["--nproc_per_node=2", "--master_addr=127.0.0.1", f"--master_port={port}"]
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", *launch, "-m", "dmlm.cli", "train",
                           str(config), *(["--resume"] if resume else [])],
                          env=env, capture_output=True, text=True, timeout=180)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def write_config(cfg, path: Path) -> Path:
    path.write_text(dump_config(cfg))
    return path


def assert_same_run(a: list[tuple], b: list[tuple], exact: bool) -> None:
    assert [s for s, *_ in a] == [s for s, *_ in b]
    assert [t for *_, t in a] == [t for *_, t in b]  # same global batches
    for (_, la, _), (_, lb, _) in zip(a, b):
        assert la == lb if exact else la == pytest.approx(lb, rel=5e-5, abs=1e-6)


def assert_close_weights(a: Path, b: Path, exact: bool = False) -> None:
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=0 if exact else 1e-4, atol=0 if exact else 1e-4, msg=k)


@pytest.fixture(scope="module")
def llm(tmp_path_factory, corpus) -> Path:
    """A tiny random Llama with its BPE standing in for a pretrained LLM (as in tests/test_adapters.py)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from dmlm.tokenizers.text import TextTokenizer

    path = tmp_path_factory.mktemp("llm") / "lm"
    tok = TextTokenizer.train_bpe(corpus.texts(corpus.train), vocab_size=120)
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=tok.vocab_size, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                 num_key_value_heads=2, intermediate_size=128, tie_word_embeddings=True,
                                 bos_token_id=tok.bos_id, eos_token_id=tok.eos_id)).save_pretrained(path)
    tok.save(path)
    return path


def test_fsdp_two_ranks_match_one_process_and_a_kill_resumes_exactly(run_config, tmp_path):
    """Scratch model. The FSDP run is killed (kill -9, rank 0) inside its step-4 save, after logging step 4:
    the log of that run is the FSDP run uninterrupted; --resume from step 2 gives it again bitwise."""
    from transformers import AutoModelForCausalLM

    from dmlm.training.train import train

    single = train(run_config(tmp_path / "one" / "model", *COMMON, "train.grad_accum=2"))
    cfg = run_config(tmp_path / "two" / "model", *COMMON, "train.grad_accum=1", "train.parallel=fsdp")
    config = write_config(cfg, tmp_path / "two.yaml")
    out = Path(cfg.train.out)
    killed = torchrun(config, port=29631, env={"DMLM_FAULT": "state@4"}, check=False)
    assert killed.returncode != 0
    uninterrupted = steps(out)
    assert_same_run(steps(single), uninterrupted, exact=False)

    state = out / "training_state"  # the step-2 save: each rank's shard, no whole-optimizer file
    assert json.loads((state / "progress.json").read_text())["step"] == 2
    assert sorted(p.name for p in (state / SHARDS_DIR).iterdir()) == [".metadata", "__0_0.distcp", "__1_0.distcp"]
    assert not (state / "optimizer.pt").exists()
    sums = json.loads((out / "checksums.json").read_text())["sha256"]
    assert f"training_state/{SHARDS_DIR}/__1_0.distcp" in sums  # the shards are checksummed like every file
    shutil.copytree(out, tmp_path / "at2" / "model")  # for the world-size change below, with its log
    shutil.copy(f"{out}.log.jsonl", tmp_path / "at2" / "model.log.jsonl")

    torchrun(config, port=29632, resume=True)
    assert_same_run(steps(out), uninterrupted, exact=True)  # resumed == uninterrupted, bitwise
    assert_close_weights(single, out)
    assert AutoModelForCausalLM.from_pretrained(out).num_parameters() > 0  # the consolidated plain folder

    # 2 ranks x grad_accum 1 -> 1 process x grad_accum 2: the shards resharded into one unwrapped model
    one = run_config(tmp_path / "at2" / "model", *COMMON, "train.grad_accum=2", "train.parallel=fsdp")
    train(one, resume=True)
    assert_same_run(steps(one.train.out), uninterrupted, exact=False)
    assert_close_weights(single, Path(one.train.out))


def test_one_process_state_resumes_in_two_ranks(run_config, tmp_path):
    """1 process x grad_accum 2 (train.parallel=fsdp: the state saved sharded) stopped at step 2, resumed by 2 ranks
    x grad_accum 1: the same steps as the uninterrupted single process, to rounding."""
    from dmlm.training.train import train

    single = train(run_config(tmp_path / "one" / "model", *COMMON, "train.grad_accum=2"))
    cfg = run_config(tmp_path / "two" / "model", *COMMON, "train.grad_accum=2", "train.parallel=fsdp")
    train(cfg, stop_at=2)
    assert (Path(cfg.train.out) / "training_state" / SHARDS_DIR / ".metadata").is_file()
    resumed = run_config(tmp_path / "two" / "model", *COMMON, "train.grad_accum=1", "train.parallel=fsdp")
    torchrun(write_config(resumed, tmp_path / "two.yaml"), port=29633, resume=True)
    assert_same_run(steps(single), steps(cfg.train.out), exact=False)
    assert_close_weights(single, Path(cfg.train.out))


def test_fsdp_with_adapters_on_a_pretrained_start_matches_one_process(run_config, llm, tmp_path):
    """A pretrained start with LoRA adapters (frozen base weights inside the FSDP units): the same steps."""
    from dmlm.training.train import train

    single = train(run_config(tmp_path / "one" / "model", *COMMON, *LORA, f"model.llm={llm}", "train.grad_accum=2"))
    cfg = run_config(tmp_path / "two" / "model", *COMMON, *LORA, f"model.llm={llm}", "train.grad_accum=1",
                     "train.parallel=fsdp")
    torchrun(write_config(cfg, tmp_path / "two.yaml"), port=29634)
    assert_same_run(steps(single), steps(cfg.train.out), exact=False)
    assert_close_weights(single, Path(cfg.train.out))  # the merged plain models
    state = Path(cfg.train.out) / "training_state"
    assert (state / "adapters.safetensors").is_file() and (state / SHARDS_DIR / ".metadata").is_file()


def test_another_global_batch_is_refused_naming_the_launch(run_config, tmp_path):
    from dmlm.training.train import train
    from dmlm.util.errors import UserError

    cfg = run_config(tmp_path / "model", *COMMON, "train.grad_accum=2", "train.parallel=fsdp")
    train(cfg, stop_at=2)
    other = run_config(tmp_path / "model", *COMMON, "train.grad_accum=3", "train.parallel=fsdp")
    with pytest.raises(UserError, match=r"1 process\(es\) x grad_accum 2 = 2 .* train.grad_accum=2"):
        train(other, resume=True)


def test_export_writes_the_plain_model_from_the_shards(run_config, tmp_path):
    from transformers import AutoModelForCausalLM

    from dmlm.cli import main
    from dmlm.training.train import train

    cfg = run_config(tmp_path / "model", *COMMON, "train.steps=2", "train.parallel=fsdp")
    out = train(cfg)
    assert main(["export", str(out), "-o", str(tmp_path / "plain")]) == 0
    assert not (tmp_path / "plain" / "training_state").exists()
    assert_close_weights(out, tmp_path / "plain", exact=True)
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "plain").num_parameters() > 0
