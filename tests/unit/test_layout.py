"""The layout rules a newcomer relies on, checked on the real tree.

Small files, no import cycles, no ``sys.path`` edits outside ``tests/conftest.py``, tests that
never import a benchmark, and a folder table in the README that names every top-level package.
"""

from __future__ import annotations

import ast
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MAX_LINES = 500
# Top-level import names of the project's packages, and the folders they live in.
PACKAGES = {"schemas": "schemas", "scoring": "scoring", "pipelines": "pipelines", "scripts": "scripts",
            "bench": "bench", "testing": "testing", "tools": "tools",
            "recommender": "functions/recommend/recommender", "httpfn": "functions/httpfn"}


def _tracked_python() -> list[Path]:
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "*.py"],
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return [ROOT / line for line in out.splitlines() if line and (ROOT / line).is_file()]


def _module_name(path: Path) -> str | None:
    """The import name of a project file (``None`` outside the packages, e.g. a function's main.py)."""
    rel = path.relative_to(ROOT).as_posix()
    for name, folder in PACKAGES.items():
        if rel.startswith(folder + "/"):
            parts = [name, *Path(rel[len(folder) + 1:]).with_suffix("").parts]
            return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
    return None


def _imports(path: Path, module: str) -> Iterator[str]:
    """Project modules imported at module level or in functions (relative imports resolved)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")
                parent = parent[:len(parent) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            yield base
            yield from (f"{base}.{a.name}" for a in node.names)


def _import_graph() -> dict[str, set[str]]:
    files = {m: p for p in _tracked_python() if (m := _module_name(p)) is not None}
    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        deps = {d for d in _imports(path, module) if d in files and d != module}
        graph[module] = deps
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules, or None (depth-first search)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return stack[stack.index(dep):] + [dep]
            if dep not in state and (found := visit(dep)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_python_file_outside_tests_is_over_500_lines():
    long = {p.relative_to(ROOT).as_posix(): n for p in _tracked_python()
            if not p.relative_to(ROOT).as_posix().startswith("tests/")
            and (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert long == {}


def test_no_import_cycle_between_project_modules():
    graph = _import_graph()
    assert len(graph) > 50  # the walk found the project's modules
    assert _cycle(graph) is None


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize("needle", ["sys.path.insert", "sys.path.append", "sys.path[", "sys.path +="])
def test_sys_path_is_edited_only_in_tests_conftest(needle: str):
    editors = [p.relative_to(ROOT).as_posix() for p in _tracked_python()
               if needle in p.read_text(encoding="utf-8") and p != Path(__file__).resolve()]
    assert set(editors) <= {"tests/conftest.py"}


def test_no_test_imports_a_benchmark_module():
    offenders = []
    for path in _tracked_python():
        rel = path.relative_to(ROOT).as_posix()
        if not rel.startswith("tests/"):
            continue
        for name in _imports(path, "tests." + ".".join(Path(rel[6:]).with_suffix("").parts)):
            if name == "bench" or name.startswith("bench."):
                offenders.append((rel, name))
    assert offenders == []


def test_readme_folder_table_names_every_top_level_package():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for folder in {f.split("/")[0] for f in PACKAGES.values()}:
        if (ROOT / folder).is_dir():
            assert f"| `{folder}/`" in readme, f"README's folder table lacks {folder}/"
