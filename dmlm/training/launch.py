"""`dmlm train` under torchrun: several ranks on one machine, started and waited for by this process.

Design decisions:
- The ranks run the CLI (`python -m dmlm.cli train CONFIG`), so a distributed run is exactly
  the run a user starts by hand; the resolved run config is written to `config_path` first.
- On a CPU each rank gets `available_cores() // processes` threads (two single-thread ranks on
  a 2-core machine train ~30 % faster than one process with two threads) and gloo talks over
  the loopback interface; the rendezvous port is a free one picked here.
- A SIGTERM to this process stops the ranks too (`dmlm.util.children.run_child`).
- `Launcher` reads an accelerate config file (configs/accelerate/) with accelerate's own loader
  and checks what dmlm relies on, so a launcher config is validated before anyone pays for the
  machines it names (`dmlm train CONFIG --dry-run --launcher FILE`, tests/test_launch_configs.py).
"""

from __future__ import annotations

import os
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from dmlm.training.config import RunConfig
from dmlm.util.children import run_child
from dmlm.util.config import dump_config
from dmlm.util.cores import available_cores
from dmlm.util.errors import UserError
from dmlm.util.io import atomic_write_text


def _free_port() -> int:
    """A free TCP port on the loopback interface for the rendezvous."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def train_distributed(run: RunConfig, config_path: Path, processes: int, resume: bool) -> None:
    """`dmlm train` under torchrun with `processes` ranks (one thread each on a CPU with as many cores)."""
    atomic_write_text(config_path, dump_config(run))
    port = _free_port()
    env = dict(os.environ)
    if not torch.cuda.is_available():
        env.update(OMP_NUM_THREADS=str(max(1, available_cores() // processes)), GLOO_SOCKET_IFNAME="lo")
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={processes}", "--master_addr=127.0.0.1",
           f"--master_port={port}", "-m", "dmlm.cli", "train", str(config_path)] + (["--resume"] if resume else [])
    print(" ".join(cmd), flush=True)
    rc = run_child(cmd, env)  # a SIGTERM to this process stops the ranks too
    if rc != 0:
        raise UserError(f"training under torchrun failed (exit status {rc}); the ranks' errors are printed above")


# -- accelerate launcher configs (configs/accelerate/*.yaml) ------------------------------------

SUPPORTED_LAUNCHES = ("NO", "MULTI_GPU", "FSDP")  # DeepSpeed: not run here, not shipped (configs/accelerate/README.md)


@dataclass(frozen=True)
class Launcher:
    """What an `accelerate config` file asks of a launch, as far as `dmlm train` depends on it."""

    path: Path
    distributed_type: str  # NO, MULTI_GPU (DDP; on a CPU-only machine: gloo ranks) or FSDP
    processes: int  # num_processes: the ranks of all machines together
    machines: int
    gpu: bool  # use_cpu: false
    parallel: str  # what train.parallel=auto becomes under it: ddp or fsdp

    @classmethod
    def load(cls, path: str | Path) -> Launcher:
        """Read and check an accelerate config file: accelerate's own loader (unknown keys and types refused)
        and what dmlm needs (a launch it supports, processes that divide over the machines, FSDP2)."""
        from accelerate.commands.config.config_args import load_config_from_file

        path = Path(path)
        if not path.is_file():
            raise UserError(f"{path}: no such launcher config (see configs/accelerate/)")
        try:
            c = load_config_from_file(str(path))
        except (ValueError, TypeError, KeyError) as e:
            raise UserError(f"{path}: not a valid accelerate config ({e})") from None
        kind = getattr(c.distributed_type, "value", str(c.distributed_type))
        if kind not in SUPPORTED_LAUNCHES:
            raise UserError(f"{path}: distributed_type {kind} is not a launch dmlm trains under (one of "
                            f"{', '.join(SUPPORTED_LAUNCHES)}; DeepSpeed: configs/accelerate/README.md)")
        n, machines = int(c.num_processes or 1), int(c.num_machines or 1)
        if n < 1 or machines < 1 or n % machines:
            raise UserError(f"{path}: num_processes={n} must be a positive multiple of num_machines={machines} "
                            "(it counts the processes of all machines together)")
        if kind == "FSDP" and int((c.fsdp_config or {}).get("fsdp_version", 1)) != 2:
            raise UserError(f"{path}: fsdp_config.fsdp_version must be 2 (dmlm shards with FSDP2's fully_shard)")
        if c.mixed_precision not in ("no", "bf16"):
            raise UserError(f"{path}: mixed_precision={c.mixed_precision}: dmlm trains in fp32 or bf16 "
                            "(train.precision), not fp16")
        return cls(path, kind, n, machines, not c.use_cpu, "fsdp" if kind == "FSDP" else "ddp")
