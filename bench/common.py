"""Shared helpers for benchmarks: machine facts and the JSON result contract."""

from __future__ import annotations

import json
import os
from pathlib import Path

# where results go: bench/results/, or DMLM_BENCH_RESULTS (the tests point it at a temp folder)
RESULTS = Path(os.environ.get("DMLM_BENCH_RESULTS", Path(__file__).parent / "results"))


def machine() -> str:
    """One line naming the machine (facts from `dmlm.recipes.stages.machine`, shared with the demo report)."""
    from dmlm.recipes.stages import machine as facts

    m = facts()
    bf16 = "native bf16" if m["native_bf16"] else "no native bf16"
    return f"{m['cores']} cores, {m['cpu']} ({bf16}), {m['gpu'] or 'no GPU'}, torch {m['torch']}"


def write_result(name: str, metric: str, unit: str, dmlm: float, baseline: float, higher_is_better: bool, **extra) -> dict:
    res = {"metric": metric, "unit": unit, "dmlm": dmlm, "baseline": baseline, "ratio": dmlm / baseline,
           "higher_is_better": higher_is_better, "machine": machine(), **extra}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(res, indent=1))
    return res
