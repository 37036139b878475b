"""Every parse of Python source in DARWIN goes through darwin.syntax's lock (CPython 3.11's
AST constructor is not thread-safe: a scorer that parsed outside the lock failed a CI run with
"AST constructor recursion depth mismatch")."""

from __future__ import annotations

import ast
import threading
from pathlib import Path

from darwin import syntax

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ["darwin", "flows", "tasks", "memory", "seed", "deployments"]


def _parses_outside_the_lock(path: Path) -> list[int]:
    """Lines of ``path`` that call ast.parse, ast.literal_eval or compile(..., PyCF_ONLY_AST)."""
    tree = ast.parse(path.read_text())  # the test's own parse: one thread
    lines = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
        owner = getattr(f.value, "id", "") if isinstance(f, ast.Attribute) else ""
        if owner == "ast" and name in ("parse", "literal_eval"):
            lines.append(node.lineno)
        if name == "compile" and owner == "" and any(
                isinstance(a, ast.Call) and getattr(a.func, "attr", "") == "parse" for a in node.args):
            lines.append(node.lineno)
    return lines


def test_only_darwin_syntax_parses_python():
    offenders = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if path.resolve() == Path(syntax.__file__).resolve():
                continue
            offenders += [f"{path.relative_to(ROOT)}:{n}" for n in _parses_outside_the_lock(path)]
    assert offenders == [], f"parse through darwin.syntax.parse instead: {offenders}"


def test_the_scan_sees_a_parse_outside_the_lock(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import ast\ntree = ast.parse('x = 1')\nok = compile(ast.parse('y'), 'f', 'exec')\n")
    assert _parses_outside_the_lock(bad) == [2, 3, 3]


def test_parses_from_many_threads_agree():
    source = (ROOT / "seed" / "train.py").read_text()
    expected = ast.dump(ast.parse(source))
    seen, errors = [], []

    def work():
        try:
            for _ in range(20):
                seen.append(ast.dump(syntax.parse(source)))
        except Exception as e:  # noqa: BLE001  (the test reports whatever a thread hit)
            errors.append(repr(e))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(seen) == 80 and set(seen) == {expected}
