"""Shared helpers for benchmarks: machine facts and the JSON result contract."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

# where results go: bench/results/, or DMLM_BENCH_RESULTS (the tests point it at a temp folder)
RESULTS = Path(os.environ.get("DMLM_BENCH_RESULTS", Path(__file__).parent / "results"))


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{os.cpu_count()} cores, {cpu}, {gpu}, torch {torch.__version__}"


def write_result(name: str, metric: str, unit: str, dmlm: float, baseline: float, higher_is_better: bool, **extra) -> dict:
    res = {"metric": metric, "unit": unit, "dmlm": dmlm, "baseline": baseline, "ratio": dmlm / baseline,
           "higher_is_better": higher_is_better, "machine": machine(), **extra}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(res, indent=1))
    return res
