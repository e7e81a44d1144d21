"""The longest functions of the package: `python -m bench.function_lengths [N] [--root DIR]`.

Prints the N longest functions (lines from `def` to the last line of its body) of `dmlm/`, so a
change that grows or splits one can be read before and after (the shape tests hold the limit).
"""

from __future__ import annotations

import argparse
import ast
from pathlib import Path


def function_lengths(root: Path) -> list[tuple[int, str, str]]:
    """(lines, "path:line", name) of every function and method under `root`/dmlm, longest first."""
    rows = []
    for path in sorted((root / "dmlm").rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                rows.append((node.end_lineno - node.lineno + 1, f"{path.relative_to(root)}:{node.lineno}", node.name))
    return sorted(rows, key=lambda r: -r[0])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("n", nargs="?", type=int, default=15, help="how many to print")
    ap.add_argument("--root", default=str(Path(__file__).resolve().parents[1]), help="the repository (default: this one)")
    args = ap.parse_args()
    for lines, where, name in function_lengths(Path(args.root))[: args.n]:
        print(f"{lines:4d}  {name:32s} {where}")


if __name__ == "__main__":
    main()
