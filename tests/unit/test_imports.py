"""No import cycle anywhere in netns_lab or ebpf_nodeport: module-level imports (read with ast) form a DAG;
and the CLI starts without pyroute2, BCC or scapy.

Imports inside functions are left out on purpose: they run when called, not when imported,
and are how a module reaches an optional heavy dependency (BCC) late. Run alone to see the
graph's size: python -m pytest -q tests/unit/test_imports.py
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("netns_lab", "ebpf_nodeport")


def module_name(path: Path) -> str:
    """netns_lab/commands/common.py -> netns_lab.commands.common (a package's __init__ is the package)."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_nodes(node: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Import statements that run at import time: everywhere but inside a def or lambda."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            yield child
        yield from import_nodes(child)


def top_level_imports(tree: ast.Module, name: str, is_package: bool, modules: set[str]) -> set[str]:
    """Project modules a module imports at import time (`from pkg import mod` counts as mod)."""
    found: set[str] = set()
    for node in import_nodes(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
            continue
        base = node.module or ""
        if node.level:
            pkg = name.split(".") if is_package else name.split(".")[:-1]
            pkg = pkg[: len(pkg) - node.level + 1]
            base = ".".join(pkg + ([base] if base else []))
        for a in node.names:
            sub = f"{base}.{a.name}"
            found.add(sub if sub in modules else base)
    return {m for m in found if m in modules and m != name}


def import_graph() -> dict[str, set[str]]:
    """Module -> project modules it imports at import time."""
    files = {module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    modules = set(files)
    return {m: top_level_imports(ast.parse(p.read_text()), m, p.name == "__init__.py", modules) for m, p in files.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component of more than one module (or a module importing itself): Tarjan."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in graph.get(v, ()):
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return found


def test_the_finder_sees_a_cycle() -> None:
    """The check can fail: a made-up a -> b -> a is found, a DAG is not."""
    assert cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_graph_is_read() -> None:
    graph = import_graph()
    assert {"netns_lab.commands.lifecycle", "netns_lab.commands.common"} <= graph["netns_lab.cli"]
    assert "netns_lab.state" in graph["netns_lab.lab"]
    assert "ebpf_nodeport.abi" in graph["ebpf_nodeport.loader"]  # a relative import, resolved


def test_no_import_cycle_in_the_project() -> None:
    assert cycles(import_graph()) == []


def test_cli_starts_without_the_heavy_libraries() -> None:
    """Every netns-lab command imports netns_lab.cli first; pyroute2 (a third of the start-up, ~10x that
    under TCG, where the VM suite runs hundreds of commands) and BCC load only where a command uses them."""
    import subprocess
    import sys

    code = "import sys, netns_lab.cli; print(sorted({m.split('.')[0] for m in sys.modules} & {'pyroute2', 'bcc', 'scapy'}))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
