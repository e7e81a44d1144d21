"""One owner per fact: a fact the package knows (a constant, a file name, a field, a way of doing a
thing) is spelled in one module, and every other module asks that one.

In the spirit of `test_layers.py`: a table of facts, each with its owning module and a detector
that finds the fact re-derived in source code (by the syntax tree, so comments and docstrings may
still name it). A self-test feeds every detector a snippet that re-derives its fact, so a detector
that stops catching anything fails here rather than passing silently.
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCANNED = ("dmlm", "bench")  # tests may spell facts to check them


def _docstrings(tree: ast.AST) -> set[int]:
    """ids of the string constants that are docstrings (module, class, function, attribute notes)."""
    out = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list):
            for stmt in body:
                if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant) and isinstance(stmt.value.value, str):
                    out.add(id(stmt.value))
    return out


def _strings(tree: ast.AST) -> Iterator[tuple[int, str]]:
    skip = _docstrings(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
            yield node.lineno, node.value


def _string_equal(*values: str) -> Callable[[ast.AST], Iterator[int]]:
    def find(tree: ast.AST) -> Iterator[int]:
        return (line for line, s in _strings(tree) if s in values)
    return find


def _string_contains(*parts: str) -> Callable[[ast.AST], Iterator[int]]:
    def find(tree: ast.AST) -> Iterator[int]:
        return (line for line, s in _strings(tree) if any(p in s for p in parts))
    return find


def _number(*values: int) -> Callable[[ast.AST], Iterator[int]]:
    def find(tree: ast.AST) -> Iterator[int]:
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and type(node.value) in (int, float) and node.value in values:
                yield node.lineno
    return find


def _whisper_window(tree: ast.AST) -> Iterator[int]:
    """30 × the sample rate (or its 480,000 samples) computed anywhere."""
    yield from _number(480_000)(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult):
            sides = (node.left, node.right)
            if any(isinstance(s, ast.Constant) and s.value == 30 for s in sides) and any(
                    "SAMPLE_RATE" in ast.unparse(s) or "16" in ast.unparse(s) for s in sides):
                yield node.lineno


def _task_names() -> set[str]:
    from dmlm.tasks import TASKS

    return set(TASKS)


def _task_name_tests(tree: ast.AST) -> Iterator[int]:
    """A task name compared (`== "t2s"`, `in ("i2t", "image_lm")`) or a spec split by hand (`spec.split(":")`)."""
    names = _task_names()

    def consts(node: ast.AST) -> set[str]:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return {node.value}
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            return {e.value for e in node.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)}
        return set()

    for node in ast.walk(tree):
        if isinstance(node, ast.Compare) and any(consts(x) & names for x in [node.left, *node.comparators]):
            yield node.lineno
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr in ("split", "partition", "rsplit") and node.args
                and isinstance(node.args[0], ast.Constant) and node.args[0].value == ":"):
            yield node.lineno


def _jsonl_reading(tree: ast.AST) -> Iterator[int]:
    """`json.loads(line)` over the lines of a file: a JSONL reader of its own."""
    for node in ast.walk(tree):
        if isinstance(node, (ast.ListComp, ast.GeneratorExp, ast.For)):
            body = node.elt if not isinstance(node, ast.For) else ast.Module(body=node.body, type_ignores=[])
            loads = any(isinstance(n, ast.Call) and ast.unparse(n.func) == "json.loads" for n in ast.walk(body))
            iters = [g.iter for g in node.generators] if not isinstance(node, ast.For) else [node.iter]
            lines = any("splitlines" in ast.unparse(i) or ast.unparse(i).startswith("open(") for i in iters)
            if loads and lines:
                yield node.lineno


def _folder_swap(tree: ast.AST) -> Iterator[int]:
    """Renaming a path into place (`Path.rename`, `os.rename`): the atomic swap re-written."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "rename":
            yield node.lineno


@dataclass(frozen=True)
class Fact:
    name: str
    owner: str  # the module (a file, or a package folder ending in /) allowed to spell it
    find: Callable[[ast.AST], Iterator[int]]
    example: str  # a line that re-derives the fact: the self-test expects `find` to catch it


FACTS = [
    Fact("the sample rate", "dmlm/util/audio.py", _number(16_000), "rate = 16_000"),
    Fact("Whisper's 30 s window", "dmlm/tokenizers/features.py", _whisper_window, "n = 30 * SAMPLE_RATE"),
    Fact("training-state file names", "dmlm/training/state.py",
         _string_equal("optimizer.pt", "rng.json", "progress.json"), 'p = state / "progress.json"'),
    Fact("a run's log files", "dmlm/training/runlog.py", _string_contains(".log.jsonl", ".tb"),
         'log = out.with_name(out.name + ".log.jsonl")'),
    Fact("the held-out-voice field", "dmlm/data/manifest.py", _string_equal("heldout_voice"),
         'held = r.custom.get("heldout_voice")'),
    Fact("task names", "dmlm/tasks/", _task_name_tests, 'images = spec.split(":")[0] in ("i2t", "image_lm")'),
    Fact("JSONL reading", "dmlm/util/io.py", _jsonl_reading,
         "rows = [json.loads(x) for x in path.read_text().splitlines()]"),
    Fact("the atomic folder swap", "dmlm/util/io.py", _folder_swap, "tmp.rename(out)"),
]


def _sources() -> Iterator[tuple[str, ast.AST]]:
    for top in SCANNED:
        for path in sorted((ROOT / top).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            yield rel, ast.parse(path.read_text(), rel)


def _owned(fact: Fact, rel: str) -> bool:
    return rel.startswith(fact.owner) if fact.owner.endswith("/") else rel == fact.owner


def violations(fact: Fact, sources: list[tuple[str, ast.AST]]) -> list[str]:
    return [f"{rel}:{line}" for rel, tree in sources if not _owned(fact, rel) for line in sorted(set(fact.find(tree)))]


SOURCES = list(_sources())


@pytest.mark.parametrize("fact", FACTS, ids=[f.name for f in FACTS])
def test_fact_has_one_owner(fact):
    assert (ROOT / fact.owner).exists(), f"{fact.owner}: the owner of {fact.name} is gone"
    found = violations(fact, SOURCES)
    assert not found, f"{fact.name} is owned by {fact.owner} but re-derived at: {', '.join(found)}"


@pytest.mark.parametrize("fact", FACTS, ids=[f.name for f in FACTS])
def test_detector_catches_a_re_derivation(fact):
    """Self-test: the fact re-derived in a module outside its owner is caught; in the owner it is not."""
    snippet = ast.parse(f"import json\n\n\ndef f(spec, r, out, tmp, state, path):\n    {fact.example}\n")
    assert violations(fact, [("dmlm/elsewhere.py", snippet)]) == ["dmlm/elsewhere.py:5"]
    owner_file = fact.owner + "x.py" if fact.owner.endswith("/") else fact.owner
    assert violations(fact, [(owner_file, snippet)]) == []


def test_docstrings_and_comments_do_not_count():
    quiet = ast.parse('"""Reads progress.json; held-out voices are `heldout_voice` at 16000 Hz."""\n# tmp.rename(out)\n')
    assert all(violations(f, [("dmlm/elsewhere.py", quiet)]) == [] for f in FACTS)


def private_imports(sources: list[tuple[str, ast.AST]]) -> list[str]:
    """`from dmlm.x import _helper`: a module reaching into another's private helper (tests may)."""
    return [f"{rel}:{node.lineno} {node.module}.{a.name}" for rel, tree in sources for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "dmlm"
            for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]


def test_no_module_imports_another_modules_private_helper():
    assert private_imports(SOURCES) == []
    caught = ast.parse("def f():\n    from dmlm.recipes.demo import _cached\n")  # self-test: a lazy import counts
    assert private_imports([("dmlm/recipes/study.py", caught)]) == ["dmlm/recipes/study.py:2 dmlm.recipes.demo._cached"]
