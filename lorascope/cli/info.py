"""`lorascope info`: what a recording holds, readable at a glance, also while it is being written."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

from lorascope.cli.app import app
from lorascope.errors import UsageError

__all__ = ["info", "describe", "HIGHLIGHTS"]

# The config fields a person asks about first; the whole config is in the file.
HIGHLIGHTS = (
    "model.name", "data.source", "data.task", "optim.optimizer", "optim.schedule", "optim.lr",
    "optim.steps", "optim.grad_accum", "lora.rank", "lora.alpha", "lora.init", "lora.targets",
    "lora.layers", "record.every", "seed",
)


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def _lookup(config: dict, dotted: str) -> Any:
    value: Any = config
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def _last_finite(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(finite[-1]) if len(finite) else math.nan


def _scalar_lines(rec: Any) -> list[str]:
    scalars = rec.scalars
    lines = []
    for column in [c for c in scalars.columns if c == "loss" or str(c).startswith("eval_")]:
        values = scalars[column].to_numpy(dtype=float)
        last = _last_finite(values)
        if math.isnan(last):
            continue
        best = float(np.nanmin(values))
        lines.append(f"  {column:<24} final {last:.4g}   best {best:.4g}")
    return lines


def describe(rec: Any, path: Path | None = None, *, health: bool = True, max_steps: int = 50) -> str:
    """The summary `lorascope info` prints, as text."""
    steps = np.asarray(rec.steps)
    lines = [f"run        {rec.run_name}", f"status     {rec.status}"]
    version = getattr(rec, "lorascope_version", "")
    lines.append(f"format     v{rec.format_version}" + (f" (written by lorascope {version})" if version else ""))
    if path is not None:
        lines.append(f"file       {path} ({_size(path.stat().st_size)})")
    if len(steps):
        lines.append(f"snapshots  {len(steps)}, optimizer steps {int(steps[0])} … {int(steps[-1])}")
    else:
        lines.append("snapshots  none committed yet")
    times = getattr(rec, "times", None)
    if times is not None and len(times):
        lines.append(f"wall time  {float(times[-1]):.1f} s to the last snapshot")
    lines.append("config")
    for key in HIGHLIGHTS:
        value = _lookup(rec.config or {}, key)
        if value is not None:
            lines.append(f"  {key:<24} {value}")
    scalar_lines = _scalar_lines(rec)
    if scalar_lines:
        lines.append("training")
        lines.extend(scalar_lines)
    total = sum(m.rank * (m.in_features + m.out_features) for m in rec.modules.values())
    lines.append(f"modules    {len(rec.modules)} ({total:,} LoRA values)")
    for name, m in rec.modules.items():
        layer = "-" if m.layer_index is None else str(m.layer_index)
        lines.append(f"  {name:<40} layer {layer:>3}  A {m.rank}×{m.in_features}  "
                     f"B {m.out_features}×{m.rank}  scaling {m.scaling:g}")
    if health:
        lines.append("health")
        lines.extend(f"  {f}" for f in _findings(rec, max_steps) or ["no findings"])
    return "\n".join(lines)


def _findings(rec: Any, max_steps: int) -> list[str]:
    """Health checks on at most `max_steps` snapshots per module (a quick look, not a study)."""
    from lorascope.report.collect import read_module
    from lorascope.report.health import loss_findings, module_findings

    found = [str(f) for f in loss_findings(rec)]
    if len(rec.steps) == 0:
        return found
    for name in rec.modules:
        data = read_module([rec], name, max_steps, early=0)
        found.extend(str(f) for fs in module_findings(data).values() for f in fs)
    return found


@app.command()
def info(
    recording: Annotated[Path, typer.Argument(help="A recording file (.h5).", dir_okay=False)],
    health: Annotated[bool, typer.Option(help="Run the health checks (reads up to --max-steps snapshots per module).")] = True,
    max_steps: Annotated[int, typer.Option(help="Snapshots per module the health checks read.")] = 50,
) -> None:
    """Summarise a recording: run, status, config, modules, snapshots, size and health."""
    import lorascope

    if max_steps < 2:
        raise UsageError(f"--max-steps must be at least 2 (got {max_steps})")
    with lorascope.open(recording) as rec:
        typer.echo(describe(rec, recording, health=health, max_steps=max_steps))
