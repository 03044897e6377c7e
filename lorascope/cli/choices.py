"""Option help and choices read from the registries, so that --help is always what exists. Only
the registries' declared names are read: nothing behind them is imported."""
from __future__ import annotations

import textwrap
from enum import Enum
from typing import Iterable

from lorascope.registry import Registry

__all__ = ["choices", "described", "listed"]

# The help column of an option in an 80-column terminal: click starts it at column 26 or so.
HELP_WIDTH = 52


def choices(kind: str, names: Iterable[str]) -> type[Enum]:
    """A str Enum of names: Typer then refuses anything else, with the list."""
    return Enum(kind, {name: name for name in names}, type=str)


def described(intro: str, registry: Registry, tail: str = "") -> str:
    """``intro``, then a table of the registered names and their descriptions, then ``tail``.
    Click rewraps help text; a paragraph that starts with ``\\b`` it leaves alone, so the table
    is wrapped here, each description beside its name."""
    width = max(map(len, registry.names())) + 2
    lines = []
    for name in registry.names():
        wrapped = textwrap.wrap(registry.description(name), max(20, HELP_WIDTH - width)) or [""]
        lines.append(name.ljust(width) + wrapped[0])
        lines.extend(" " * width + more for more in wrapped[1:])
    return "\n\n".join([intro, "\b\n" + "\n".join(lines)] + ([tail] if tail else []))


def listed(registry: Registry) -> str:
    """The names, comma-separated: for options that take several at once."""
    return ", ".join(registry.names())
