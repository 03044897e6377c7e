"""Analysis results a report needs more than once (a figure and the summary table), computed
by `lorascope.analysis` on first use and kept on the module's data for the rest of the report."""
from __future__ import annotations

import numpy as np

from lorascope.analysis.fits import FitResult, fit_snapshots
from lorascope.analysis.spectra import delta_w_singular_values
from lorascope.analysis.stats import moments
from lorascope.report.collect import ModuleData, snapshot_indices

__all__ = ["FIT_STEPS", "FIT_SAMPLES", "FIT_CRITERION", "matrix", "matrix_moments", "fits", "dw_singular_values"]

# Fits cost ~3 ms per snapshot at 2048 values: a report fits at most this many snapshots per run
# and matrix, on a fixed subset of this many entries (analysis.fits keeps the subset fixed across
# steps, so a change over time is the weights', not the draw's).
FIT_STEPS = 32
FIT_SAMPLES = 2048
# As `lorascope analyze`: with thousands of values AIC lets the nested families (t, gennorm) win
# by noise, BIC does not.
FIT_CRITERION = "bic"


def matrix(data: ModuleData, run: str, name: str) -> np.ndarray:
    rm = data.runs[run]
    return rm.A if name == "A" else rm.B


def _cached(data: ModuleData, key: tuple, compute):
    if key not in data.cache:
        data.cache[key] = compute()
    return data.cache[key]


def matrix_moments(data: ModuleData, run: str, name: str) -> dict[str, np.ndarray]:
    """analysis.stats.moments of A or B at every snapshot read."""
    return _cached(data, ("moments", run, name),
                   lambda: moments(matrix(data, run, name), quantiles=()))


def fits(data: ModuleData, run: str, name: str) -> tuple[np.ndarray, FitResult]:
    """(steps, fit result) of A or B at up to FIT_STEPS snapshots."""
    def compute():
        rm = data.runs[run]
        rows = snapshot_indices(len(rm.steps), FIT_STEPS)
        return rm.steps[rows], fit_snapshots(matrix(data, run, name)[rows], max_samples=FIT_SAMPLES,
                                             criterion=FIT_CRITERION)
    return _cached(data, ("fits", run, name), compute)


def dw_singular_values(data: ModuleData, run: str) -> np.ndarray:
    """Singular values (T, r) of ΔW = scaling·B·A at every snapshot read."""
    rm = data.runs[run]
    return _cached(data, ("dw_sv", run), lambda: delta_w_singular_values(rm.A, rm.B, rm.scaling))
