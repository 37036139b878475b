"""The `darwin` command line: the app and its consoles in app.py, one module per command group.

    run.py        darwin run                       evolve a program (the main job)
    review.py     darwin review                    answer the review a paused run waits for
    read.py       darwin runs | leaderboard | show read runs back
    report.py     darwin report                    figures and an HTML page of a run (or runs)
    serve.py      darwin serve                     a scheduled deployment served by this process
    score.py      darwin baseline | score          train and score one program on N seeds
    mutate.py     darwin mutate                    one mutation, written as a child
    sandbox.py    darwin sandbox check | build     the sandbox and its Docker image
    dev.py        darwin dev llm-server            a local OpenAI-compatible server
    worker.py     darwin worker                    this machine trains a pool's children
"""

from __future__ import annotations

import sys

from darwin.cli import (  # noqa: F401 - registration
    dev,
    mutate,
    read,
    report,
    review,
    run,
    sandbox,
    score,
    serve,
    worker,
)
from darwin.cli.app import app, err
from darwin.errors import DarwinError

__all__ = ["app", "main"]


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; DARWIN's errors become one line on stderr and the error's exit code."""
    import logging

    # A store that drops connections leaves s3fs's event loop with aiohttp writes nobody
    # awaits; asyncio prints each as "Task exception was never retrieved" with a traceback.
    # The store's own retries and its one-line error are what a user needs.
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    from cyclopts import CycloptsError

    try:
        # cyclopts' own errors (a word where a number goes, an unknown flag) end as ours do:
        # one line, exit 2, not a framed box.
        app(argv if argv is not None else sys.argv[1:], print_error=False, exit_on_error=False)
    except CycloptsError as e:
        err.print(f"darwin: error: {' '.join(str(e).split())}", markup=False, highlight=False,
                  soft_wrap=True)
        sys.exit(2)
    except DarwinError as e:
        err.print(f"darwin: error: {e}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        err.print("darwin: interrupted")
        sys.exit(130)
    except BrokenPipeError:  # `darwin runs --json | head`: the reader left, nothing to say
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        sys.exit(1)
