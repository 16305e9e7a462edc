"""The package's layers, read from its source: who may import whom, no import cycles, a light parser.

From the bottom up: the base modules (``errors``, ``units``, ``dq``, ``nan``, ``_version``);
``layout`` (instrument geometry: base only); ``config/`` (base, ``layout``); ``calibration/``, the
maths (base, ``layout``); then ``io/``, ``run/``, ``products/``, ``simulate/`` and ``cli/``.

Every module under ``arielstream/`` is parsed with :mod:`ast`; an import anywhere in it (module
level or inside a function) is an edge of the module graph, relative imports resolved, except those
under ``if TYPE_CHECKING:`` (annotations only, never run).
"""

from __future__ import annotations

import ast
import functools
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

import arielstream

PACKAGE = Path(arielstream.__file__).resolve().parent
ROOT = PACKAGE.name  # "arielstream"
BASE = frozenset(f"{ROOT}.{name}" for name in ("errors", "units", "dq", "nan", "_version"))
LAYOUT = f"{ROOT}.layout"
# what loading the command's parser (and `arielstream --help`) must not load: the file formats' and
# the maths' libraries, and the simulator (numexpr, pyarrow)
HEAVY = ("pyarrow", "h5py", "numexpr", "numba", f"{ROOT}.simulate")


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    where: str  # "arielstream/cli/app.py:31"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST, annotations: bool = False):
    """Every Import / ImportFrom node at any depth, none under ``if TYPE_CHECKING:`` unless ``annotations``."""
    for node in ast.iter_child_nodes(tree):
        if not annotations and isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                yield from _imports(ast.Module(body=[child], type_ignores=[]))
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        yield from _imports(node, annotations)


def _graph(annotations: bool = False) -> tuple[set[str], list[Edge]]:
    files = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
    modules = set(files)

    def existing(name: str) -> str | None:
        """``name``, or the nearest enclosing module of the package (``a.b.C`` -> ``a.b``)."""
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    edges: list[Edge] = []
    for name, path in files.items():
        is_package = path.name == "__init__.py"
        where = path.relative_to(PACKAGE.parent).as_posix()
        for node in _imports(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)), annotations):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif node.level == 0:
                base = node.module or ""
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                           for alias in node.names]
            else:
                package = name.split(".") if is_package else name.split(".")[:-1]
                up = package[:len(package) - (node.level - 1)]
                assert len(up) == len(package) - (node.level - 1) and up, f"{where}:{node.lineno}: beyond the package"
                base = ".".join(up + ([node.module] if node.module else []))
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                           for alias in node.names]
            for target in targets:
                if target.split(".")[0] != ROOT:
                    continue
                resolved = existing(target)
                assert resolved is not None, f"{where}:{node.lineno}: {target} is no module of the package"
                edges.append(Edge(name, resolved, f"{where}:{node.lineno}"))
    return modules, edges


MODULES, EDGES = _graph()


def _in(module: str, *packages: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def _breaches(sources: tuple[str, ...], allowed, edges: list[Edge] = EDGES) -> str:
    """The imports of the modules in (or under) ``sources`` that ``allowed(target)`` refuses, one a line."""
    return "\n".join(f"{e.where}: {e.source} imports {e.target}" for e in edges
                     if _in(e.source, *sources) and not allowed(e.target))


def test_the_graph_sees_the_package():
    assert {f"{ROOT}.cli.app", f"{ROOT}.calibration.kernels", f"{ROOT}.config.options", LAYOUT} <= MODULES
    assert Edge(f"{ROOT}.units", f"{ROOT}.errors", f"{ROOT}/units.py:7") in EDGES  # a relative, module-level import
    # a function-level one (the handler loads the runner only when it runs)
    assert any(e.source == f"{ROOT}.cli.calibrate" and e.target == f"{ROOT}.run.runner" for e in EDGES)


def test_the_base_modules_import_only_each_other():
    breaches = _breaches(tuple(BASE), lambda t: t in BASE)
    assert not breaches, "\n" + breaches


def test_layout_imports_only_the_base_modules():
    """Not even for an annotation: the config imports the geometry, so the geometry knows no config.

    (``frames_per_bin`` takes anything with the two fields it reads, :class:`arielstream.layout.Binning`.)
    """
    breaches = _breaches((LAYOUT,), lambda t: t in BASE, _graph(annotations=True)[1])
    assert not breaches, "\n" + breaches


def test_calibration_imports_only_the_base_modules_layout_and_itself():
    """The maths: no config, no files (io), no runner, products, simulator or command line."""
    calibration = f"{ROOT}.calibration"
    breaches = _breaches((calibration,), lambda t: t in BASE or t == LAYOUT or _in(t, calibration))
    assert not breaches, "\n" + breaches


def test_config_imports_only_the_base_modules_layout_and_itself():
    """No io (the recipe's ``step_status`` only annotates with ``DetectorCalibration``), run, products, cli."""
    config = f"{ROOT}.config"
    breaches = _breaches((config,), lambda t: t in BASE or t == LAYOUT or _in(t, config))
    assert not breaches, "\n" + breaches


def _components(graph: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected components of ``graph`` (Tarjan's algorithm; small enough for recursion)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    components: list[set[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = {stack.pop()}
            while v not in component:
                component.add(stack.pop())
            components.append(component)

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return components


def _cycle_through(start: str, graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """A shortest cycle ``[start, ..., start]`` inside ``component`` (breadth first)."""
    paths = {start: [start]}
    queue = [start]
    while queue:
        v = queue.pop(0)
        for w in sorted(graph[v] & component):
            if w == start:
                return paths[v] + [start]
            if w not in paths:
                paths[w] = paths[v] + [w]
                queue.append(w)
    raise AssertionError(f"no cycle through {start}")


def test_no_import_cycles():
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for e in EDGES:
        graph[e.source].add(e.target)
    cycles = [_cycle_through(min(c), graph, c) for c in _components(graph)
              if len(c) > 1 or min(c) in graph[min(c)]]
    where = {(e.source, e.target): e.where for e in reversed(EDGES)}  # the first import of each pair
    described = ["  " + " -> ".join(cycle) + "\n    (" +
                 ", ".join(where[a, b] for a, b in zip(cycle, cycle[1:], strict=False)) + ")"
                 for cycle in cycles]
    assert not described, "import cycles (one per group of modules; function-level imports count):\n" + \
        "\n".join(described)


PARSER = "build_parser()"
INVOCATIONS = {  # the first builds the parser in a fresh interpreter; the others run the real command
    PARSER: ["-c", "import json, sys\nfrom arielstream.cli.app import build_parser\nbuild_parser()\n"
                   "print(json.dumps(sorted(sys.modules)))"],
    **{f"arielstream {' '.join(argv)}": ["-X", "importtime", "-m", ROOT, *argv]
       for argv in (["--help"], ["calibrate", "--help"], ["simulate", "--help"])},
}


def _cases():
    for invocation in INVOCATIONS:
        for library in HEAVY:
            yield pytest.param(invocation, library, id=f"{invocation}-{library}")


@functools.cache
def _loaded(invocation: str) -> frozenset[str]:
    """The modules ``invocation`` imports (``-X importtime`` lists them on stderr)."""
    proc = subprocess.run([sys.executable, *INVOCATIONS[invocation]], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    if invocation == PARSER:
        return frozenset(json.loads(proc.stdout.splitlines()[-1]))
    assert proc.stdout.startswith("usage: arielstream"), proc.stdout
    return frozenset(line.rpartition("|")[2].strip() for line in proc.stderr.splitlines()
                     if line.startswith("import time:"))


@pytest.mark.parametrize(("invocation", "library"), list(_cases()))
def test_the_command_s_parser_loads_neither_the_file_libraries_nor_the_simulator(invocation, library):
    loaded = _loaded(invocation)
    assert f"{ROOT}.cli.calibrate" in loaded  # (what is measured is the parser)
    found = sorted(m for m in loaded if m == library or m.startswith(library + "."))
    assert not found, f"{invocation} loaded {found[0]}"
