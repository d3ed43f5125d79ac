"""The rooms stay small enough to read: no module over 400 lines, no function over 60, and no code
outside a plug-in's own module branches on its name (CONTRIBUTING.md)."""

from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("search", "trainables", "models")  # the system: no plug-in's name compared outside it
SIZED = (*PACKAGES, "dashboards", "benchmarks")  # every room of code: small enough to read
MAX_FILE_LINES = 400
MAX_FUNCTION_LINES = 60


def _modules(packages: tuple[str, ...] = PACKAGES) -> list[Path]:
    return sorted(p for package in packages for p in (ROOT / package).rglob("*.py"))


def long_functions(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1
            if length > MAX_FUNCTION_LINES:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({length} lines)")
    return found


def test_no_module_over_400_lines():
    big = [f"{p.relative_to(ROOT)} ({n} lines)" for p in _modules(SIZED) if (n := len(p.read_text().splitlines())) > MAX_FILE_LINES]
    assert not big, big


def test_no_function_over_60_lines():
    found = [line for p in _modules(SIZED) for line in long_functions(p)]
    assert not found, found


def test_only_a_strategy_names_itself():
    """Strategies are found by name in search/strategies/__init__.py; nothing else compares a name."""
    pattern = re.compile(r"""strategy\s*[!=]=\s*["']|isinstance\([^)]*(Greedy|Optuna)\w*Search""")
    strategies = ROOT / "search" / "strategies"
    offending = [f"{p.relative_to(ROOT)}:{i}: {line.strip()}" for p in _modules() if strategies not in p.parents
                 for i, line in enumerate(p.read_text().splitlines(), start=1) if pattern.search(line)]
    assert not offending, offending


def test_every_package_is_installed():
    """pyproject.toml lists its packages by name: a folder of code missing there is left out of a wheel (an editable
    install, as the README's, would still find it)."""
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(init.parent.relative_to(ROOT).parts) for package in SIZED
             for init in (ROOT / package).rglob("__init__.py")}
    assert found <= listed, sorted(found - listed)
