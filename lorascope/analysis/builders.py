"""What a registered analysis table is. The driver streams over modules; for each module it hands
every run's `ModuleAnalysis` in turn to one `Rows` per table, then asks it for the rows that need
every run; tables derived from other tables or from the findings are built at the end. Three
kinds cover every table:

- `PerRun`: rows from one run's module alone (stats, spectra, fits, ...);
- `AcrossRuns`: rows from one module of every run, for the modules all runs have (similarity
  between runs, histograms on bins shared by the runs);
- `Derived`: rows from finished tables and the findings (family_changes, findings).

Each says which snapshots of a module's sample it reads (`snapshots`), so that a driver asked
only for tables that read a few snapshots reads only those."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from lorascope.analysis.options import KEYS, Options
from lorascope.analysis.selection import evenly

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["Rows", "PerRun", "AcrossRuns", "Derived", "Table", "Snapshots", "all_snapshots", "evenly_spaced", "concat"]

# (steps of a module's sample, options) -> positions in the sample a table reads; None: all.
Snapshots = Callable[[np.ndarray, Options], "np.ndarray | None"]


def all_snapshots(steps: np.ndarray, o: Options) -> None:
    return None


def evenly_spaced(limit: Callable[[Options], int | None]) -> Snapshots:
    """A table that reads up to `limit(options)` evenly spaced snapshots of the sample."""
    return lambda steps, o: evenly(len(steps), limit(o))


class Rows:
    """One table's rows for one module, gathered while each run's module is in memory."""

    def add(self, ma) -> list[pd.DataFrame]:
        """Rows from one run's module (its series is dropped after the call)."""
        return []

    def finish(self) -> list[pd.DataFrame]:
        """Rows that need the module of every run, after the last one was added."""
        return []


class _PerRunRows(Rows):
    def __init__(self, build: Callable) -> None:
        self.build = build

    def add(self, ma) -> list[pd.DataFrame]:
        return self.build(ma)


@dataclass(frozen=True)
class PerRun:
    """A table whose rows come from one run's module alone; `needs` names the module's
    computations its rows read (started together on the thread pool)."""
    build: Callable  # (ModuleAnalysis) -> list[DataFrame]
    needs: tuple[str, ...] = ()
    snapshots: Snapshots = all_snapshots
    columns: tuple[str, ...] = tuple(KEYS)
    compares_runs = False
    sources: tuple[str, ...] = ()
    health = False

    def rows(self, options: Options) -> Rows:
        return _PerRunRows(self.build)


@dataclass(frozen=True)
class AcrossRuns:
    """A table whose rows need the same module of every run: built for the modules every run has;
    `start(options)` gives the rows' gatherer for one module."""
    start: Callable[[Options], Rows]
    columns: tuple[str, ...]
    snapshots: Snapshots = all_snapshots
    needs: tuple[str, ...] = ()
    compares_runs = True
    sources: tuple[str, ...] = ()
    health = False

    def rows(self, options: Options) -> Rows:
        return self.start(options)


@dataclass(frozen=True)
class Derived:
    """A table built from finished tables (`sources`, computed even when not asked for) and, with
    `health`, the findings."""
    build: Callable  # (tables: dict[str, DataFrame], findings: list[Finding]) -> DataFrame
    sources: tuple[str, ...] = ()
    health: bool = False
    columns: tuple[str, ...] = ()


Table = PerRun | AcrossRuns | Derived


def concat(frames: Sequence[pd.DataFrame], columns: Sequence[str] = KEYS) -> pd.DataFrame:
    """The frames as one table (an empty one with `columns` when there are none)."""
    import pandas as pd

    frames = [f for f in frames if len(f)]
    if not frames:
        return pd.DataFrame(columns=list(columns))
    return pd.concat(frames, ignore_index=True)
