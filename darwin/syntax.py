"""The one way DARWIN parses Python source.

CPython 3.11 before 3.11.8 keeps the AST constructor's recursion depth in shared state, so two
threads parsing at once (mapped tasks run in threads) can fail with "SystemError: AST
constructor recursion depth mismatch" (CPython gh-106905). A scorer that fails that way blames
nobody and stops a run, so every parse in DARWIN takes this lock; tests/test_syntax.py keeps it
the only ``ast.parse`` in the package.
"""

from __future__ import annotations

import ast
import threading

AST_LOCK = threading.Lock()


def parse(source: str | bytes) -> ast.Module:
    with AST_LOCK:
        return ast.parse(source)


def compiles(source: str, filename: str) -> None:
    """Raise SyntaxError when ``source`` does not parse and compile."""
    with AST_LOCK:
        compile(ast.parse(source), filename, "exec")
