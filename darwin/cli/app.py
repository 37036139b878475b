"""The `darwin` application: its command groups, the consoles and the shared flags (``main``,
which turns DARWIN's errors into one line and an exit code, is in ``darwin.cli``).

Commands stay thin (one module per group in this package): they parse flags, call the core and
print (rich tables for people, ``--json`` for machines: JSON only on stdout, progress on stderr).
"""

from __future__ import annotations

import sys
from typing import Annotated

from cyclopts import App, Parameter
from rich.console import Console

app = App(
    name="darwin",
    help="DARWIN: an LLM evolves the training code of small GPT models.",
    version_flags=["--version"],
)
sandbox_app = App(name="sandbox",
                  help="Check the sandbox that runs untrusted training code; build its Docker image.")
app.command(sandbox_app)
dev_app = App(name="dev", help="Tools for developing and trying DARWIN locally.")
app.command(dev_app)

# Piped output keeps whole table rows (rich would squeeze them into 80 columns).
out = Console(highlight=False, width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 160)

JsonFlag = Annotated[bool, Parameter(name="--json", negative=(), help="print JSON only")]


def open_sandbox(name: str | None):
    """The chosen sandbox backend, said on stderr (loudly when it does not isolate)."""
    from darwin.sandbox import describe, get_sandbox
    from darwin.settings import get_settings

    chosen = name or get_settings().sandbox
    box = get_sandbox(chosen)
    for line in describe(box, chosen):
        say(line)
    return box


def say(line: str) -> None:
    """A line of a run's progress on stderr: plain text (it may quote names a candidate chose),
    loud when it warns that nothing isolates."""
    if line.startswith("UNSAFE:"):
        err.print(line, style="bold red", markup=False, highlight=False)
    else:
        err.print(line, style="dim" if line.startswith("sandbox:") else None, markup=False,
                  highlight=False)
