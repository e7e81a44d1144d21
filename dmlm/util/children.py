"""Child processes that stop with their parent.

`dmlm demo` and `dmlm study` train under torchrun in a child process. Ctrl-C reaches the whole
process group, but a SIGTERM (`kill PID`, a batch scheduler's stop, a container shutting down) is
sent to the parent alone: without help the ranks would train on as orphans, holding the cores and
writing into a run folder that a resumed study also writes. `run_child` forwards it.
"""

from __future__ import annotations

import signal
import subprocess
import threading
from collections.abc import Sequence


def run_child(cmd: Sequence[str], env: dict[str, str] | None = None, grace_seconds: float = 30.0) -> int:
    """Run `cmd` to its end and return its exit status. A SIGTERM to this process is passed on to the
    child (torchrun passes it to its ranks), waited for, and then ends this process with status
    128 + 15 as the SIGTERM would have. On any other interruption (Ctrl-C) the child gets
    `grace_seconds` to finish before it is terminated."""
    procs: list[subprocess.Popen] = []

    def forward(signum, frame):
        # no wait() here: the handler runs inside the main thread's wait(), which holds Popen's
        # non-reentrant wait lock; the `finally` below waits once the exception has left it
        for p in procs:
            p.send_signal(signal.SIGTERM)
        raise SystemExit(128 + signum)

    main = threading.current_thread() is threading.main_thread()  # only the main thread may set handlers
    previous = signal.signal(signal.SIGTERM, forward) if main else None
    try:
        procs.append(subprocess.Popen(list(cmd), env=env))
        return procs[0].wait()
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous)
        if procs and procs[0].poll() is None:
            try:
                procs[0].wait(timeout=grace_seconds)
            except subprocess.TimeoutExpired:
                procs[0].terminate()
                procs[0].wait()
