"""Strict application of search/replace edits to a training program.

An edit whose search text matches zero places or several places fails with a hint ("did you
mean", or where the matches are) that goes back to the model. Edits apply in order and all or
nothing: nothing is ever applied silently or partially (OpenEvolve's apply_diff skips a failed
block; we refuse the whole answer instead).
"""

from __future__ import annotations

import difflib

from darwin.mutation.answers import Edit
from darwin.syntax import compiles


class EditError(ValueError):
    """The edits cannot be applied; the message is written for the model to fix them."""


def _line_of(source: str, index: int) -> int:
    return source.count("\n", 0, index) + 1


def _hint_for_missing(source: str, search: str) -> str:
    lines = source.splitlines()
    wanted = [ln for ln in search.splitlines() if ln.strip()]
    if not wanted:
        return ""
    first = wanted[0]
    stripped = [ln.strip() for ln in lines]
    if first.strip() in stripped:
        n = stripped.index(first.strip()) + 1
        return (f" Its first line matches line {n} except for whitespace or the lines after it "
                "differ; copy the text exactly.")
    close = difflib.get_close_matches(first, lines, n=1, cutoff=0.6)
    if close:
        n = lines.index(close[0]) + 1
        return f" Did you mean line {n}: {close[0].strip()!r}?"
    return ""


def apply_edits(source: str, edits: list[Edit]) -> str:
    """Apply ``edits`` in order; raise EditError listing every problem if any edit fails."""
    if not edits:
        raise EditError("no edits given")
    text = source
    for i, edit in enumerate(edits, 1):
        if not edit.search.strip():
            raise EditError(f"edit {i}: the SEARCH text is empty; quote the lines to replace")
        count = text.count(edit.search)
        if count == 0:
            raise EditError(
                f"edit {i}: the SEARCH text matches nothing in the program."
                + _hint_for_missing(text, edit.search)
            )
        if count > 1:
            where, start = [], 0
            while (found := text.find(edit.search, start)) != -1 and len(where) < 5:
                where.append(str(_line_of(text, found)))
                start = found + 1
            raise EditError(
                f"edit {i}: the SEARCH text matches {count} places (lines {', '.join(where)}); "
                "include more surrounding lines so it matches exactly one"
            )
        text = text.replace(edit.search, edit.replace, 1)
    if text == source:
        raise EditError("the edits change nothing")
    return text


def check_program(source: str) -> None:
    """Cheap pre-flight: the program must parse and compile."""
    try:
        compiles(source, "train.py")
    except SyntaxError as e:
        raise EditError(f"the new program does not parse: {e.msg} at line {e.lineno}") from None


def unified_diff(before: str, after: str, name: str = "train.py") -> str:
    return "".join(
        difflib.unified_diff(
            before.splitlines(keepends=True), after.splitlines(keepends=True),
            fromfile=f"parent/{name}", tofile=f"child/{name}",
        )
    )
