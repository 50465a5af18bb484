"""The package's shape: the layer order of docs/architecture.md holds for every import (ast), there
are no import circles, and every public class and function has a docstring."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "hsk_cache"
ARCHITECTURE = ROOT / "docs" / "architecture.md"


def layers() -> dict[str, int]:
    """{unit: layer} from the table of docs/architecture.md: rows ``| N | `unit`, `unit` | … |``."""
    table = ARCHITECTURE.read_text().split("<!-- layers -->")[1]
    out = {}
    for row in re.finditer(r"^\|\s*(\d+)\s*\|([^|]*)\|", table, re.M):
        for unit in re.findall(r"`([\w.]+)`", row.group(2)):
            out[unit] = int(row.group(1))
    return out


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def unit_of(module: str) -> str:
    """The layer unit of ``hsk_cache.a.b``: ``a`` (a top-level module or a subpackage)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "hsk_cache"


def imports(path: Path) -> set[str]:
    """hsk_cache modules ``path`` imports (at any depth of the file, under TYPE_CHECKING too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("hsk_cache"):
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                found.add(
                    candidate
                    if (PACKAGE / Path(*candidate.split(".")[1:])).with_suffix(".py").exists()
                    or (PACKAGE / Path(*candidate.split(".")[1:]) / "__init__.py").exists()
                    else node.module
                )
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("hsk_cache")}
    return found


def graph() -> dict[str, set[str]]:
    return {module_name(p): imports(p) for p in PACKAGE.rglob("*.py")}


def test_every_module_belongs_to_a_layer_of_the_architecture_page():
    order = layers()
    units = {unit_of(m) for m in graph()} - {"hsk_cache"}
    assert units - set(order) == set(), "units missing from docs/architecture.md's layer table"
    assert set(order) - units == set(), "the layer table names units that do not exist"


def test_no_module_imports_a_layer_above_its_own():
    order, bad = layers(), []
    for module, targets in graph().items():
        unit = unit_of(module)
        if unit == "hsk_cache":  # the public API imports from every layer
            continue
        for target in targets:
            other = unit_of(target)
            if other == "hsk_cache":
                bad.append(f"{module} imports the package root (the public API) instead of a module")
            elif other != unit and order[other] >= order[unit]:
                bad.append(f"{module} (layer {order[unit]}) imports {target} (layer {order[other]})")
    assert not bad, "\n".join(bad)


def test_no_import_circles():
    edges = {m: {t for t in targets if t in graph_modules()} for m, targets in graph().items()}
    state: dict[str, int] = {}
    cycles = []

    def visit(node, stack):
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(" → ".join(stack[stack.index(nxt) :] + [nxt]) if nxt in stack else nxt)
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    packages = {module_name(p) for p in PACKAGE.rglob("__init__.py")}
    cycles = [c for c in cycles if not any(c.startswith(p + " →") for p in packages)]  # a package and its own modules
    assert not cycles, "\n".join(cycles)


def graph_modules() -> set[str]:
    return {module_name(p) for p in PACKAGE.rglob("*.py")}


def test_the_checker_catches_an_upward_import_and_a_circle(tmp_path, monkeypatch):
    """The checks above can fail: a store module importing training, and a → b → a."""
    assert unit_of("hsk_cache.store.reader") == "store" and layers()["store"] < layers()["training"]
    fake = tmp_path / "hsk_cache"
    (fake / "store").mkdir(parents=True)
    (fake / "training").mkdir()
    for init in (fake / "__init__.py", fake / "store" / "__init__.py", fake / "training" / "__init__.py"):
        init.write_text("")
    (fake / "store" / "reader.py").write_text("from hsk_cache.training import loop\n")
    (fake / "training" / "loop.py").write_text("from hsk_cache.store import reader\n")
    monkeypatch.setattr(__import__(__name__, fromlist=["x"]), "ROOT", tmp_path)
    monkeypatch.setattr(__import__(__name__, fromlist=["x"]), "PACKAGE", fake)
    assert graph() == {
        "hsk_cache": set(),
        "hsk_cache.store": set(),
        "hsk_cache.training": set(),
        "hsk_cache.store.reader": {"hsk_cache.training.loop"},
        "hsk_cache.training.loop": {"hsk_cache.store.reader"},
    }
    try:
        test_no_module_imports_a_layer_above_its_own()
    except AssertionError as err:
        assert "hsk_cache.store.reader (layer" in str(err)
    else:
        raise AssertionError("an upward import went unnoticed")
    try:
        test_no_import_circles()
    except AssertionError as err:
        assert "hsk_cache.store.reader → hsk_cache.training.loop → hsk_cache.store.reader" in str(err)
    else:
        raise AssertionError("an import circle went unnoticed")


def public_without_docstring() -> list[str]:
    """Public classes, functions and methods (names without a leading _) lacking a docstring, in
    modules whose own name is public."""
    missing = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if any(part.startswith("_") and part != "__init__.py" for part in path.relative_to(PACKAGE).parts):
            continue
        tree = ast.parse(path.read_text())
        if not ast.get_docstring(tree):
            missing.append(f"{module_name(path)} (module)")
        for node in tree.body:
            for item in [node, *(node.body if isinstance(node, ast.ClassDef) else [])]:
                if not isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    continue
                if item.name.startswith("_") or (item is not node and node.name.startswith("_")):
                    continue
                if not ast.get_docstring(item):
                    where = f"{node.name}.{item.name}" if item is not node else item.name
                    missing.append(f"{module_name(path)}.{where}")
    return missing


def test_every_public_class_and_function_has_a_docstring():
    missing = public_without_docstring()
    assert not missing, f"{len(missing)} public names without a docstring:\n" + "\n".join(missing)
