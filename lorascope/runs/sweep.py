"""A grid of runs that differ in a few named axes of one base config: expansion, readable run
names, which runs are already done (so an interrupted sweep resumes where it stopped), and
``run_sweep``, which runs the grid and can end with the comparison report.

Light to import (the CLI's help reads ``AXES`` and ``DEFAULT_AXES``): training and the report are
imported when a sweep runs."""
from __future__ import annotations

import itertools
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from lorascope.config import RunConfig, apply_overrides, config_from_dict, read_config_data
from lorascope.errors import LorascopeError, UsageError

__all__ = ["AXES", "DEFAULT_AXES", "SweepRun", "SweepResult", "expand", "is_complete", "load_sweep_file",
           "remove_partial", "run_sweep"]

# The axes a user names on the command line, with the config field each one sets and the short
# prefix used in run names (a value alone where the value says what it is, like "came").
AXES: dict[str, tuple[str, str]] = {
    "optimizer": ("optim.optimizer", ""),
    "schedule": ("optim.schedule", ""),
    "init": ("lora.init", ""),
    "rank": ("lora.rank", "r"),
    "alpha": ("lora.alpha", "a"),
    "lr": ("optim.lr", "lr"),
    "layers": ("lora.layers", "L"),
    "targets": ("lora.targets", "t"),
    "seed": ("seed", "s"),
}

# The default sweep: three optimizers x the zero on B (the usual init) or on A, at small scale.
DEFAULT_AXES: dict[str, list[str]] = {
    "optimizer": ["adamw", "came", "adafactor"],
    "init": ["kaiming_uniform", "gaussian_b"],
}


@dataclass(frozen=True)
class SweepRun:
    name: str
    config: RunConfig
    path: Path


def _fragment(field: str, value: Any) -> str:
    prefix = next((short for f, short in AXES.values() if f == field), field.rsplit(".", 1)[-1] + "=")
    text = ",".join(map(str, value)) if isinstance(value, list) else str(value)
    return re.sub(r"[^A-Za-z0-9._=+-]", "_", f"{prefix}{text}")


def expand(base: RunConfig, axes: dict[str, list[Any]], out_dir: Path, sweep_name: str) -> list[SweepRun]:
    """One run per point of the grid. `axes` maps a named axis (see AXES) or any dotted config
    field to its values."""
    if not axes:
        raise UsageError("a sweep needs at least one axis with values, such as --optimizer adamw,came")
    fields = {AXES[a][0] if a in AXES else a: values for a, values in axes.items()}
    for field_name, values in fields.items():
        if not values:
            raise UsageError(f"sweep axis {field_name} has no values")
        if len(set(map(str, values))) != len(values):
            raise UsageError(f"sweep axis {field_name} repeats a value: {values}")
    runs = []
    for combo in itertools.product(*fields.values()):
        overrides = dict(zip(fields, combo))
        name = "-".join([sweep_name] + [_fragment(f, v) for f, v in overrides.items()])
        path = out_dir / f"{name}.h5"
        cfg = apply_overrides(base, {**overrides, "name": name, "output": str(path)})
        runs.append(SweepRun(name, cfg, path))
    return runs


def load_sweep_file(path: Path) -> tuple[RunConfig, dict[str, list[Any]]]:
    """A sweep file is a run config plus an optional [sweep] table mapping axes to value lists;
    returns the base config and the axes."""
    data = read_config_data(path)
    axes = data.pop("sweep", {})
    if not isinstance(axes, dict) or not all(isinstance(v, list) for v in axes.values()):
        raise UsageError(f'[sweep] in {path} must map axis names to lists, e.g. optimizer = ["adamw", "came"]')
    return config_from_dict(data), axes


def is_complete(path: Path) -> bool:
    """A recording that exists and says it finished; an interrupted or unreadable one is redone."""
    if not path.exists():
        return False
    import lorascope

    try:
        with lorascope.open(path) as rec:
            return rec.status == "complete"
    except LorascopeError:
        return False


def remove_partial(run: SweepRun) -> list[Path]:
    """Deletes what an unfinished run left beside its recording (the recording, its adapters,
    its trainer state: every ``<run name>.*`` in its folder), so it is redone from the start.
    Returns the deleted paths."""
    stale = sorted(run.path.parent.glob(run.path.stem + ".*"))
    for path in stale:
        path.unlink()
    return stale


@dataclass
class SweepResult:
    runs: list[SweepRun]
    skipped: list[str] = field(default_factory=list)  # names of runs already complete
    interrupted: SweepRun | None = None  # the run a signal stopped; the runs after it never started
    stop_signal: int | None = None  # that signal (SIGINT, SIGTERM)
    report: Path | None = None  # the comparison report's index.html

    @property
    def paths(self) -> list[Path]:
        return [r.path for r in self.runs]


def _check_names(runs: list[SweepRun]) -> None:
    """Every run's optimizer, schedule and init exist and fit together, checked before the first
    run trains: a typo in the last value of an axis must not wait for the others to finish."""
    from lorascope.lora import INITS
    from lorascope.train.optim import validate_optim

    for run in runs:
        validate_optim(run.config.optim)
        INITS.get(run.config.lora.init)


def _eta(durations: list[float], left: int) -> str:
    if not durations:
        return ""
    return f", about {sum(durations) / len(durations) * left / 60:.0f} min left"


def run_sweep(base: RunConfig, axes: dict[str, list[Any]] | None = None, *, name: str = "sweep",
              folder: Path = Path("recordings"), report: Path | None = None,
              log: Callable[[str], None] = print) -> SweepResult:
    """Runs the grid of ``axes`` (``DEFAULT_AXES`` when None) over ``base`` into
    ``folder/name/``, one recording per run. A run whose recording is complete is skipped;
    an unfinished one is deleted and redone. A signal (Ctrl-C, SIGTERM) stops the sweep after
    the run it interrupted, which keeps what it recorded; running the same sweep again resumes.
    With ``report`` (a folder) a finished sweep ends with the comparison report of all its runs.
    ``log`` gets one line per run, with an estimate of the time left."""
    from lorascope.runs.session import run

    axes = dict(DEFAULT_AXES) if axes is None else axes
    out_dir = Path(folder) / name
    runs = expand(base, axes, out_dir, name)
    _check_names(runs)
    out_dir.mkdir(parents=True, exist_ok=True)
    log(f"sweep {name}: {len(runs)} runs over {', '.join(axes)} -> {out_dir}/")
    result = SweepResult(runs)
    durations: list[float] = []
    for i, planned in enumerate(runs, 1):
        if is_complete(planned.path):
            log(f"[{i}/{len(runs)}] {planned.name}: complete, skipped")
            result.skipped.append(planned.name)
            continue
        remove_partial(planned)
        log(f"[{i}/{len(runs)}] {planned.name}{_eta(durations, len(runs) - i + 1)}")
        started = time.perf_counter()
        summary = run(planned.config, log=lambda line: None)
        if summary.interrupted:  # Ctrl-C stops the sweep, not just this run
            result.interrupted, result.stop_signal = planned, summary.stop_signal
            return result
        durations.append(time.perf_counter() - started)
    if report is not None:
        from lorascope.report.build import build_report

        result.report = build_report(result.paths, report)
    return result
