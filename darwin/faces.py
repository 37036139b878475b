"""Package faces: what a package offers other layers, loaded on first use.

Each package's ``__init__`` lists its face in ``_FACE`` (name -> the module it lives in, or None
for a module of the package offered as such) and
sets ``__all__ = sorted(_FACE)`` and ``__getattr__ = lazy(__name__, _FACE)``. Other layers import
only those names, from the package itself (tests/test_layers.py checks it); loading on first use
keeps ``import darwin.x`` cheap (no torch, numpy or Prefect until a name that needs them is used).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable


def lazy(package: str, face: dict[str, str | None]) -> Callable[[str], object]:
    """The module ``__getattr__`` of ``package``: a name of its face, imported when first asked
    for (a name mapped to None is a module of the package). No name may be both a function and
    its module's name: importing the module would set the package's attribute to the module."""

    def __getattr__(name: str) -> object:
        if name not in face:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        where = face[name]
        if where is None:  # the face offers the module itself
            return importlib.import_module(f"{package}.{name}")
        value = getattr(importlib.import_module(f"{package}.{where}"), name)
        setattr(sys.modules[package], name, value)  # asked once
        return value

    return __getattr__
