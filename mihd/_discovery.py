"""Import every public module of a package once, so that registration decorators run."""

from __future__ import annotations

import importlib
import pkgutil

_DONE: set[str] = set()


def import_submodules(package: str) -> None:
    """Import ``package.<name>`` for each module not starting with ``_`` (once per package)."""
    if package in _DONE:
        return
    pkg = importlib.import_module(package)
    for mod in pkgutil.iter_modules(pkg.__path__):
        if not mod.name.startswith("_"):
            importlib.import_module(f"{package}.{mod.name}")
    _DONE.add(package)
