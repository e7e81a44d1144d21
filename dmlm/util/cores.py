"""How many CPU cores this process may use, and thread pools that do not spin.

Design decisions:
- The count is the process's CPU affinity (`os.sched_getaffinity`), not `os.cpu_count()`: under
  `taskset`, a container's cpuset or a scheduler that pins jobs, the machine's core count
  oversubscribes the cores actually granted, and oversubscribed thread pools wait on each other.
- ONNX Runtime sessions (the neural voice) are built with `allow_spinning=0`: a spinning
  intra-op pool burns a core while it waits for work, which on a 2-core machine with one other
  busy process takes the core that process needs. Measurements: docs/performance.md
  ("Under load").
"""

from __future__ import annotations

import os


def available_cores() -> int:
    """Cores this process may run on (its affinity mask); `os.cpu_count()` where that is unknown."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def onnx_session_options(threads: int):
    """ONNX Runtime options: `threads` intra-op threads, one inter-op thread, no spinning."""
    import onnxruntime

    opts = onnxruntime.SessionOptions()
    opts.intra_op_num_threads = max(1, threads)
    opts.inter_op_num_threads = 1
    opts.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return opts


SPIN_COUNT = "3000"
"""libgomp's spin iterations before a waiting OpenMP thread sleeps (its default: 300,000)."""


def quiet_spin_waits() -> None:
    """OpenMP threads that wait for work spin only briefly (`SPIN_COUNT`) before they sleep; call it at an
    entry point (the CLI, a recipe's main), before torch loads libgomp, which reads it once. A wait
    policy the user set wins. Beside another busy process, long-spinning torch threads wait on each
    other and lose most of their throughput; 3,000 keeps the quiet speed (sleeping at once,
    OMP_WAIT_POLICY=PASSIVE, does not): docs/performance.md, "Under load". A library does not change
    its importer's environment, so `import dmlm` does not call this."""
    if "OMP_WAIT_POLICY" not in os.environ:
        os.environ.setdefault("GOMP_SPINCOUNT", SPIN_COUNT)
