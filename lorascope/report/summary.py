"""The table a person scans first: for every module and run, where ΔW ended up (its norm, its
effective rank, how strongly it amplifies directions of W0) and when A and B became normal."""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import pandas as pd

from lorascope.analysis.geometry import w0_projection
from lorascope.analysis.spectra import delta_w_svd, effective_rank
from lorascope.errors import UsageError
from lorascope.report import derived
from lorascope.report.collect import ModuleData, RunModule

__all__ = ["summary_table", "summary_rows", "final_delta_w", "normal_from"]


def normal_from(steps: np.ndarray, best: np.ndarray) -> float:
    """The first step whose best-fitting family is the normal, NaN if none is."""
    hits = np.flatnonzero(np.asarray(best, dtype=object) == "normal")
    return float(steps[hits[0]]) if len(hits) else math.nan


def final_delta_w(rm: RunModule) -> dict[str, float]:
    """‖ΔW‖_F, effective rank and amplification factor at the last snapshot read; NaN where the
    factors are not finite, and amplification NaN when the recording holds no W0."""
    out = {"norm": math.nan, "effective_rank": math.nan, "amplification": math.nan}
    try:
        U, S, V = delta_w_svd(rm.A[-1:], rm.B[-1:], rm.scaling)
    except UsageError:  # NaN/Inf in the final factors: nothing meaningful to summarise
        return out
    frobenius = np.sqrt((S**2).sum(axis=1))
    out["norm"] = float(frobenius[0])
    out["effective_rank"] = float(effective_rank(S)[0])
    W0 = getattr(rm.source, "W0", None)
    if W0 is not None:
        out["amplification"] = float(w0_projection(np.asarray(W0), U, V, frobenius)["amplification"][0])
    return out


def summary_rows(data: ModuleData) -> list[dict]:
    """One module's rows of the summary table, one per run: plain values, so that a module drawn
    in another process sends back only these."""
    rows = []
    for run, rm in data.runs.items():
        final = final_delta_w(rm)
        normal = {m: normal_from(*_best(data, run, m)) for m in ("A", "B")}
        rows.append({
            "module": data.name,
            "run": run,
            "final step": int(rm.steps[-1]),
            "A normal from step": normal["A"],
            "B normal from step": normal["B"],
            "final ‖ΔW‖_F": final["norm"],
            "final effective rank of ΔW": final["effective_rank"],
            "amplification (needs W0)": final["amplification"],
        })
    return rows


def summary_table(modules: Sequence[ModuleData]) -> pd.DataFrame:
    """One row per (module, run)."""
    return pd.DataFrame([row for data in modules for row in summary_rows(data)])


def _best(data: ModuleData, run: str, matrix: str) -> tuple[np.ndarray, np.ndarray]:
    steps, result = derived.fits(data, run, matrix)
    return steps, result.best
