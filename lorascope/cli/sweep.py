"""`lorascope sweep`: a grid of recorded runs from one base config, then one comparison report."""
from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from lorascope.cli.app import app
from lorascope.cli.record import build_config
from lorascope.config import RunConfig
from lorascope.runs.sweep import DEFAULT_AXES, expand, is_complete, load_sweep_file

__all__ = ["sweep"]


def _split(text: str, sep: str = ",") -> list[str]:
    return [v.strip() for v in text.split(sep) if v.strip()]


@app.command()
def sweep(
    config: Annotated[Optional[Path], typer.Option("--config", "-c", help="Base run config (TOML); a [sweep] table in it adds axes.", dir_okay=False)] = None,
    optimizer: Annotated[Optional[str], typer.Option(help="Comma-separated optimizers.")] = None,
    schedule: Annotated[Optional[str], typer.Option(help="Comma-separated LR schedules.")] = None,
    init: Annotated[Optional[str], typer.Option(help="Comma-separated inits.")] = None,
    rank: Annotated[Optional[str], typer.Option(help="Comma-separated ranks.")] = None,
    alpha: Annotated[Optional[str], typer.Option(help="Comma-separated alphas.")] = None,
    lr: Annotated[Optional[str], typer.Option(help="Comma-separated learning rates.")] = None,
    layers: Annotated[Optional[str], typer.Option(help="Semicolon-separated layer selections, e.g. '-2:;:'.")] = None,
    seed: Annotated[Optional[str], typer.Option(help="Comma-separated seeds.")] = None,
    steps: Annotated[Optional[int], typer.Option(help="Optimizer steps per run.")] = None,
    model: Annotated[Optional[str], typer.Option(help="Model for every run (see `lorascope record --help`).")] = None,
    name: Annotated[str, typer.Option(help="Sweep name: recordings go to recordings/<name>/, the report to reports/<name>/.")] = "sweep",
    recordings: Annotated[Path, typer.Option(help="Folder for the sweep's recordings.")] = Path("recordings"),
    report: Annotated[bool, typer.Option(help="Render the comparison report when the runs are done.")] = True,
    set_: Annotated[Optional[list[str]], typer.Option("--set", metavar="KEY=VALUE", help="Any base config field, dotted (repeatable).")] = None,
) -> None:
    """Run a grid of recorded trainings that differ in the named axes, then compare them.

    With no axes it reproduces 000's design at small scale: AdamW, CAME and Adafactor x two inits
    (kaiming-uniform A with zero B, and zero A with Gaussian B). Runs whose recording already
    exists and is complete are skipped, so an interrupted sweep picks up where it stopped.
    """
    from lorascope.runs.session import run

    base, file_axes = load_sweep_file(config) if config else (RunConfig(), {})
    cfg = build_config(base, {"optim.steps": steps, "model.name": model}, set_ or [])
    flag_axes = {
        axis: _split(value, ";" if axis == "layers" else ",")  # a layer list itself has commas
        for axis, value in {"optimizer": optimizer, "schedule": schedule, "init": init, "rank": rank,
                            "alpha": alpha, "lr": lr, "layers": layers, "seed": seed}.items()
        if value
    }
    axes = {**file_axes, **flag_axes} or dict(DEFAULT_AXES)
    out_dir = recordings / name
    runs = expand(cfg, axes, out_dir, name)
    out_dir.mkdir(parents=True, exist_ok=True)
    typer.echo(f"sweep {name}: {len(runs)} runs over {', '.join(axes)} -> {out_dir}/", err=True)

    durations: list[float] = []
    for i, planned in enumerate(runs, 1):
        if is_complete(planned.path):
            typer.echo(f"[{i}/{len(runs)}] {planned.name}: complete, skipped", err=True)
            continue
        for stale in planned.path.parent.glob(planned.path.stem + ".*"):
            stale.unlink()  # an interrupted run is redone from the start
        left = (sum(durations) / len(durations)) * (len(runs) - i + 1) if durations else None
        eta = f", about {left / 60:.0f} min left" if left else ""
        typer.echo(f"[{i}/{len(runs)}] {planned.name}{eta}", err=True)
        started = time.perf_counter()
        summary = run(planned.config, log=lambda line: None)
        if summary.interrupted:  # Ctrl-C stops the sweep, not just this run
            typer.echo(f"sweep interrupted during {planned.name}; run the same command again to resume", err=True)
            raise typer.Exit(128 + (summary.stop_signal or signal.SIGINT))
        durations.append(time.perf_counter() - started)

    paths = [r.path for r in runs]
    if report:
        from lorascope.report.build import build_report

        page = build_report(paths, Path("reports") / name)
        typer.echo(f"report: {page}")
    for p in paths:
        typer.echo(str(p))

