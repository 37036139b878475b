"""Bounds on what a program may carry: its size, and the literal data in it.

Held-out text can be carried in an encoding no scan reads (compressed, XOR-ed, offset, as
floats): the scan (heldout.py) cannot see it, so the room to carry it is bounded instead. The
seed program is about 12 KB, of which about 2.6 KB are literals (strings, bytes, numbers), 1.3 KB
once compressed. A program may be four times the seed; its literals, compressed (zlib: data
already compressed or random does not shrink, English prose does), six times the seed's. A
child that carries tens of KB of high-entropy literal data is refused with the numbers.

What this does not prove: a program can still derive data from code (arithmetic, a long
expression) or write it into its weights while it trains; the size bound limits the former, the
memorisation gap (docs/scoring.md) measures what either buys.
"""

from __future__ import annotations

import ast
import zlib
from pathlib import Path

from darwin.evaluation.failures import Failure, Rejected
from darwin.syntax import parse

MAX_PROGRAM_BYTES = 48 * 1024  # one Python file: the program, an extra module, model.py
MAX_LITERAL_BYTES = 8 * 1024  # all literals of one file, zlib-compressed


def literal_bytes(source: bytes) -> int:
    """The zlib-compressed size of every constant in ``source`` (str, bytes and number
    literals, docstrings included). A file that does not parse counts whole: it cannot run as
    Python, and what it holds is data."""
    try:
        tree = parse(source)
    except (SyntaxError, ValueError):
        return len(zlib.compress(source, 9))
    parts = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and node.value is not None:
            v = node.value
            parts.append(v if isinstance(v, bytes) else str(v).encode("utf-8", "surrogatepass"))
    return len(zlib.compress(b"\0".join(parts), 9))


def check_program(paths: list[Path]) -> None:
    """Refuse a Python file past either bound (``Failure.program_too_large``)."""
    for path in paths:
        data = Path(path).read_bytes()
        name = Path(path).name
        if len(data) > MAX_PROGRAM_BYTES:
            raise Rejected(Failure.program_too_large,
                           f"{name} is {len(data)} bytes, over the {MAX_PROGRAM_BYTES}-byte "
                           "bound on one program file (the seed program is about 12 KB)")
        carried = literal_bytes(data)
        if carried > MAX_LITERAL_BYTES:
            raise Rejected(Failure.program_too_large,
                           f"{name} carries {carried} bytes of literal data (strings, bytes and "
                           f"numbers, compressed), over the {MAX_LITERAL_BYTES}-byte bound (the "
                           "seed: about 1.3 KB): a program may not carry data that could hold "
                           "held-out text in an encoding the scan cannot read")
