"""The table a person scans first: for every module and run, where ΔW ended up (its norm, its
effective rank, how strongly it amplifies directions of W0) and when A and B became normal, read
off the analysis tables at the last snapshot the report read."""
from __future__ import annotations

import math

import numpy as np

from lorascope.report.view import ModuleView

__all__ = ["summary_rows", "normal_from"]


def normal_from(steps: np.ndarray, best: np.ndarray) -> float:
    """The first step whose best-fitting family is the normal, NaN if none is."""
    hits = np.flatnonzero(np.asarray(best, dtype=object) == "normal")
    return float(steps[hits[0]]) if len(hits) else math.nan


def _last(view: ModuleView, table: str, run: str, column: str) -> float:
    """`column` of a dW row of `table` at the run's last step read, NaN when the table has none."""
    steps, values = view.series(table, run, "dW", column)
    return float(values[np.argmax(steps)]) if len(steps) else math.nan


def _normal_from(view: ModuleView, run: str, matrix: str) -> float:
    rows = view.rows("fits", run, matrix)
    best = rows.drop_duplicates("step")  # every family's row of a snapshot carries its best family
    return normal_from(best["step"].to_numpy(), best["best_family"].to_numpy())


def summary_rows(view: ModuleView) -> list[dict]:
    """One module's rows of the summary table, one per run: plain values, so that a module drawn
    in another process sends back only these."""
    rows = []
    for run in view.runs:
        steps, _ = view.series("stats", run, "A", "mean")
        rows.append({
            "module": view.name,
            "run": run,
            "final step": int(steps.max()) if len(steps) else math.nan,
            "A normal from step": _normal_from(view, run, "A"),
            "B normal from step": _normal_from(view, run, "B"),
            "final ‖ΔW‖_F": _last(view, "stats", run, "frobenius"),
            "final effective rank of ΔW": _last(view, "spectra", run, "effective_rank"),
            "amplification (needs W0)": _last(view, "geometry", run, "amplification"),
        })
    return rows
