"""What a report shows of one module: the rows of the analysis tables for that module, every run,
read by one `lorascope.analysis.analyze` call on a bounded sample of snapshots (evenly spaced,
first and last kept, plus the steps whose histograms are drawn side by side). Figures and the
summary table read these rows; none computes a number of its own."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import pandas as pd

from lorascope.analysis import Options, analyze
from lorascope.analysis.selection import role

__all__ = ["FIT_STEPS", "FIT_SAMPLES", "GEOMETRY_STEPS", "SUMMARY_TABLES", "report_options", "histogram_steps",
           "panel_steps",
           "ModuleView", "module_view"]

# Fits cost ~3 ms per snapshot at 2048 values: a report fits at most this many snapshots per run
# and matrix, on a fixed subset of this many entries (the same at every step, so a change over
# time is the weights', not the draw's).
FIT_STEPS = 32
FIT_SAMPLES = 2048
# Snapshots the tables against W0 (intruders, amplification, magnitude_direction) use per run:
# each multiplies by W0, and a curve over steps needs no more points than the fits'.
GEOMETRY_STEPS = 32
# The tables the summary table reads, computed whatever figures are drawn.
SUMMARY_TABLES = ("stats", "spectra", "fits", "amplification")


def report_options(max_steps: int, bins: int, histogram_steps: Sequence[int]) -> Options:
    """The analysis a report runs: at most `max_steps` snapshots read per run and module, all of
    them used by the histograms and similarity, the tables against W0 at `GEOMETRY_STEPS` of
    them, no quantiles and no gradient rows (nothing draws them), and one thread (a report may
    already draw in several processes)."""
    return Options(quantiles=(), fit_steps=FIT_STEPS, fit_samples=FIT_SAMPLES, max_steps=None,
                   geometry_steps=GEOMETRY_STEPS, bins=bins, histogram_steps=tuple(histogram_steps),
                   read_steps=max_steps, other_series=False, workers=1)


def histogram_steps(steps: np.ndarray, early: int = 3) -> list[int]:
    """The optimizer steps whose histograms are compared: the first snapshot, up to `early`
    snapshots early in training (geometrically spaced: distributions move fastest at first),
    and the last."""
    steps = np.asarray(steps)
    if steps.size == 0:
        return []
    n = steps.size
    if n <= early + 2:
        return [int(s) for s in steps]
    # Indices 1, 2, 4, ... capped to the first 20% of the snapshots.
    horizon = max(1, (n - 1) // 5)
    picks = np.unique(np.clip(np.geomspace(1, horizon, early).round().astype(int), 1, n - 2))
    return [int(steps[0])] + [int(steps[i]) for i in picks] + [int(steps[-1])]


def panel_steps(recs: Sequence[Any], early: int = 3) -> list[int]:
    """The histogram panels' steps: the first run's first and early steps, and a last step no
    run goes beyond, so that every run shows its own last snapshot there."""
    chosen = histogram_steps(np.asarray(recs[0].steps), early)
    if not chosen:
        return []
    last = max(int(np.asarray(r.steps)[-1]) for r in recs if len(r.steps))
    return [s for s in chosen[:-1] if s < last] + [last]


@dataclass
class ModuleView:
    """One module's rows of the analysis tables, every run, and how to pick them apart."""
    name: str
    layer: int | None
    role: str
    in_features: int
    out_features: int
    runs: list[str]
    ranks: dict[str, int]
    tables: dict[str, pd.DataFrame]
    health: list = field(default_factory=list)  # this module's health `Finding`s, every run (unscoped: one module in view)
    _groups: dict = field(default_factory=dict, repr=False)

    def rows(self, table: str, run: str, matrix: str) -> pd.DataFrame:
        """The rows of `table` for one run and matrix (empty when there are none)."""
        if table not in self._groups:
            frame = self.tables[table]
            self._groups[table] = dict(iter(frame.groupby(["run", "matrix"], sort=False))) if len(frame) else {}
        got = self._groups[table].get((run, matrix))
        return got if got is not None else self.tables[table].iloc[:0]

    def series(self, table: str, run: str, matrix: str, column: str) -> tuple[np.ndarray, np.ndarray]:
        """(steps, values) of one column of a per-snapshot table."""
        rows = self.rows(table, run, matrix)
        return rows["step"].to_numpy(), rows[column].to_numpy(dtype=float)


def module_view(recs: Sequence[Any], name: str, tables: Sequence[str], options: Options) -> ModuleView:
    """Analyses module `name` of every run (one `analyze` call) and keeps its tables' rows."""
    result = analyze(recs, tuple(dict.fromkeys(tables)), options, health=True, modules=[name])
    health = [f for f in result.findings if f.module is not None]  # run-level ones (the loss) are the page's
    first = recs[0].modules[name]
    return ModuleView(
        name=name, layer=first.layer_index, role=role(name, first.layer_index),
        in_features=int(first.in_features), out_features=int(first.out_features),
        runs=[r.run_name for r in recs], ranks={r.run_name: int(r.modules[name].rank) for r in recs},
        tables=result.tables, health=health,
    )
