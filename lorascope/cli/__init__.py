"""lorascope's command line: one module per command, each registering itself on `app`."""
from __future__ import annotations

import importlib

from lorascope.cli.app import app

__all__ = ["app", "main"]

# Importing a command module registers its command on `app`; the order is the order in --help.
_COMMANDS: tuple[str, ...] = ("record", "sweep", "info", "analyze", "report")
for _name in _COMMANDS:
    importlib.import_module(f"lorascope.cli.{_name}")


def main() -> None:
    app()
