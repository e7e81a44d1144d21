"""`dmlm train` under torchrun: several ranks on one machine, started and waited for by this process.

Design decisions:
- The ranks run the CLI (`python -m dmlm.cli train CONFIG`), so a distributed run is exactly
  the run a user starts by hand; the resolved run config is written to `config_path` first.
- On a CPU each rank gets `available_cores() // processes` threads (two single-thread ranks on
  a 2-core machine train ~30 % faster than one process with two threads) and gloo talks over
  the loopback interface; the rendezvous port is a free one picked here.
- A SIGTERM to this process stops the ranks too (`dmlm.util.children.run_child`).
"""

from __future__ import annotations

import os
import socket
import sys
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
