"""The package boundaries hold: no import cycle (deferred imports included), Hydra and OmegaConf only in `cli/` and
`config/`, and the imports between packages are exactly the table drawn in docs/architecture.md."""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "lmlab"
FOUNDATION = {"lmlab", "errors", "io", "terminal"}
"""Modules every package may import: the package root (its version), the error type, crash-safe writes and text
made safe for a terminal."""
CONFIG_PACKAGES = {"cli", "config"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(name: str) -> bool:
    path = PACKAGE.parent / name.replace(".", "/")
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imports(path: Path) -> set[str]:
    """Every module `path` imports, at the top or inside functions (`from a import b` counts `a.b` when b is one)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names if is_module(f"{node.module}.{a.name}")}
    return found


def module_graph() -> dict[str, set[str]]:
    return {module_name(p): imports(p) for p in sorted(PACKAGE.rglob("*.py"))}


def package_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def allowed_imports() -> dict[str, set[str]]:
    """The `| package | may import |` table of docs/architecture.md."""
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    table = {}
    for package, targets in re.findall(r"^\| `(\w+)/` \|([^|]*)\|", text, flags=re.M):
        table[package] = set(re.findall(r"`(\w+)/`", targets))
    assert table, "docs/architecture.md has no package table"
    return table


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle among lmlab's modules, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node], _ = 1, path.append(node)
        for target in sorted(graph.get(node, ())):
            if target not in graph:
                continue
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target not in state and (cycle := visit(target)):
                return cycle
        state[node], _ = 2, path.pop()
        return None

    return next((c for node in sorted(graph) if node not in state and (c := visit(node))), None)


def test_no_import_cycle() -> None:
    assert find_cycle(module_graph()) is None


def test_the_cycle_finder_finds_a_deferred_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]


def test_hydra_and_omegaconf_only_in_cli_and_config() -> None:
    offenders = {
        module: sorted(t for t in targets if t.split(".")[0] in ("hydra", "omegaconf"))
        for module, targets in module_graph().items()
        if package_of(module) not in CONFIG_PACKAGES
    }
    assert {m: t for m, t in offenders.items() if t} == {}


def test_imports_between_packages_are_the_documented_ones() -> None:
    used: dict[str, set[str]] = defaultdict(set)
    for module, targets in module_graph().items():
        source = package_of(module)
        for target in (t for t in targets if t.startswith("lmlab")):
            if (package := package_of(target)) not in FOUNDATION | {source}:
                used[source].add(package)
    allowed = allowed_imports()
    packages = {package_of(m) for m in module_graph()} - FOUNDATION - {"__main__"}
    assert packages == set(allowed), "every package has one row in docs/architecture.md's table"
    assert {p: sorted(used[p]) for p in packages if p != "cli"} == {
        p: sorted(allowed[p]) for p in packages if p != "cli"
    }
    assert used["cli"] <= allowed["cli"]
