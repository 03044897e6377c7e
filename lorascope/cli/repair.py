"""`lorascope repair`: the file of a killed run made an ordinary closed HDF5 file, so h5dump,
h5ls and plain h5py open it (`lorascope.h5.repair.repair`)."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lorascope.cli.app import app

__all__ = ["repair"]


@app.command()
def repair(
    recording: Annotated[Path, typer.Argument(help="A recording file (.h5) whose writer was killed.", dir_okay=False)],
    force: Annotated[bool, typer.Option(help="Repair a file written on another machine (its writer cannot be checked from here); only once you know that run stopped.")] = False,
) -> None:
    """Clear the write flags a killed run left in its recording, so HDF5's tools and plain h5py open it."""
    from lorascope.h5.repair import repair as clear

    typer.echo(str(clear(recording, force=force)))
