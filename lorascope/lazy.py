"""Package front doors that cost nothing to import: a package lists its public names and the
submodule each lives in, and the submodule (with its torch, pandas or matplotlib) is imported the
first time a name is used (PEP 562). ``import lorascope.lora`` stays light, so a command that only
needs the package's registries (``--help``) never pays for the implementation."""
from __future__ import annotations

import importlib
import sys
from typing import Any, Callable

__all__ = ["lazy_exports"]


def lazy_exports(package: str, where: dict[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for ``package``: ``where`` maps each public name to the
    module that defines it. Use as ``__getattr__, __dir__ = lazy_exports(__name__, {...})``."""

    def __getattr__(name: str) -> Any:
        module = where.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        # kept on the package, so the next lookup is an ordinary attribute
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(set(where) | set(vars(sys.modules[package])))

    return __getattr__, __dir__
