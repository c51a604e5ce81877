"""Imports run downhill only, and the top-level packages have no import circles (issue 11).

Checked statically over every module (imports inside functions included, since a lazy import still couples two
packages): ``cli → fleet → pipeline → bundle/reporting/benchmark → backends/export/compression/evaluation →
models/data/training/agreement → core → errors``. Same-level imports are allowed, circles between top-level
packages are not. Run it alone with ``pytest tests/test_layering.py``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import modelport

ROOT = Path(modelport.__file__).parent

LEVELS = {
    "cli": 90,
    "__main__": 90,
    "__init__": 90,
    "api": 90,
    "fleet": 85,
    "pipeline": 80,
    "bundle": 70,
    "reporting": 70,
    "benchmark": 70,
    "backends": 60,
    "export": 60,
    "compression": 60,
    "evaluation": 60,
    "models": 50,
    "data": 50,
    "training": 50,
    "agreement": 50,
    "core": 40,
    "errors": 30,
}


def _top(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _edges() -> set[tuple[str, str, str]]:
    """(importer top-level package, imported top-level package, importing file) for every modelport import."""
    edges = set()
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT)
        if rel.parts[0] == "bundle" and "template" in rel.parts:
            continue  # the standalone run.py imports nothing of modelport
        src = rel.parts[0].removesuffix(".py")
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                if node.module == "modelport":
                    names = [f"modelport.{a.name}" for a in node.names]
                elif node.module.startswith("modelport."):
                    names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names if a.name.startswith("modelport.")]
            for name in names:
                dst = _top(name)
                if dst != src:
                    edges.add((src, dst, rel.as_posix()))
    return edges


def test_every_top_level_package_has_a_level() -> None:
    tops = {p.name.removesuffix(".py") for p in ROOT.iterdir() if p.suffix == ".py" or (p / "__init__.py").exists()}
    assert tops <= set(LEVELS), f"give these a level in LEVELS: {sorted(tops - set(LEVELS))}"


def test_imports_run_downhill() -> None:
    upward = sorted(
        f"{file}: {src} (level {LEVELS[src]}) imports {dst} (level {LEVELS[dst]})"
        for src, dst, file in _edges()
        if dst in LEVELS and src in LEVELS and LEVELS[dst] > LEVELS[src]
    )
    assert not upward, "upward imports:\n" + "\n".join(upward)


def test_no_circles_between_top_level_packages() -> None:
    graph: dict[str, set[str]] = {}
    for src, dst, _ in _edges():
        graph.setdefault(src, set()).add(dst)
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        for nxt in sorted(graph.get(node, ())):
            if nxt in stack:
                cycles.append(" → ".join([*stack[stack.index(nxt) :], nxt]))
            elif len(stack) < len(LEVELS):
                visit(nxt, [*stack, nxt])

    for start in sorted(graph):
        visit(start, [start])
    assert not cycles, "import circles:\n" + "\n".join(sorted(set(cycles)))


def test_no_function_in_the_pipeline_runs_over_80_lines() -> None:
    """The pipeline reads as steps: a function over 80 lines (signature and docstring included) hides one."""
    long = []
    for path in (ROOT / "pipeline").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.end_lineno - node.lineno + 1 > 80:
                long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1})")
    assert not long, "split these:\n" + "\n".join(sorted(long))
