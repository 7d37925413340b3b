"""The house in one direction: kiln's rooms (subpackages and top-level modules) sit on
floors, and every import of a kiln module — at module level or inside a function — goes to
a lower floor or stays in its room; rooms on one floor do not import each other; no modules
import each other in a circle; a function-local import of a kiln module is there only to
keep ``kiln --help`` fast; no module runs past ~500 lines without saying why at its top.

``docs/ARCHITECTURE.md`` describes the same floors. Run this file as a script to print the
import graph's figures (``python tests/test_architecture.py``).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "kiln"

#: Bottom to top. A room imports only rooms on lower floors (and itself).
FLOORS: list[tuple[str, ...]] = [
    ("errors",),
    ("atomic", "strict_yaml", "toml_config", "onnx_constants", "data", "report",
     "study_storage"),
    ("graph",),
    ("passes", "training"),
    ("quant",),
    ("prune",),
    ("models",),
    ("integer",),
    ("hw", "rtl"),
    ("mvu",),
    ("search", "fuzz", "experiments"),
    ("flow",),
    ("kiln",),  # kiln/__init__.py: the Python API, one function per command
    ("cli",),
    ("__main__",),
]
FLOOR_OF = {room: level for level, rooms in enumerate(FLOORS) for room in rooms}

#: A module longer than this says at the top of its docstring why it is one module.
MAX_LINES = 500
LENGTH_REASON = "Length:"


@dataclass(frozen=True)
class Import:
    source: str  # importing module, dotted
    target: str  # imported kiln module, dotted
    line: int
    local: bool  # inside a function
    type_only: bool  # under ``if TYPE_CHECKING:``


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def kiln_modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def room(module: str) -> str:
    parts = module.split(".")
    return "kiln" if len(parts) == 1 else parts[1]


def imports_of(path: Path, modules: dict[str, Path], source: str | None = None
               ) -> list[Import]:
    """Every import of a kiln module in one file (module ``source``, by default the one at
    ``path``); ``from X import y`` names ``X.y`` where that is a module."""
    source = source or module_name(path)
    tree = ast.parse(path.read_text())
    found: list[Import] = []

    def resolve(target: str) -> str | None:
        while target and target not in modules:
            target = target.rpartition(".")[0]
        return target or None

    def visit(node: ast.AST, local: bool, type_only: bool) -> None:
        for child in ast.iter_child_nodes(node):
            targets: list[str] = []
            if isinstance(child, ast.Import):
                targets = [alias.name for alias in child.names]
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = source.split(".") if path.name == "__init__.py" else \
                        source.split(".")[:-1]
                    base = base[:len(base) - (child.level - 1)]
                    module = ".".join(base + ([child.module] if child.module else []))
                else:
                    module = child.module or ""
                targets = [f"{module}.{alias.name}" if f"{module}.{alias.name}" in modules
                           else module for alias in child.names]
            for target in targets:
                if target.split(".")[0] == "kiln":
                    resolved = resolve(target)
                    if resolved and resolved != source:
                        found.append(Import(source, resolved, child.lineno, local, type_only))
            is_function = isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef,
                                             ast.Lambda))
            is_type_block = isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(
                child.test)
            visit(child, local or is_function, type_only or is_type_block)

    visit(tree, False, False)
    return found


def all_imports() -> list[Import]:
    modules = kiln_modules()
    return [edge for path in modules.values() for edge in imports_of(path, modules)]


def upward_imports(edges: list[Import]) -> list[str]:
    """Imports of a room on the same or a higher floor (another room)."""
    wrong = []
    for edge in edges:
        source, target = room(edge.source), room(edge.target)
        if source == target:
            continue
        if FLOOR_OF[target] >= FLOOR_OF[source]:
            kind = "same floor" if FLOOR_OF[target] == FLOOR_OF[source] else "up"
            wrong.append(f"{edge.source}:{edge.line} imports {edge.target} ({kind}: "
                         f"{source} is on floor {FLOOR_OF[source]}, {target} on "
                         f"{FLOOR_OF[target]})")
    return wrong


def cycles(edges: list[Import]) -> list[list[str]]:
    """Groups of modules that import each other in a circle (Tarjan's strongly connected
    components of the module graph, every import counted)."""
    graph: dict[str, set[str]] = defaultdict(set)
    for edge in edges:
        graph[edge.source].add(edge.target)
    index: dict[str, int] = {}
    lowlink: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = lowlink[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in sorted(graph[node]):
            if other not in index:
                connect(other)
                lowlink[node] = min(lowlink[node], lowlink[other])
            elif other in on_stack:
                lowlink[node] = min(lowlink[node], index[other])
        if lowlink[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(kiln_modules()):
        if node not in index:
            connect(node)
    return found


def startup_modules() -> set[str]:
    """The kiln modules ``kiln --help`` loads (the CLI's start-up set)."""
    code = "import sys, kiln.cli.main; print(' '.join(m for m in sys.modules if " \
           "m.split('.')[0] == 'kiln'))"
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True, cwd=ROOT).stdout
    return set(output.split())


def needless_local_imports(edges: list[Import], startup: set[str]) -> list[str]:
    """Function-local imports of kiln modules outside the CLI and the API, other than a
    start-up module's import of a module that ``kiln --help`` does not load (moving that
    one to the top would slow every command's start)."""
    needless = []
    for edge in edges:
        if not edge.local or room(edge.source) in ("cli", "kiln", "__main__"):
            continue
        if edge.source in startup and edge.target not in startup:
            continue
        needless.append(f"{edge.source}:{edge.line} imports {edge.target} inside a function")
    return needless


def long_modules() -> list[str]:
    """Modules past MAX_LINES lines whose docstring does not say why (``Length: ...``)."""
    found = []
    for name, path in kiln_modules().items():
        text = path.read_text()
        lines = text.count("\n")
        if lines <= MAX_LINES:
            continue
        docstring = ast.get_docstring(ast.parse(text)) or ""
        if LENGTH_REASON not in docstring:
            found.append(f"{name}: {lines} lines")
    return found


# ---------------------------------------------------------------------------------------


def test_every_room_has_a_floor():
    rooms = {room(name) for name in kiln_modules()}
    assert rooms - set(FLOOR_OF) == set(), "a new room needs its floor in FLOORS"
    assert set(FLOOR_OF) - rooms == set(), "FLOORS names a room that is gone"


def test_every_import_goes_down_the_floors():
    assert upward_imports(all_imports()) == []


def test_no_modules_import_each_other_in_a_circle():
    assert cycles(all_imports()) == []


def test_function_local_imports_only_keep_the_cli_start_fast():
    assert needless_local_imports(all_imports(), startup_modules()) == []


def test_no_module_past_500_lines_without_a_reason():
    assert long_modules() == []


def test_the_checks_see_what_they_are_meant_to(tmp_path):
    """The checks find an upward import, a circle and a function-local import when there
    is one (they are not vacuous)."""
    up = Import("kiln.graph.core", "kiln.quant.spec", 3, False, False)
    down = Import("kiln.quant.spec", "kiln.graph.core", 5, True, False)
    assert upward_imports([up, down]) == [
        "kiln.graph.core:3 imports kiln.quant.spec (up: graph is on floor 2, quant on 4)"]
    assert cycles([up, down]) == [["kiln.graph.core", "kiln.quant.spec"]]
    assert needless_local_imports([down], set()) == [
        "kiln.quant.spec:5 imports kiln.graph.core inside a function"]
    assert needless_local_imports([down], {"kiln.quant.spec"}) == []
    module = tmp_path / "mod.py"
    module.write_text("def f():\n    from kiln.graph import core\n")
    (edge,) = imports_of(module, {"mod": module, "kiln.graph": module,
                                  "kiln.graph.core": module}, source="mod")
    assert (edge.target, edge.local) == ("kiln.graph.core", True)


if __name__ == "__main__":
    edges = all_imports()
    local = [e for e in edges if e.local]
    print(f"imports of kiln modules: {len(edges)} ({len(local)} inside functions, "
          f"{sum(room(e.source) not in ('cli', 'kiln') for e in local)} outside cli/ and "
          "kiln/__init__.py)")
    for title, items in (("upward imports", upward_imports(edges)),
                         ("circles", [" <-> ".join(c) for c in cycles(edges)]),
                         ("needless function-local imports",
                          needless_local_imports(edges, startup_modules())),
                         ("long modules", long_modules())):
        print(f"{title}: {len(items)}")
        for item in items:
            print("  " + item)
    sizes = sorted(((p.read_text().count("\n"), n) for n, p in kiln_modules().items()),
                   reverse=True)[:5]
    print("largest modules: " + ", ".join(f"{n} {lines}" for lines, n in sizes))
