"""lorascope's command line: one module per command, each registering itself on `app` when the
command runs (see `app.COMMANDS`), so `lorascope --help` imports none of them."""
from __future__ import annotations

import os
import sys

from lorascope.cli.app import app

__all__ = ["app", "main"]


def main() -> None:
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        app()
        return
    # A process of a torchrun job ends without the interpreter's shutdown, once its files are
    # closed and its output flushed: torch keeps the process group's gloo threads alive past
    # destroy_process_group (DDP, FSDP2's device mesh), and one of them taking the GIL while the
    # interpreter tears down aborts the process ("terminate called without an active
    # exception"), failing a run that had finished and saved everything.
    try:
        app()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if isinstance(exc.code, str):  # what the interpreter would have printed
            print(exc.code, file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
