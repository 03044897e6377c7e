"""`lorascope sweep`: a grid of recorded runs from one base config, then one comparison report.
The grid, the skipping of finished runs and the report are `lorascope.runs.sweep.run_sweep`'s."""
# No `from __future__ import annotations` here: Typer would evaluate every option's annotation
# string again when the command is built (about 20 ms of each `--help`).

import signal
from pathlib import Path
from typing import Annotated, Optional

import typer

from lorascope.cli.app import app
from lorascope.cli.choices import listed
from lorascope.config import RunConfig, build_config
from lorascope.lora import INITS
from lorascope.models import MODELS
from lorascope.runs.sweep import DEFAULT_AXES, load_sweep_file
from lorascope.train import OPTIMIZERS, SCHEDULES
from lorascope.workers import cores

__all__ = ["sweep"]

_CORES = min(cores(), 4)
_DEFAULT = " x ".join(", ".join(values) for values in DEFAULT_AXES.values())


def _split(text: str, sep: str = ",") -> list[str]:
    return [v.strip() for v in text.split(sep) if v.strip()]


@app.command(help=f"""Run a grid of recorded trainings that differ in the named axes, then compare them.

    With no axes it runs {' x '.join(DEFAULT_AXES)}: {_DEFAULT}. Runs whose recording already exists
    and is complete are skipped, so an interrupted sweep picks up where it stopped. --seeds N runs
    every grid point N times; the report takes runs that differ only by seed together.
    """)
def sweep(
    config: Annotated[Optional[Path], typer.Option("--config", "-c", help="Base run config (TOML); a [sweep] table in it adds axes.", dir_okay=False)] = None,
    optimizer: Annotated[Optional[str], typer.Option(help=f"Comma-separated optimizers: {listed(OPTIMIZERS)}.")] = None,
    schedule: Annotated[Optional[str], typer.Option(help=f"Comma-separated LR schedules: {listed(SCHEDULES)}.")] = None,
    init: Annotated[Optional[str], typer.Option(help=f"Comma-separated inits: {listed(INITS)} (`lorascope record --help` says what each does).")] = None,
    rank: Annotated[Optional[str], typer.Option(help="Comma-separated ranks.")] = None,
    alpha: Annotated[Optional[str], typer.Option(help="Comma-separated alphas.")] = None,
    lr: Annotated[Optional[str], typer.Option(help="Comma-separated learning rates.")] = None,
    layers: Annotated[Optional[str], typer.Option(help="Semicolon-separated layer selections, e.g. '-2:;:'.")] = None,
    seed: Annotated[Optional[str], typer.Option(help="Comma-separated seeds.")] = None,
    seeds: Annotated[Optional[int], typer.Option(help="Run each grid point N times, with seeds seed, seed+1, ... (run names end in -s<seed>; `seeds = N` in a file's [sweep] table does the same); the report then draws each group's mean with its min-max band across seeds and gives mean ± std.", min=1)] = None,
    steps: Annotated[Optional[int], typer.Option(help="Optimizer steps per run.")] = None,
    model: Annotated[Optional[str], typer.Option(help=f"Model for every run: {listed(MODELS)}, or a path or name as `lorascope record --model` takes.")] = None,
    name: Annotated[str, typer.Option(help="Sweep name: recordings go to recordings/<name>/, the report to reports/<name>/.")] = "sweep",
    recordings: Annotated[Path, typer.Option(help="Folder for the sweep's recordings.")] = Path("recordings"),
    report: Annotated[bool, typer.Option(help="Render the comparison report when the runs are done.")] = True,
    set_: Annotated[Optional[list[str]], typer.Option("--set", metavar="KEY=VALUE", help="Any base config field, dotted (repeatable).")] = None,
    jobs: Annotated[int, typer.Option(help="Runs trained at a time, in processes that share the cores equally. Whether that is faster than one after another depends on the model (the README measures it: 1.1x for a MiniLM encoder on 2 cores, nothing for SmolLM2-135M); each process holds its own model in memory.", min=1)] = 1,
    report_workers: Annotated[int, typer.Option(help="Processes drawing the report's modules side by side; the cores are idle once the runs are done. Default: the machine's cores, at most 4.", min=1)] = _CORES,
) -> None:
    from lorascope.progress import ReportProgress
    from lorascope.runs.sweep import run_sweep

    base, file_axes = load_sweep_file(config) if config else (RunConfig(), {})
    cfg = build_config(base, set_ or [], {"optim.steps": steps, "model.name": model})
    flag_axes = {
        axis: _split(value, ";" if axis == "layers" else ",")  # a layer list itself has commas
        for axis, value in {"optimizer": optimizer, "schedule": schedule, "init": init, "rank": rank,
                            "alpha": alpha, "lr": lr, "layers": layers, "seed": seed}.items()
        if value
    }
    if seeds is not None:  # the flag's count wins over the file's, as every flag over the file
        file_axes.pop("seed", None)
    result = run_sweep(cfg, {**file_axes, **flag_axes} or None, name=name, folder=recordings,
                       report=Path("reports") / name if report else None,
                       log=lambda line: typer.echo(line, err=True), seeds=seeds or 1, jobs=jobs,
                       report_progress=ReportProgress(), report_workers=report_workers)
    if result.interrupted is not None:
        typer.echo(f"sweep interrupted during {result.interrupted.name}; run the same command again to resume", err=True)
        raise typer.Exit(128 + (result.stop_signal or signal.SIGINT))
    if result.report is not None:
        typer.echo(f"report: {result.report}")
    for path in result.paths:
        typer.echo(str(path))
