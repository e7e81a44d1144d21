"""The code keeps the shape it was given: short functions, and a training run that reads in one screen."""

from __future__ import annotations

import ast
from pathlib import Path

from bench.function_lengths import function_lengths

ROOT = Path(__file__).resolve().parents[1]
LIMIT = 80
"""No function in dmlm/ is longer, unless its docstring says why with a line starting `Long:`."""


def _docstring(where: str, name: str) -> str:
    path, line = where.rsplit(":", 1)
    for node in ast.walk(ast.parse((ROOT / path).read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.lineno == int(line):
            return ast.get_docstring(node) or ""
    return ""


def test_no_function_is_longer_than_the_limit_without_a_reason():
    long = [(n, w, f) for n, w, f in function_lengths(ROOT) if n > LIMIT]
    unexplained = [f"{f} ({w}, {n} lines)" for n, w, f in long
                   if not any(x.strip().startswith("Long:") for x in _docstring(w, f).splitlines())]
    assert not unexplained, f"functions over {LIMIT} lines with no `Long:` note: {unexplained}"


def test_the_length_bench_sees_long_functions(tmp_path):
    """Self-test: a 90-line function is measured as 90 lines."""
    (tmp_path / "dmlm").mkdir()
    body = "\n".join(f"    x{i} = {i}" for i in range(89))
    (tmp_path / "dmlm" / "m.py").write_text(f"def f():\n{body}\n")
    assert function_lengths(tmp_path)[0][::2] == (90, "f")
