"""`dmlm demo`: the whole pipeline on the embedded mini-world corpus, offline, on a CPU.

prepare (espeak-ng speech) -> codebook fit (Whisper-base k-means) -> tokenize -> train
(from-scratch Llama, length-normalized loss) -> evaluate on held-out sentences (training
voices and one unseen voice) -> runs/demo/{report.md, report.json, loss.png}.

Every stage skips work already done, so an interrupted demo re-run continues where it
stopped (training resumes from its last saved step).
"""

from __future__ import annotations

import json
import logging
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from dmlm.config import RunConfig, dump_config, load_config
from dmlm.data.manifest import atomic_write_text, read_manifest
from dmlm.data.prepare import PrepareConfig, prepare
from dmlm.tokenizers.speech import CodebookSettings

log = logging.getLogger(__name__)


@dataclass
class DemoConfig:
    out: str = "runs/demo"
    """Output folder: data/, units/, codebook.safetensors, model/, report.*"""
    prepare: PrepareConfig = field(default_factory=PrepareConfig)
    codebook: CodebookSettings = field(default_factory=CodebookSettings)
    codebook_fit_utts: int = 1500
    """Training utterances whose frames the k-means is fitted on."""
    run: RunConfig = field(default_factory=RunConfig)
    examples: int = 8
    """Example transcripts shown in report.md."""
    processes: int = 2
    """Training processes (torchrun, gloo on CPU). On a 2-core CPU two single-thread ranks train
    ~30 % faster than one process with two threads; 1 trains in this process."""


def machine() -> dict:
    import os

    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
            "torch_threads": torch.get_num_threads(), "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "python": platform.python_version(), "torch": torch.__version__}


def fit_demo_codebook(cfg: DemoConfig, train_manifest: Path, path: Path):
    from dmlm.tokenize import load_record_audio
    from dmlm.tokenizers.speech import Codebook, fit_codebook

    if path.is_file():
        cb = Codebook.load(path)
        if cb.settings.reproducing() | {"frame_rate": 0} == CodebookSettings(**asdict(cfg.codebook)).reproducing() | {"frame_rate": 0}:
            return cb
        raise ValueError(f"{path} exists with other settings; delete it or use another demo folder")
    records = read_manifest(train_manifest)[: cfg.codebook_fit_utts]
    cb = fit_codebook((load_record_audio(train_manifest, r) for r in records), CodebookSettings(**asdict(cfg.codebook)),
                      total=len(records))
    cb.save(path)
    return cb


def run_demo(cfg: DemoConfig, resume: bool = True) -> dict:
    from dmlm.asr import evaluate_asr
    from dmlm.tokenize import tokenize_manifest
    from dmlm.train import plot_losses, train

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "demo.yaml", dump_config(cfg))
    stages: dict[str, float] = {}
    t_all = time.time()

    def stage(name: str):
        class _S:
            def __enter__(self):
                self.t = time.time()
                print(f"\n== {name} ==", flush=True)

            def __exit__(self, *exc):
                stages[name] = round(time.time() - self.t, 1)
                if exc[0] is None:
                    print(f"== {name}: {stages[name]:.0f} s", flush=True)

        return _S()

    with stage("prepare"):
        manifests = prepare(cfg.prepare, out / "data")
    with stage("codebook"):
        cb = fit_demo_codebook(cfg, manifests["train"], out / "codebook.safetensors")
    with stage("tokenize"):
        for split in ("train", "dev", "test"):
            tokenize_manifest(cb, manifests[split], out / "units")
    run = cfg.run
    run.data.train, run.data.dev = str(manifests["train"]), str(manifests["dev"])
    run.data.units, run.data.codebook = str(out / "units"), str(out / "codebook.safetensors")
    run.train.out = str(out / "model")
    with stage("train"):
        if cfg.processes > 1:
            train_distributed(run, out / "train.yaml", cfg.processes, resume)
        else:
            train(run, resume=resume)
    with stage("evaluate"):
        rep = evaluate_asr(out / "model", manifests["test"], out / "eval_test.json", units=out / "units" / "test")
    plot_losses(out / "model.log.jsonl", out / "loss.png")
    minutes = (time.time() - t_all) / 60
    train_log = [json.loads(x) for x in (out / "model.log.jsonl").read_text().splitlines()]
    last = [r for r in train_log if "tokens_per_s" in r]
    report = {
        "tasks": {"asr": {**{k: rep[k] for k in ("wer", "cer", "wer_heldout_voice", "cer_heldout_voice",
                                                 "sentence_accuracy", "utterances", "ref_words")},
                          "utterances_heldout_voice": rep["heldout_voice"]["utterances"],
                          "sentence_accuracy_heldout_voice": rep["heldout_voice"]["sentence_accuracy"]}},
        "machine": machine(),
        "minutes": round(minutes, 2),
        "stages_seconds": stages,
        "train": {"padding_share": json.loads((out / "model" / "dmlm.json").read_text())["model_summary"].get("padding_share"),
                  "steps": train_log[-1]["step"], "tokens_per_s": last[-1]["tokens_per_s"] if last else None,
                  "final_dev_loss": next((r["dev_loss"] for r in reversed(train_log) if "dev_loss" in r), None)},
        "codebook": {"fingerprint": cb.fingerprint, **cb.settings.reproducing()},
        "data": {s: len(read_manifest(p)) for s, p in manifests.items()},
        "model": str((out / "model").resolve()),
        "config": asdict(cfg),
    }
    atomic_write_text(out / "report.json", json.dumps(report, indent=1, default=str))
    atomic_write_text(out / "report.md", render_markdown(report, out, cfg.examples))
    return report


def train_distributed(run: RunConfig, config_path: Path, processes: int, resume: bool) -> None:
    """`dmlm train` under torchrun with `processes` ranks (one thread each on CPU)."""
    import os
    import socket
    import subprocess
    import sys

    atomic_write_text(config_path, dump_config(run))
    with socket.socket() as sock:  # a free port for the rendezvous
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = dict(os.environ)
    if not torch.cuda.is_available():
        env.update(OMP_NUM_THREADS=str(max(1, (os.cpu_count() or processes) // processes)), GLOO_SOCKET_IFNAME="lo")
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={processes}", "--master_addr=127.0.0.1",
           f"--master_port={port}", "-m", "dmlm.cli", "train", str(config_path)] + (["--resume"] if resume else [])
    print(" ".join(cmd), flush=True)
    rc = subprocess.run(cmd, env=env).returncode
    if rc != 0:
        raise ValueError(f"training under torchrun failed (exit status {rc}); the ranks' errors are printed above")


def render_markdown(report: dict, out: Path, n_examples: int) -> str:
    asr = report["tasks"]["asr"]
    rows = [json.loads(x) for x in (out / "eval_test.hyps.jsonl").read_text().splitlines()]
    ex = [r for r in rows if not r["heldout_voice"]][:n_examples] + [r for r in rows if r["heldout_voice"]][: n_examples // 2]
    lines = [
        f"# dmlm demo report ({report['config']['prepare']['corpus']})", "",
        f"Machine: {report['machine']['cores']} cores, {report['machine']['cpu']}, GPU: {report['machine']['gpu']}; "
        f"total {report['minutes']:.1f} min ({', '.join(f'{k} {v:.0f} s' for k, v in report['stages_seconds'].items())}).", "",
        "| task | test split | utterances | WER % | CER % | sentence acc. % |", "|---|---|---|---|---|---|",
        f"| ASR | training voices | {asr['utterances']} | {asr['wer']:.2f} | {asr['cer']:.2f} | {asr['sentence_accuracy']:.1f} |",
        f"| ASR | held-out voice | {asr['utterances_heldout_voice']} | {asr['wer_heldout_voice']:.2f} | "
        f"{asr['cer_heldout_voice']:.2f} | {asr['sentence_accuracy_heldout_voice']:.1f} |", "",
        f"Codebook: {report['codebook']['backend']} {report['codebook']['model']} layer {report['codebook']['layer']}, "
        f"k={report['codebook']['k']}, dedup={report['codebook']['dedup']}, fingerprint `{report['codebook']['fingerprint']}`.",
        f"Training: {report['train']['steps']} steps at {report['train']['tokens_per_s'] or 0:.0f} tokens/s; "
        f"final dev loss {report['train']['final_dev_loss']:.4f}.", "",
        "![loss](loss.png)", "", "## Examples (test split)", "", "| id | reference | hypothesis |", "|---|---|---|",
    ]
    lines += [f"| {r['id']} | {r['ref']} | {r['hyp']} |" for r in ex]
    return "\n".join(lines) + "\n"


def load_demo_config(path: str | None, overrides: list[str]) -> DemoConfig:
    return load_config(path, overrides, cls=DemoConfig)
