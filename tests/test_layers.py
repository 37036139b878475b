"""The shape of the house: imports only go down the layers, across layers only through each
package's face (the names its ``__init__`` lists in ``__all__``), no import cycles, the core never
imports Prefect, and the code that runs inside the sandbox imports nothing of ours.

The package map comes from pyproject.toml (the design card's top-level folders install under
``darwin.*``), so a folder added there is checked without touching this test.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Lowest first. A module may import its own layer and the layers below it, never one above.
LAYERS = [
    ("foundation", ["darwin", "darwin.errors", "darwin.settings", "darwin.seed", "darwin.syntax"]),
    ("memory", ["darwin.memory"]),
    ("sandbox", ["darwin.sandbox"]),
    ("evaluation", ["darwin.evaluation"]),
    ("llm", ["darwin.llm"]),
    ("mutation", ["darwin.mutation"]),
    ("engine", ["darwin.engine"]),
    ("reports", ["darwin.reports"]),
    ("tasks", ["darwin.tasks"]),
    ("flows", ["darwin.flows"]),
    ("cli", ["darwin.cli"]),
]
ORCHESTRATION = ("darwin.tasks", "darwin.flows", "darwin.cli")  # may import prefect
SANDBOX_SIDE = "darwin.evaluation.runtime"  # mounted into the sandbox: stands alone


def source_modules() -> dict[str, Path]:
    """Every module of the distribution, by dotted name, from the package-dir map."""
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    modules: dict[str, Path] = {}
    for package, folder in setuptools["package-dir"].items():
        for path in (ROOT / folder).rglob("*.py"):
            rel = path.relative_to(ROOT / folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            name = ".".join([package, *parts])
            if name.startswith("darwin.seed.") or any(
                    name.startswith(sub + ".") or name == sub
                    for sub in setuptools["package-dir"] if sub != package and
                    sub.startswith(package + ".")):
                continue  # seed programs are data; nested mapped folders are walked on their own
            modules[name] = path
    return modules


def layer_of(module: str) -> int:
    best, rank = -1, None
    for i, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, rank = len(prefix), i
    assert rank is not None, f"{module} belongs to no layer: add it to LAYERS"
    return rank


def imports_of(module: str, path: Path, known: set[str]) -> set[str]:
    """Our modules that ``module`` imports, anywhere in the file (lazy imports count too)."""
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            while name and name not in known:  # `import darwin.x.y` -> the module it names
                name = name.rpartition(".")[0]
            if name:
                found.add(name)
    found.discard(module)
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = source_modules()
    return {m: imports_of(m, p, set(modules)) for m, p in modules.items()}


def test_every_module_is_in_a_layer(graph):
    assert "darwin.engine.engine" in graph and "darwin.flows.evolve" in graph  # the walk works
    for module in graph:
        layer_of(module)


def test_imports_only_go_down(graph):
    upward = [f"{m} ({LAYERS[layer_of(m)][0]}) imports {d} ({LAYERS[layer_of(d)][0]})"
              for m, deps in sorted(graph.items()) for d in sorted(deps)
              if layer_of(d) > layer_of(m)]
    assert not upward, "imports that go up a layer:\n" + "\n".join(upward)


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return path[path.index(dep):] + [dep]
            if dep not in state and (cycle := visit(dep)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycles(graph):
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


def test_the_checks_can_fire(tmp_path):
    """The same checks on a made-up graph with an upward import and a cycle."""
    bad = {"darwin.sandbox.local": {"darwin.evaluation.data"},
           "darwin.evaluation.data": {"darwin.evaluation.training"},
           "darwin.evaluation.training": {"darwin.evaluation.data"}}
    assert layer_of("darwin.evaluation.data") > layer_of("darwin.sandbox.local")
    assert find_cycle(bad) == ["darwin.evaluation.data", "darwin.evaluation.training",
                               "darwin.evaluation.data"]
    src = "from darwin.evaluation import data\nimport darwin.sandbox.base\nfrom .x import y\n"
    (tmp_path / "m.py").write_text(src)
    known = {"darwin.evaluation", "darwin.evaluation.data", "darwin.sandbox.base",
             "darwin.sandbox", "darwin.mutation.x"}
    assert imports_of("darwin.mutation.m", tmp_path / "m.py", known) == {
        "darwin.evaluation", "darwin.evaluation.data", "darwin.sandbox.base", "darwin.mutation.x"}


def test_the_sandbox_side_runtime_imports_nothing_of_ours(graph):
    inside = {m: deps for m, deps in graph.items() if m.startswith(SANDBOX_SIDE + ".")}
    assert inside, "no sandbox-side modules found"
    assert all(not deps for deps in inside.values()), inside


def test_the_core_never_imports_prefect(graph):
    core = sorted(m for m in graph if not m.startswith(ORCHESTRATION) and m != SANDBOX_SIDE
                  and not m.startswith(SANDBOX_SIDE + "."))
    code = ("import importlib, sys\n"
            f"for name in {core!r}:\n"
            "    importlib.import_module(name)\n"
            "print(sorted(m for m in sys.modules if m == 'prefect' or m.startswith('prefect.')))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]", f"the core imported prefect: {done.stdout[:500]}"
    # The control: importing a flow module does pull prefect in, so the probe can see it.
    flows = subprocess.run([sys.executable, "-c", code.replace(repr(core),
                                                                 repr(["darwin.flows.evolve"]))],
                           capture_output=True, text=True, timeout=300)
    assert "'prefect'" in flows.stdout, flows.stderr[-2000:]


def face_of(module: str) -> str:
    """The package (or foundation module) whose ``__init__`` is the face of ``module``:
    ``darwin.engine`` for ``darwin.engine.runs``, ``darwin.errors`` for itself."""
    return ".".join(module.split(".")[:2])


def faces() -> dict[str, set[str]]:
    """Each package's face: the names in its ``__all__``, read from its ``__init__`` without
    importing it (a literal list, or ``sorted(<dict literal>)`` of lazily loaded names)."""
    found: dict[str, set[str]] = {}
    for name, path in source_modules().items():
        if path.name != "__init__.py" or name.count(".") != 1:
            continue
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.Assign) and any(
                    isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
                found[name] = set(_names(node.value, path))
    return found


def _names(value: ast.expr, path: Path) -> list[str]:
    if isinstance(value, (ast.List, ast.Tuple)):
        return [ast.literal_eval(e) for e in value.elts]
    if isinstance(value, ast.Call) and getattr(value.func, "id", "") == "sorted":
        (arg,) = value.args
        if isinstance(arg, ast.Name):  # sorted(_FACE): the dict assigned to that name
            for node in ast.parse(path.read_text()).body:
                if isinstance(node, ast.Assign) and any(
                        isinstance(t, ast.Name) and t.id == arg.id for t in node.targets):
                    return [ast.literal_eval(k) for k in node.value.keys]
        if isinstance(arg, ast.List):  # sorted([*_FACE, "name", ...])
            return [n for e in arg.elts for n in (
                _names(ast.Call(func=value.func, args=[e.value], keywords=[]), path)
                if isinstance(e, ast.Starred) else [ast.literal_eval(e)])]
    raise AssertionError(f"{path}: __all__ must be a literal list or sorted(<a dict name>), "
                         "or sorted([*<a dict name>, 'name', ...])")


def face_violations(module: str, path: Path, known_faces: dict[str, set[str]]) -> list[str]:
    """Imports of ``module`` that reach into another layer's package past its face, or name
    something its face does not offer."""
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    bad = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [(a.name, None) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                base = ".".join(anchor[: len(anchor) - node.level + 1] + ([base] if base else []))
            targets = [(base, [a.name for a in node.names])]
        else:
            continue
        for target, names in targets:
            if not target.startswith("darwin.") or layer_of(target) == layer_of(module):
                continue
            face = face_of(target)
            if face not in known_faces:
                continue  # a foundation module (darwin.errors): the module is its own face
            if target != face:
                bad.append(f"{module} imports {target}: import from its face, {face}")
            elif names and (missing := [n for n in names if n not in known_faces[face]]):
                bad.append(f"{module} imports {', '.join(missing)} from {face}, which does "
                           "not offer it: add it to that face's __all__")
    return bad


def test_every_package_has_a_face():
    known = faces()
    packages = {m for m, p in source_modules().items()
                if p.name == "__init__.py" and m.count(".") == 1 and m != "darwin.seed"}
    assert packages - set(known) == set(), f"packages without __all__: {packages - set(known)}"


def test_imports_across_layers_go_through_faces():
    known = faces()
    bad = [v for m, p in sorted(source_modules().items()) for v in face_violations(m, p, known)]
    assert not bad, "imports past a face:\n" + "\n".join(bad)


def test_every_name_a_face_offers_exists():
    """Each face's names import (lazily loaded ones too), so a face cannot promise a name its
    package lost in a refactor."""
    code = ("import importlib, json, sys\n"
            f"faces = {{k: sorted(v) for k, v in {faces()!r}.items()}}\n"
            "missing = [f'{f}.{n}' for f, names in faces.items()\n"
            "           for n in names if not hasattr(importlib.import_module(f), n)]\n"
            "print(json.dumps(missing))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]", done.stdout


def test_the_face_check_can_fire(tmp_path):
    (tmp_path / "m.py").write_text("from darwin.memory.store import RunStore\n"
                                   "from darwin.memory import nothing_here, RunStore\n"
                                   "from darwin.engine.ids import parse\n")
    known = {"darwin.memory": {"RunStore"}, "darwin.engine": {"parse"}}
    assert face_violations("darwin.reports.m", tmp_path / "m.py", known) == [
        "darwin.reports.m imports darwin.memory.store: import from its face, darwin.memory",
        "darwin.reports.m imports nothing_here from darwin.memory, which does not offer it: "
        "add it to that face's __all__",
        "darwin.reports.m imports darwin.engine.ids: import from its face, darwin.engine"]
    # within a layer, a module imports its siblings directly
    assert face_violations("darwin.memory.history", tmp_path / "m.py", known) == [
        "darwin.memory.history imports darwin.engine.ids: import from its face, darwin.engine"]
