"""The code's layout: a folder per stage of a run, imports pointing one way, small modules.

job → (api, pipeline) → outputs → scan → model: the job may use everything, the
model (formula, design, criteria, solvers) imports no other stage and no I/O
library, and nothing imports the job.  No import cycles between modules; no
module over 500 lines.
"""

from __future__ import annotations

import ast
import fnmatch
import re
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "pooljob"
MAX_LINES = 500

#: What each stage may import, besides itself and the SHARED leaves.
ALLOWED = {
    "model": set(),
    "scan": {"model"},
    "outputs": {"model", "scan"},
    "pipeline": {"model", "scan", "outputs"},
    "api": {"model", "scan", "outputs", "pipeline"},
    "job": {"model", "scan", "outputs", "pipeline", "api"},
}
#: Leaves every stage may use: the named errors, durable file writes.
SHARED = ("errors", "durable", "sql")
IO_LIBRARIES = {"duckdb", "pyarrow", "pyspark", "sqlglot", "matplotlib", "deltalake"}


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def imports(path: Path, name: str) -> set[str]:
    """The pooljob modules (and top-level libraries) ``path`` imports, at any depth.

    Imports inside functions count; those under ``if TYPE_CHECKING:`` do not.
    """
    found: set[str] = set()
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):  # imports for type checkers only are not imports
        if isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING",):
            node.body = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                base = f"{base}.{node.module}" if node.module else base
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def stage(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "pooljob" or len(parts) < 2:
        return None
    return parts[1]


ALL = modules()


@pytest.mark.parametrize("name", sorted(ALL))
def test_imports_point_down_the_stages(name: str) -> None:
    own = stage(name)
    if own in (None, *SHARED):
        return
    for target in imports(ALL[name], name):
        other = stage(target)
        if other is None or other in (*SHARED, own) or target not in ALL:
            continue
        assert other in ALLOWED[own], f"{name} imports {target}: {own} may not import {other}"
    if own == "model":
        libraries = {t.split(".")[0] for t in imports(ALL[name], name)}
        assert not libraries & IO_LIBRARIES, f"{name} imports {libraries & IO_LIBRARIES}"


def test_no_import_cycles() -> None:
    graph = {
        name: {t for t in imports(path, name) if t in ALL and t != name and t != "pooljob"}
        for name, path in ALL.items()
    }
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = [*trail[trail.index(nxt) :], nxt] if nxt in trail else [node, nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, [*trail, nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


@pytest.mark.parametrize("name", sorted(ALL))
def test_modules_are_small(name: str) -> None:
    lines = len(ALL[name].read_text().splitlines())
    assert lines <= MAX_LINES, f"{name} has {lines} lines (at most {MAX_LINES})"


def test_the_config_imports_no_solver() -> None:
    """Validating a job (``pooljob validate``) needs no solver, and no I/O beyond the parser."""
    graph = {
        name: {t for t in imports(path, name) if t in ALL and t != name}
        for name, path in ALL.items()
    }
    seen, todo = set(), ["pooljob.job.config"]
    while todo:
        node = todo.pop()
        if node not in seen:
            seen.add(node)
            todo.extend(graph[node] - {"pooljob", "pooljob.model", "pooljob.scan"})
    solvers = {
        f"pooljob.model.{m}"
        for m in ("general", "glmm", "glmm_fit", "laplace", "lmm", "nested_fit", "optimize")
    }
    assert not seen & solvers, f"pooljob.job.config reaches {sorted(seen & solvers)}"


def test_the_readme_layout_names_every_module() -> None:
    readme = (PACKAGE.parent / "README.md").read_text()
    layout = readme[readme.index("## Layout") :]
    names = set(re.findall(r"[\w*]+\.py", layout))
    for path in ALL.values():
        if path.name == "__init__.py":
            continue
        assert any(fnmatch.fnmatch(path.name, n) for n in names), f"README's Layout omits {path}"
    for sql in (PACKAGE.parent / "sql").glob("*.sql"):
        assert sql.name in layout, f"README's Layout omits sql/{sql.name}"


def test_starting_pooljob_loads_no_solver_library() -> None:
    """A cron run starts a fresh process: the CLI imports no scipy or matplotlib until needed,
    and a run's own modules never load scipy.stats (about 0.7 s here), matplotlib or deltalake."""
    for module, banned in (
        ("pooljob.job.cli", ("scipy", "matplotlib", "deltalake")),
        ("pooljob.job.run", ("scipy.stats", "matplotlib", "deltalake")),
    ):
        code = (
            f"import sys, {module}; "
            f"heavy = sorted(m for m in sys.modules if m.startswith({banned!r})); "
            "assert not heavy, heavy"
        )
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert done.returncode == 0, (module, done.stderr.strip().splitlines()[-1])
