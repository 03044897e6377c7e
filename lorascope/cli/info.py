"""`lorascope info`: what a recording holds, readable at a glance, also while it is being written
(`lorascope.analysis.describe`, whose health section is `analyze(...).findings`)."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lorascope.cli.app import app
from lorascope.errors import UsageError

__all__ = ["info"]


@app.command()
def info(
    recording: Annotated[Path, typer.Argument(help="A recording file (.h5).", dir_okay=False)],
    health: Annotated[bool, typer.Option(help="Run the health checks (reads up to --max-steps snapshots per module).")] = True,
    max_steps: Annotated[int, typer.Option(help="Snapshots per module the health checks read.")] = 50,
) -> None:
    """Summarise a recording: run, status, config, modules, snapshots, size and health.

    Its findings are the sentences the report opens with, for this one run: its final and best
    eval metrics and its health. The kinds that need the analysis tables (when B or A leaves
    zero, the distribution families, stalls of the update) are left out, and named: lorascope
    analyze --tables stats,fits and lorascope report state them.
    """
    import lorascope
    from lorascope.analysis.overview import describe

    if max_steps < 2:
        raise UsageError(f"--max-steps must be at least 2 (got {max_steps})")
    with lorascope.open(recording) as rec:
        typer.echo(describe(rec, recording, health=health, max_steps=max_steps))
