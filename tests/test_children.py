"""`run_child`: a SIGTERM to dmlm stops the child it runs (torchrun and its ranks) too."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_sigterm_reaches_the_child_and_stops_the_parent(tmp_path):
    pid_file = tmp_path / "child.pid"
    child = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(600)"
    parent = textwrap.dedent(f"""
        import sys
        from dmlm.util.children import run_child
        rc = run_child([sys.executable, "-c", {child!r}])
        print("child ended by itself", rc)
    """)
    proc = subprocess.Popen([sys.executable, "-c", parent], stdout=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not pid_file.is_file() or not pid_file.read_text():
        assert time.time() < deadline and proc.poll() is None, "the child never started"
        time.sleep(0.1)
    child_pid = int(pid_file.read_text())
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 128 + signal.SIGTERM  # stopped as a SIGTERM stops it ...
    assert "ended by itself" not in proc.stdout.read()
    deadline = time.time() + 10
    while _alive(child_pid) and time.time() < deadline:
        time.sleep(0.1)
    assert not _alive(child_pid), "the child outlived its stopped parent"  # ... and took its child along


def test_the_child_status_comes_back_and_the_handler_is_restored():
    from dmlm.util.children import run_child

    before = signal.getsignal(signal.SIGTERM)
    assert run_child([sys.executable, "-c", "raise SystemExit(3)"], env=dict(os.environ)) == 3
    assert run_child([sys.executable, "-c", "pass"]) == 0
    assert signal.getsignal(signal.SIGTERM) == before
