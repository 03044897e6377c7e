"""A grid of runs that differ in a few named axes of one base config: expansion, readable run
names, which runs are already done (so an interrupted sweep resumes where it stopped), and
``run_sweep``, which runs the grid and can end with the comparison report.

Light to import (the CLI's help reads ``AXES`` and ``DEFAULT_AXES``): training and the report are
imported when a sweep runs."""
from __future__ import annotations

import hashlib
import itertools
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from lorascope.config import RunConfig, apply_overrides, config_differences, config_from_dict, config_to_dict, read_config_data
from lorascope.errors import LorascopeError, UsageError
from lorascope.outputs import OutputLock, remove_owned

__all__ = ["AXES", "DEFAULT_AXES", "SweepRun", "SweepResult", "expand", "is_complete", "load_sweep_file",
           "run_sweep"]

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
    points = [dict(zip(fields, combo)) for combo in itertools.product(*fields.values())]
    names = ["-".join([sweep_name] + [_fragment(f, v) for f, v in overrides.items()]) for overrides in points]
    runs = []
    for name, overrides in zip(names, points):
        if names.count(name) > 1:
            # two values that read alike ('0,1' and '0:1' are both L0_1): the readable name is
            # kept and the values themselves, hashed, tell the runs apart
            name += "-" + _digest(overrides)
        path = out_dir / f"{name}.h5"
        cfg = apply_overrides(base, {**overrides, "name": name, "output": str(path)})
        runs.append(SweepRun(name, cfg, path))
    return runs


def _digest(overrides: dict[str, Any]) -> str:
    """Six hex digits that depend on the values exactly as given: the same grid names its runs
    the same way every time it is run."""
    text = json.dumps(overrides, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:6]


def load_sweep_file(path: Path) -> tuple[RunConfig, dict[str, list[Any]]]:
    """A sweep file is a run config plus an optional [sweep] table mapping axes to value lists;
    returns the base config and the axes. ``seeds = N`` in the table is the seed axis of N
    consecutive seeds from the file's ``seed``."""
    data = read_config_data(path)
    axes = data.pop("sweep", {})
    seeds = axes.pop("seeds", 1) if isinstance(axes, dict) else 1
    if not isinstance(axes, dict) or not all(isinstance(v, list) for v in axes.values()):
        raise UsageError(f'[sweep] in {path} must map axis names to lists, e.g. optimizer = ["adamw", "came"]')
    if not isinstance(seeds, int) or isinstance(seeds, bool):
        raise UsageError(f"seeds in [sweep] of {path} must be a whole number of runs per grid point, e.g. seeds = 3")
    base = config_from_dict(data)
    return base, with_seeds(axes, base.seed, seeds)


def seed_values(first: int, seeds: int) -> list[int]:
    """``seeds`` consecutive seeds from ``first``: each grid point is run once with each."""
    if seeds < 1:
        raise UsageError(f"seeds must be at least 1 (got {seeds}); 3 runs each grid point three times")
    return [first + i for i in range(seeds)]


def with_seeds(axes: dict[str, list[Any]], first: int, seeds: int) -> dict[str, list[Any]]:
    """``axes`` with the seed as one more axis when ``seeds`` > 1 (run names end in -s<seed>);
    a seed axis already there and a seed count are two answers to one question, refused."""
    values = seed_values(first, seeds)
    if seeds == 1:
        return dict(axes)
    if "seed" in axes:
        raise UsageError(f"give either a seed axis ({axes['seed']}) or a number of seeds ({seeds}), not both")
    return {**axes, "seed": values}


def is_complete(run: SweepRun) -> bool:
    """Whether the run's recording exists, says it finished, and was recorded with this run's
    config. An interrupted or unreadable one is redone. A finished recording of another config
    under the same name (the base changed: other --steps, another --set) is never taken for
    this run nor deleted: that is refused, and the sentence says how to keep both."""
    if not run.path.exists():
        return False
    import lorascope

    try:
        with lorascope.open(run.path) as rec:
            if rec.status != "complete":
                return False
            recorded = rec.config
    except LorascopeError:
        return False
    # the output's spelling may differ (another --recordings of the same folder): the path is this run's
    changed = config_differences(recorded, config_to_dict(run.config), ignore=("output",))
    if changed:
        raise UsageError(
            f"{run.path} is a finished run of another config ({'; '.join(changed[:3])}); run the sweep "
            "under another --name to keep both, or delete that file to redo it"
        )
    return True


@dataclass
class SweepResult:
    runs: list[SweepRun]
    skipped: list[str] = field(default_factory=list)  # names of runs already complete
    interrupted: SweepRun | None = None  # the run a signal stopped; the runs after it never started
    stop_signal: int | None = None  # that signal (SIGINT, SIGTERM, SIGHUP)
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


def _eta(durations: list[float], left: float) -> str:
    if not durations or not left:
        return ""
    return f", about {sum(durations) / len(durations) * left / 60:.0f} min left"


def run_sweep(base: RunConfig, axes: dict[str, list[Any]] | None = None, *, name: str = "sweep",
              folder: Path = Path("recordings"), report: Path | None = None,
              log: Callable[[str], None] = print, seeds: int = 1, jobs: int = 1,
              report_progress: Callable[[int, int, str], None] | None = None,
              report_workers: int = 1) -> SweepResult:
    """Runs the grid of ``axes`` (``DEFAULT_AXES`` when None) over ``base`` into
    ``folder/name/``, one recording per run. A run whose recording is complete is skipped;
    an unfinished one is deleted and redone. A signal (Ctrl-C, SIGTERM, SIGHUP) stops the sweep after
    the run it interrupted, which keeps what it recorded; running the same sweep again resumes.
    With ``report`` (a folder) a finished sweep ends with the comparison report of all its runs.
    ``seeds`` > 1 runs every grid point that many times, with seeds ``base.seed``, +1, ...
    ``jobs`` > 1 trains that many runs at a time, in worker processes that share the cores
    (``lorascope.runs.parallel``). ``log`` gets one line per run, with an estimate of the time
    left; ``report_progress`` gets the report's (done, total, what) as it draws, which
    ``report_workers`` processes share."""
    if jobs < 1:
        raise UsageError(f"--jobs must be at least 1 (got {jobs}): the number of runs trained at a time")
    axes = with_seeds(dict(DEFAULT_AXES) if axes is None else axes, base.seed, seeds)
    out_dir = Path(folder) / name
    runs = expand(base, axes, out_dir, name)
    _check_names(runs)
    out_dir.mkdir(parents=True, exist_ok=True)
    log(f"sweep {name}: {len(runs)} runs over {', '.join(axes)} -> {out_dir}/")
    result = SweepResult(runs)
    complete = {planned.name for planned in runs if is_complete(planned)}  # refusals come before any run
    for i, planned in enumerate(runs, 1):
        if planned.name in complete:
            log(f"[{i}/{len(runs)}] {planned.name}: complete, skipped")
            result.skipped.append(planned.name)
    pending = [planned for planned in runs if planned.name not in complete]
    if jobs > 1 and len(pending) > 1:
        _side_by_side(pending, min(jobs, len(pending)), len(runs), result, log)
    else:
        _one_by_one(pending, runs, result, log)
    if report is not None and result.interrupted is None:
        from lorascope.report.build import build_report

        log(f"report of the {len(runs)} runs -> {report}/")
        result.report = build_report(result.paths, report, progress=report_progress, workers=report_workers)
    return result


def _clear(planned: SweepRun) -> None:
    with OutputLock(planned.path):  # never remove what another process is writing
        remove_owned(planned.path)


def _one_by_one(pending: list[SweepRun], runs: list[SweepRun], result: SweepResult,
                log: Callable[[str], None]) -> None:
    from lorascope.runs.session import run

    durations: list[float] = []
    for planned in pending:
        _clear(planned)
        i = runs.index(planned) + 1
        log(f"[{i}/{len(runs)}] {planned.name}{_eta(durations, len(runs) - i + 1)}")
        started = time.perf_counter()
        summary = run(planned.config, log=lambda line: None)
        if summary.interrupted:  # Ctrl-C stops the sweep, not just this run
            result.interrupted, result.stop_signal = planned, summary.stop_signal
            return
        durations.append(time.perf_counter() - started)


def _side_by_side(pending: list[SweepRun], jobs: int, total: int, result: SweepResult,
                  log: Callable[[str], None]) -> None:
    from lorascope.runs.parallel import run_side_by_side
    from lorascope.workers import threads_each

    for planned in pending:
        _clear(planned)
    log(f"training {len(pending)} runs, {jobs} at a time with {threads_each(jobs)} thread(s) each")
    done = [total - len(pending)]
    durations: list[float] = []

    def finished(planned: SweepRun, summary) -> None:
        if summary is None or summary.interrupted:
            if summary is not None:
                log(f"{planned.name}: interrupted")
                if result.interrupted is None:
                    result.interrupted, result.stop_signal = planned, summary.stop_signal
            return
        done[0] += 1
        durations.append(summary.wall_time)
        # the runs left share the jobs: each slot takes about one run's time per run it holds
        log(f"[{done[0]}/{total}] {planned.name}: done{_eta(durations, (total - done[0]) / jobs)}")

    stop_signal = run_side_by_side(pending, jobs, finished)
    if stop_signal is not None and result.interrupted is None:
        # the signal came before any run had started: nothing was recorded, and the sweep stops
        result.interrupted, result.stop_signal = pending[0], stop_signal
