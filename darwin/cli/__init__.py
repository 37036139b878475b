"""The `darwin` command line (see ``app``)."""

from darwin.cli.app import app, main

__all__ = ["app", "main"]
