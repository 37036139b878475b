"""The pages' templates: autoescaped, always (every page shows text a model or a child wrote)."""

from __future__ import annotations

from functools import cache

from jinja2 import Environment, PackageLoader, select_autoescape


@cache
def templates() -> Environment:
    return Environment(loader=PackageLoader("darwin.reports", "templates"),
                       autoescape=select_autoescape(default=True, default_for_string=True),
                       trim_blocks=True, lstrip_blocks=True)
