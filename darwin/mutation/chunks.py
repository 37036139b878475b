"""Split a program into chunks (imports, classes, functions, other module code) and join it back.

The paper's chunk-wise operator rewrites each chunk with some probability while carrying the
program's structure and summaries of the chunks already rewritten. Chunks are contiguous line
ranges that cover the whole file, so ``join(split(src)) == src`` always holds; comments and blank
lines above a definition belong to it.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass


@dataclass
class Chunk:
    kind: str  # "imports" | "class" | "function" | "code"
    name: str
    text: str

    def signature(self) -> str:
        lines = [ln.strip() for ln in self.text.splitlines()]
        if self.kind in ("class", "function"):
            first = next((ln for ln in lines if ln.startswith(("def ", "class ", "async def "))), "")
            return first.rstrip(":")
        first = next((ln for ln in lines if ln and not ln.startswith("#")), "")
        return (first[:60] + "…") if len(first) > 60 else first


def _kind(node: ast.stmt) -> tuple[str, str]:
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        return "imports", "imports"
    if isinstance(node, ast.ClassDef):
        return "class", node.name
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        return "function", node.name
    return "code", "module code"


def split(source: str) -> list[Chunk]:
    lines = source.splitlines(keepends=True)
    from darwin.syntax import parse

    tree = parse(source)
    # Each top-level statement starts at its first decorator; consecutive imports or plain
    # statements share one chunk.
    starts: list[tuple[int, str, str]] = []
    for node in tree.body:
        first = min([node.lineno, *(d.lineno for d in getattr(node, "decorator_list", []))]) - 1
        kind, name = _kind(node)
        if starts and kind in ("imports", "code") and starts[-1][1] == kind:
            continue
        starts.append((first, kind, name))
    if not starts:
        return [Chunk("code", "module code", source)] if source else []
    # Leading comments/blank lines go with the definition below them.
    bounds = []
    for i, (first, kind, name) in enumerate(starts):
        lo = first
        floor = 0 if i == 0 else starts[i - 1][0] + 1
        while lo > floor and (lines[lo - 1].strip() == "" or lines[lo - 1].lstrip().startswith("#")):
            lo -= 1
        bounds.append((0 if i == 0 else lo, kind, name))
    # Make sure a chunk never starts before the previous one's statement ends.
    chunks = []
    for i, (lo, kind, name) in enumerate(bounds):
        hi = bounds[i + 1][0] if i + 1 < len(bounds) else len(lines)
        chunks.append(Chunk(kind, name, "".join(lines[lo:hi])))
    return chunks


def join(chunks: list[Chunk]) -> str:
    return "".join(c.text for c in chunks)


def outline(chunks: list[Chunk]) -> str:
    """The program's structure, one line per chunk, for the prompt."""
    return "\n".join(f"{i}. {c.kind}: {c.signature()}" for i, c in enumerate(chunks))
