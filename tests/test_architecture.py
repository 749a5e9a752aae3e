"""The package's layers point one way (README, "Architecture").

Every ``import`` in ``sdar_bench/`` and ``methods/`` counts: at module level, under ``if
TYPE_CHECKING:`` and inside function bodies. A lazy import avoids a cycle at import time but is
still an upward dependency (the lower module cannot be understood, tested or moved without the
upper one), and a ``TYPE_CHECKING`` import is the same dependency for a reader and a type
checker; so neither may close a cycle or point up a layer.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("sdar_bench", "methods")

# Lowest first. A module may import its own layer and the layers below it. The longest
# matching prefix decides, so ``sdar_bench.envs.base`` sits below the engines of ``envs``.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "base",
        (
            "sdar_bench.paths",
            "sdar_bench.jsonl",
            "sdar_bench.locking",
            "sdar_bench.quiet",
            "sdar_bench.distributed",
            "sdar_bench.validation",
            "sdar_bench.retrieval",
            "sdar_bench.token_view",
            "sdar_bench.advantages",
            "sdar_bench.run_files",
            "sdar_bench.envs.base",
            "sdar_bench.envs.parsing",
            "sdar_bench.policy.errors",
            "sdar_bench.policy.options",
        ),
    ),
    ("contract", ("sdar_bench", "sdar_bench.registry", "sdar_bench.objectives")),
    # the components, lowest first: an engine's vocabulary holds its skill texts, and the tiny
    # tokenizers' corpus is the envs' vocabulary
    ("skills and methods", ("sdar_bench.skills", "methods")),
    ("envs", ("sdar_bench.envs",)),
    ("policy", ("sdar_bench.policy",)),
    ("config", ("sdar_bench.config", "sdar_bench.tune_spec")),
    ("trainer", ("sdar_bench.rollout", "sdar_bench.trainer", "sdar_bench.warmstart")),
    ("run", ("sdar_bench.run", "sdar_bench.checkpoint", "sdar_bench.tracking")),
    (
        "suite",
        ("sdar_bench.suite", "sdar_bench.tune", "sdar_bench.plan", "sdar_bench.report"),
    ),
    ("cli", ("sdar_bench.cli", "sdar_bench.__main__")),
)


def modules(root: Path = ROOT) -> dict[str, Path]:
    """Dotted module name → file, for every module of the two packages."""
    found: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _owner(name: str, known: dict[str, Path]) -> str | None:
    """The module of ours that ``name`` (a module or a name inside one) lives in."""
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def import_graph(known: dict[str, Path]) -> dict[str, set[str]]:
    """Module → the modules of ours it imports anywhere in its file."""
    graph: dict[str, set[str]] = {}
    for module, path in known.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                # ``from pkg import sub`` imports the submodule, ``from mod import name`` the module
                names = [
                    f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names
                ]
            else:
                continue
            targets |= {t for n in names if (t := _owner(n, known)) not in (None, module)}
        graph[module] = targets
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def layer_of(module: str) -> int:
    best, rank = -1, -1
    for i, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, rank = len(prefix), i
    return rank


def test_the_graph_sees_every_kind_of_import(tmp_path: Path) -> None:
    """A cycle closed by a lazy or a TYPE_CHECKING import is found, relative imports too."""
    pkg = tmp_path / "sdar_bench"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "low.py").write_text("def f():\n    from sdar_bench.high import g\n")
    (pkg / "high.py").write_text("from . import low\n")
    (pkg / "a.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from sdar_bench.b import X\n"
    )
    (pkg / "b.py").write_text("import sdar_bench.a\n")
    (tmp_path / "methods").mkdir()
    graph = import_graph(modules(tmp_path))
    assert cycles(graph) == [
        ["sdar_bench.a", "sdar_bench.b"],
        ["sdar_bench.high", "sdar_bench.low"],
    ]


def test_no_import_cycles() -> None:
    assert cycles(import_graph(modules())) == []


def test_every_module_has_a_layer() -> None:
    assert [m for m in modules() if layer_of(m) < 0] == []


def test_imports_point_down() -> None:
    graph = import_graph(modules())
    upward = sorted(
        f"{src} ({LAYERS[layer_of(src)][0]}) imports {dst} ({LAYERS[layer_of(dst)][0]})"
        for src, targets in graph.items()
        for dst in targets
        if layer_of(dst) > layer_of(src)
    )
    assert upward == []


def test_lazy_exports_resolve_and_match_all() -> None:
    """The packages that export lazily (PEP 562) list every name in ``__all__`` and each one
    loads: a name added to one table but not the other would fail only at a user's import."""
    import importlib

    for name in ("sdar_bench", "sdar_bench.policy"):
        package = importlib.import_module(name)
        assert sorted(package.__all__) == sorted(package._LAZY), name
        for attr in package.__all__:
            assert getattr(package, attr) is not None
    from sdar_bench import TokenView, get_method
    from sdar_bench.registry import get_method as registry_get_method
    from sdar_bench.token_view import TokenView as ViewClass

    assert (TokenView, get_method) == (ViewClass, registry_get_method)
