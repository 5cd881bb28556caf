"""The shape of the package: the import graph follows the floors documented in ffkit/__init__.py,
``import ffkit`` stays light, the public names resolve, notebooks never import a command, and
every command is a documented module with a ``main``.

The import graph is read from the source with ``ast`` (every ``import`` statement, those inside
functions too), so it holds for imports that a run happens not to reach.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

import ffkit

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "ffkit"
EXEMPT = {"ffkit", "ffkit.__main__"}  # the package itself and the command-line entry point


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


MODULES: dict[str, Path] = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _floors() -> dict[str, int]:
    """{top-level module name: floor index} from the table in ffkit's docstring."""
    lines = (ffkit.__doc__ or "").splitlines()
    borders = [i for i, line in enumerate(lines) if line.strip() and set(line.strip()) <= {"=", " "}]
    assert len(borders) == 3, "ffkit's docstring should hold one table of floors"
    column = lines[borders[0]].index("=", lines[borders[0]].index(" "))  # where the second column starts
    floors: dict[str, int] = {}
    level = -1
    for line in lines[borders[1] + 1 : borders[2]]:
        if line[:column].strip():
            level += 1
        for name in re.findall(r"``(\w+)``", line[column:]):
            floors[name] = level
    return floors


FLOORS = _floors()


def _imports(name: str) -> set[str]:
    """The ffkit modules that module ``name`` imports (a package's ``__init__`` counts as the package)."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            for alias in node.names:
                sub = f"{module}.{alias.name}"
                found.add(sub if sub in MODULES else module)
    return {m for m in found if m == "ffkit" or m.startswith("ffkit.")}


GRAPH = {name: _imports(name) for name in MODULES}


def _floor(module: str) -> int:
    if module == "ffkit":  # the package re-exports names: it sits on the floor of what it imports
        return max(_floor(m) for m in GRAPH["ffkit"] if m != "ffkit")
    return FLOORS[module.split(".")[1]]


def test_the_floor_table_is_read_and_covers_every_module() -> None:
    assert FLOORS["tangents"] == 0 and FLOORS["methods"] == 1 and FLOORS["train"] == 2 and FLOORS["commands"] == 3
    assert "ffkit.methods.lean" in MODULES and "ffkit.commands.dp_train" in MODULES
    # the graph sees `import a.b`, `from a import module`, `from a.b import name` and imports in functions
    assert "ffkit.distributed" in GRAPH["ffkit.methods.shared_seed"]
    assert "ffkit.experiments.comm" in GRAPH["ffkit.commands.bench_comm"]
    assert "ffkit.methods" in GRAPH["ffkit.experiments.step"]
    assert "ffkit.plot" in GRAPH["ffkit.experiments.comm"]  # imported inside a plotting function
    unplaced = sorted(m for m in MODULES if m not in EXEMPT and m.split(".")[1] not in FLOORS)
    assert not unplaced, f"modules missing from the table of floors in ffkit/__init__.py: {unplaced}"


def test_every_import_goes_to_the_same_or_a_lower_floor() -> None:
    names = ["foundations", "methods", "training and measuring", "command line"]
    bad = [
        f"{module} ({names[_floor(module)]}) imports {target} ({names[_floor(target)]})"
        for module in sorted(MODULES)
        if module not in EXEMPT
        for target in sorted(GRAPH[module])
        if target not in MODULES or _floor(target) > _floor(module)
    ]
    assert not bad, "imports against the floors of ffkit/__init__.py:\n" + "\n".join(bad)


def test_the_import_graph_has_no_cycles() -> None:
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(GRAPH.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        path.pop()
        state[node] = 2
        return None

    for module in sorted(GRAPH):
        if module not in state:
            cycle = visit(module)
            assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_import_ffkit_is_light_and_loads_submodules_on_use() -> None:
    code = (
        "import sys, json, ffkit\n"
        "before = sorted(m for m in sys.modules if m.split('.')[0] in ('matplotlib', 'ffkit', 'tqdm'))\n"
        "ffkit.plot\n"
        "print(json.dumps({'before': before, 'after_plot': 'matplotlib' in sys.modules}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    loaded = report["before"]
    assert not [m for m in loaded if m.startswith("matplotlib")], loaded
    for lazy in ("ffkit.plot", "ffkit.profile", "ffkit.variance", "ffkit.commands", "ffkit.experiments"):
        assert not [m for m in loaded if m == lazy or m.startswith(lazy + ".")], (lazy, loaded)
    assert report["after_plot"]  # and the submodule does load on first use


def test_every_public_name_resolves() -> None:
    assert len(set(ffkit.__all__)) == len(ffkit.__all__)
    for name in ffkit.__all__:
        assert getattr(ffkit, name) is not None, name
        assert name in dir(ffkit)
    with pytest.raises(AttributeError, match="no attribute 'nonexistent'"):
        ffkit.nonexistent  # noqa: B018


def _code_cells(notebook: Path) -> list[str]:
    cells = json.loads(notebook.read_text(encoding="utf-8"))["cells"]
    return ["".join(c["source"]) if isinstance(c["source"], list) else c["source"] for c in cells if c["cell_type"] == "code"]


def _imported_modules(source: str) -> set[str]:
    lines = [line for line in source.splitlines() if not line.lstrip().startswith(("%", "!"))]  # IPython magics
    try:
        tree = ast.parse("\n".join(lines))
    except SyntaxError:
        return set(re.findall(r"(ffkit\.commands[\w.]*)", source))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.update({node.module} | {f"{node.module}.{a.name}" for a in node.names})
    return found


NOTEBOOKS = sorted((ROOT / "chapters").glob("*.ipynb"))


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_no_notebook_imports_a_command(notebook: Path) -> None:
    """Commands are thin command-line wrappers; what a chapter needs lives in the library."""
    bad = sorted(
        m for source in _code_cells(notebook) for m in _imported_modules(source)
        if m == "ffkit.commands" or m.startswith("ffkit.commands.")
    )
    assert not bad, f"{notebook.name} imports {bad}; import the library function (ffkit.experiments, ...) instead"


def test_the_notebook_scan_sees_imports() -> None:
    assert "ffkit.commands.fg_mnist" in _imported_modules("%matplotlib inline\nfrom ffkit.commands.fg_mnist import run")
    assert "ffkit.commands" in _imported_modules("import ffkit.commands")
    assert NOTEBOOKS, "no chapter notebooks found"


COMMANDS = sorted(p for p in (PACKAGE / "commands").glob("*.py") if not p.name.startswith("_"))


@pytest.mark.parametrize("path", COMMANDS, ids=[p.stem for p in COMMANDS])
def test_every_command_has_a_summary_line_and_a_main(path: Path) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    doc = ast.get_docstring(tree) or ""
    lines = doc.splitlines()
    assert lines and lines[0].strip(), f"{path.name} has no docstring (its first line is what --help lists)"
    assert len(lines) == 1 or not lines[1].strip(), f"{path.name}: the docstring's first line must stand alone"
    mains = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "main"]
    assert len(mains) == 1, f"{path.name} has no module-level main"
    args = mains[0].args
    assert len(args.posonlyargs) + len(args.args) == 1 and not args.kwonlyargs, f"{path.name}: main(argv) takes argv only"
