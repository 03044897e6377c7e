"""`lorascope report`: one HTML page plus PNG figures comparing one or more recordings
(`lorascope.report.build_report`, which draws the tables of `lorascope.analysis`)."""
from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path
from typing import Annotated, Optional

import typer

from lorascope.cli.app import app
from lorascope.errors import UsageError
from lorascope.progress import ReportProgress
from lorascope.report import DEFAULT_MAX_MODULES, DEFAULT_MAX_STEPS, MODULE_FIGURES

__all__ = ["report", "parse_figure_kinds"]


def parse_figure_kinds(text: str) -> list[str]:
    """'all' or a comma-separated list of registered figure kinds, checked by the registry."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names or names == ["all"]:
        return MODULE_FIGURES.names()
    for name in names:
        MODULE_FIGURES.get(name)  # an unknown kind raises a UsageError listing the valid ones
    return names


def _figures_help() -> str:
    return "Figure kinds per module, or all. " + "; ".join(
        f"{n}: {MODULE_FIGURES.description(n)}" for n in MODULE_FIGURES.names()) + "."


@app.command()
def report(
    recordings: Annotated[list[Path], typer.Argument(help="Recording files (.h5) to compare.", dir_okay=False)],
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Report folder [default: reports/<name from the run names>].", file_okay=False)] = None,
    modules: Annotated[str, typer.Option(help="Glob over module names to draw, such as '*.attn.*'.")] = "*",
    max_modules: Annotated[int, typer.Option(help="Draw at most this many modules (the rest are listed).")] = DEFAULT_MAX_MODULES,
    max_steps: Annotated[int, typer.Option(help="Snapshots analysed per run and module (evenly spaced, the first and last kept).")] = DEFAULT_MAX_STEPS,
    figures: Annotated[str, typer.Option(help=_figures_help())] = "all",
    bins: Annotated[int, typer.Option(help="Histogram bins (shared by the runs on each axis).")] = 64,
    title: Annotated[Optional[str], typer.Option(help="Page title [default: the run names].")] = None,
    workers: Annotated[int, typer.Option(help="Processes drawing modules side by side (pays only with idle cores).")] = 1,
    scheduler: Annotated[Optional[str], typer.Option(help="Address of a Dask scheduler (tcp://host:8786) whose workers draw the modules, each task opening the recordings by path and writing its figures into the output folder; the files must be at the same paths there. Needs pip install 'lorascope[dask]'.")] = None,
) -> None:
    """Write an HTML report (index.html plus PNG figures) comparing recordings."""
    import lorascope
    from lorascope.report import build_report
    from lorascope.report.paths import default_report_name

    kinds = parse_figure_kinds(figures)
    if max_steps < 2:
        raise UsageError(f"--max-steps must be at least 2 (got {max_steps})")
    with ExitStack() as stack:
        recs = [stack.enter_context(lorascope.open(p)) for p in recordings]
        if output is None:
            # Run names come from files: safe_name keeps them from leaving reports/.
            output = Path("reports") / default_report_name([r.run_name for r in recs])
        index = build_report(recs, output, modules=modules, max_modules=max_modules,
                             max_steps=max_steps, figure_kinds=kinds, bins=bins, title=title,
                             progress=ReportProgress(), workers=workers, scheduler=scheduler)
    typer.echo(f"report written to {index}")
