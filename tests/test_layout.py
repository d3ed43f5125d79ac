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


FLOORS = ("models", "trainables", "search", "dashboards", "benchmarks")  # a floor imports only from the floors below


def _import_graph() -> dict[str, set[str]]:
    """module -> the project's modules it imports (any import statement, at any depth of the code)."""
    modules = {}
    for path in _modules(FLOORS):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path

    def owner(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
                targets = [base, *(f"{base}.{alias.name}" for alias in node.names)]
            graph[name] |= {t for t in map(owner, targets) if t and t != name}
    return graph


def test_no_floor_imports_a_higher_one_and_no_module_imports_itself_back():
    graph = _import_graph()
    upward = [f"{m} -> {t}" for m, targets in graph.items() for t in targets
              if FLOORS.index(t.split(".")[0]) > FLOORS.index(m.split(".")[0])]
    assert not upward, upward

    def reaches(start: str, goal: str) -> bool:
        seen, todo = set(), [start]
        while todo:
            node = todo.pop()
            for nxt in graph[node] - seen:
                if nxt == goal:
                    return True
                seen.add(nxt)
                todo.append(nxt)
        return False

    # A package's __init__ that only hands names on is not a circle's member (as the shared import_graph tool reads it).
    circles = sorted({tuple(sorted((m, t))) for m, targets in graph.items() for t in targets if reaches(t, m)
                      and not _hands_off(t) and not _hands_off(m)})
    assert not circles, circles


def _hands_off(module: str) -> bool:
    path = ROOT / module.replace(".", "/") / "__init__.py"
    return path.is_file() and not any(isinstance(n, (ast.FunctionDef, ast.ClassDef)) for n in ast.parse(path.read_text()).body)


def test_docs_agree_with_the_code_and_state_no_unrendered_claim(capsys):
    """The rendered blocks (options, Parquet schema and strategies generated from the code; measured tables from
    benchmarks/results/) are up to date, and README.md and docs/ state no measurement or comparison in prose:
    python -m benchmarks.render --check."""
    from benchmarks.render import main, prose_claims

    assert prose_claims("It trains in 3 minutes.\n\nIt is faster than\nthe old one.") != []  # the rule can fail
    assert main(["--check"]) == 0, capsys.readouterr().err
