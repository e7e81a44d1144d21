"""Several machines, both on this one: the README's `torchrun --nnodes 2 ... --rdzv_backend c10d` command,
run twice on the loopback interface (node ranks 0 and 1, one process each), trains the same steps as one
process accumulating both ranks' micro-batches (and so as one node with 2 ranks, tests/test_distributed.py).
The command is read from configs/accelerate/README.md, so the documented one is the tested one."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

from test_fsdp import COMMON, assert_same_run, steps, write_config

README = Path(__file__).resolve().parents[1] / "configs" / "accelerate" / "README.md"


def readme_torchrun_command() -> list[str]:
    """The several-machines torchrun command of configs/accelerate/README.md, as argv."""
    text = README.read_text()
    block = re.search(r"^torchrun --nnodes 2 .*?(?<!\\)\n", text, flags=re.S | re.M)
    assert block, f"{README}: no `torchrun --nnodes 2` command"
    return shlex.split(block.group(0).replace("\\\n", " "))


def test_two_nodes_on_loopback_match_one_process(run_config, tmp_path):
    from dmlm.training.train import train

    single = train(run_config(tmp_path / "one" / "model", *COMMON, "train.grad_accum=2"))
    cfg = run_config(tmp_path / "two" / "model", *COMMON, "train.grad_accum=1")
    config = write_config(cfg, tmp_path / "two.yaml")
    argv = readme_torchrun_command()
    subs = {"8": "1", "HOST0:29500": "127.0.0.1:29641", "configs/X.yaml": str(config)}
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    nodes = []
    for rank in (0, 1):
        cmd = [subs.get(a, str(rank) if a == "R" else a) for a in argv]
        assert cmd[:1] == ["torchrun"] and "--rdzv_backend" in cmd and "c10d" in cmd
        nodes.append(subprocess.Popen([sys.executable, "-m", "torch.distributed.run", *cmd[1:]], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    for node in nodes:
        _, err = node.communicate(timeout=180)
        assert node.returncode == 0, err[-3000:]
    assert_same_run(steps(single), steps(cfg.train.out), exact=False)
