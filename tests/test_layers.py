"""The package's dependencies point one way: a lower layer never imports a higher one.

cli / recipes / serve -> api -> inference, evaluation, training -> tasks, modeling, decoding
-> tokenizers, vocab, vocoder, metrics -> data -> util. Imports inside functions count too
(a lazy import is still a dependency). Modules of one layer may import each other.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "dmlm"

LAYERS = [  # lowest first; a module belongs to the first entry its name starts with
    ["dmlm.util"],
    ["dmlm.data"],
    ["dmlm.tokenizers", "dmlm.vocab", "dmlm.vocoder", "dmlm.metrics"],
    ["dmlm.tasks", "dmlm.modeling", "dmlm.decoding"],
    ["dmlm.inference", "dmlm.evaluation", "dmlm.training"],
    ["dmlm.api"],
    ["dmlm.recipes", "dmlm.cli", "dmlm.serve"],
]


def layer_of(module: str) -> int | None:
    if module == "dmlm":  # the package root re-exports the API lazily: above everything
        return len(LAYERS)
    for rank, prefixes in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return rank
    return None


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def imports(path: Path, module: str) -> set[str]:
    found = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "dmlm"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the package
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                name = f"{base}.{node.module}" if node.module else base
            else:
                name = node.module or ""
            if name.split(".")[0] == "dmlm":
                found.add(name)
                # `from dmlm import api` / `from dmlm.util import assets`: the submodules are the dependency
                found |= {f"{name}.{a.name}" for a in node.names if f"{name}.{a.name}" in MODULES}
    return found


MODULES = modules()


def test_every_module_has_a_layer():
    assert not [m for m in MODULES if layer_of(m) is None], "add the new package to LAYERS"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down(module):
    rank = layer_of(module)
    upward = []
    for target in sorted(imports(MODULES[module], module)):
        t = layer_of(target)
        if t is not None and t > rank and not (target == "dmlm" and module.startswith("dmlm")):
            upward.append(f"{target} (layer {t})")
    assert not upward, f"{module} (layer {rank}) imports a higher layer: {', '.join(upward)}"


def test_the_check_catches_an_upward_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from dmlm.api import DMLM\n    import dmlm.training.train\n")
    found = imports(bad, "dmlm.util.bad")
    assert {"dmlm.api", "dmlm.training.train"} <= found
    assert max(layer_of(t) for t in found) > layer_of("dmlm.util.bad")
