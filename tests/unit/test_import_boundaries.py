"""The import rules of docs/architecture.md, enforced on the code.

The table in docs/architecture.md ("Packages and what each may import") is parsed here and is
the only statement of the rules, so the document and the test cannot drift apart. Imports are
read with ``ast`` (including imports inside functions, which is how the CLI loads lazily), so a
rule holds for every code path, not only the ones a test happens to run.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "architecture.md"
TOP_LEVEL = ("shared", "edge_agent", "cloud_trainer", "fleet", "farm_monitor", "bridges", "cropwatch")


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for top in TOP_LEVEL:
        for path in (REPO / top).rglob("*.py"):
            parts = path.relative_to(REPO).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """Every module name an import statement in ``path`` names (absolute, relative resolved)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            out.add(target)
            out.update(f"{target}.{alias.name}" for alias in node.names)
    return out


IMPORTS = {name: _imports(name, path) for name, path in MODULES.items()}


def _table() -> dict[str, dict[str, str]]:
    """Rows of the rules table: unit -> {column: cell}."""
    text = DOC.read_text(encoding="utf-8")
    section = text.split("## Packages and what each may import", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    rows: dict[str, dict[str, str]] = {}
    for line in lines[2:]:
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        row = dict(zip(header, cells, strict=True))
        rows[_names(row["package"])[0]] = row
    return rows


def _names(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


RULES = _table()
UNITS = sorted(RULES, key=len, reverse=True)  # longest first: farm_monitor.db before farm_monitor


def unit_of(module: str) -> str | None:
    return next((u for u in UNITS if module == u or module.startswith(u + ".")), None)


def test_every_project_module_belongs_to_a_unit_of_the_table() -> None:
    assert set(TOP_LEVEL) <= set(RULES), "docs/architecture.md's table must have a row per top-level package"
    assert all(unit_of(m) for m in MODULES)


def test_project_imports_follow_the_table() -> None:
    wrong = []
    for module, targets in IMPORTS.items():
        unit = unit_of(module)
        assert unit is not None
        allowed = set(_names(RULES[unit]["may import (project)"])) | {unit}
        if "everything" in RULES[unit]["may import (project)"]:
            continue
        for target in targets:
            target_unit = unit_of(target) if target.split(".")[0] in TOP_LEVEL else None
            if target_unit is not None and target_unit not in allowed:
                wrong.append(f"{module} imports {target} ({target_unit}); {unit} may import {sorted(allowed)}")
    assert not wrong, "\n".join(sorted(set(wrong)))


def test_libraries_follow_the_table() -> None:
    stdlib = set(sys.stdlib_module_names) | {"__future__"}
    wrong = []
    for module, targets in IMPORTS.items():
        row = RULES[unit_of(module) or ""]
        libraries = {t.split(".")[0] for t in targets} - set(TOP_LEVEL) - stdlib
        rule = row["libraries"]
        if rule.startswith("only"):
            bad = libraries - set(_names(rule))
        else:
            bad = libraries & set(_names(rule.partition("never")[2]))
        wrong += [f"{module} imports {lib} ({row['libraries']})" for lib in sorted(bad)]
        paho_modules = set(_names(row["paho-mqtt only in"]))
        if "paho" in libraries and module not in paho_modules:
            wrong.append(f"{module} imports paho; in {unit_of(module)} only {sorted(paho_modules)} may")
    assert not wrong, "\n".join(wrong)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_no_import_cycle_between_modules() -> None:
    # A package's __init__ re-exporting its own submodules is not a cycle worth forbidding only
    # when nothing below imports the package back; the rule is simply no cycles at all.
    graph = {m: {t for t in targets if t in MODULES and t != m} for m, targets in IMPORTS.items()}
    assert _cycles(graph) == []


def test_no_two_units_import_each_other() -> None:
    pairs: dict[str, set[str]] = defaultdict(set)
    for module, targets in IMPORTS.items():
        for target in targets:
            if target in MODULES and unit_of(target) != unit_of(module):
                pairs[unit_of(module) or ""].add(unit_of(target) or "")
    both = sorted({tuple(sorted((a, b))) for a, bs in pairs.items() for b in bs if a in pairs.get(b, set())})
    assert both == []


BLOCKER = """
import importlib.abc, pkgutil, sys
FORBIDDEN = {"torch", "torchvision", "timm", "streamlit", "sqlalchemy", "paho", "onnx", "xarray"}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in FORBIDDEN:
            raise ImportError(f"{name} must not be imported here")
        return None
sys.meta_path.insert(0, Block())
import shared
for mod in pkgutil.iter_modules(shared.__path__):
    __import__(f"shared.{mod.name}")
from cropwatch.cli import main
assert main(["schema"]) == 0
print("OK", len(sys.modules))
"""


def test_contract_and_router_load_without_heavy_libraries() -> None:
    """What the AST rules cannot see: import side effects at run time, on a field device's install."""
    result = subprocess.run([sys.executable, "-c", BLOCKER], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout
