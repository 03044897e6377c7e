"""lorascope's command line: one module per command, each registering itself on `app` when the
command runs (see `app.COMMANDS`), so `lorascope --help` imports none of them."""
from __future__ import annotations

from lorascope.cli.app import app

__all__ = ["app", "main"]


def main() -> None:
    app()
