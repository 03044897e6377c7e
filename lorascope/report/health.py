"""Health warnings for the report, from `lorascope.analysis`'s checks. The checks run on the
snapshots the report already read (a bounded subsample), through the same `ModuleAnalysis` that
`lorascope analyze` uses, so a report never reads a whole long recording a second time."""
from __future__ import annotations

from typing import Any

import numpy as np

from lorascope.analysis import health as _health
from lorascope.analysis.tables import ModuleAnalysis, Options
from lorascope.report.collect import ModuleData, RunModule, snapshot_indices

__all__ = ["module_findings", "loss_findings", "HEALTH_STEPS"]

_OPTIONS = Options(quantiles=())
# The checks look for the first step where something holds; 40 evenly spaced snapshots find it
# to within 2.5% of the run at a fraction of the cost of every snapshot read.
HEALTH_STEPS = 40


class _ReadSeries:
    """A module as ModuleAnalysis reads it, holding some of the report's snapshots of A and B."""

    def __init__(self, rm: RunModule, rows: np.ndarray) -> None:
        self.A, self.B = rm.A[rows], rm.B[rows]
        self.layer_index = getattr(rm.source, "layer_index", None)
        self.scaling, self.rank = rm.scaling, rm.rank
        self.attrs = getattr(rm.source, "attrs", {}) or {}


def module_findings(data: ModuleData) -> dict[str, list[_health.Finding]]:
    """Findings per run for one module."""
    out: dict[str, list[_health.Finding]] = {}
    for run, rm in data.runs.items():
        rows = snapshot_indices(len(rm.steps), HEALTH_STEPS)
        analysis = ModuleAnalysis(run, data.name, _ReadSeries(rm, rows), rm.steps[rows], _OPTIONS)
        out[run] = _health.check_module(analysis.series(), _OPTIONS.thresholds)
    return out


def loss_findings(rec: Any) -> list[_health.Finding]:
    """NaN/Inf in a run's training loss (skipped fp16-overflow steps excepted)."""
    return _health.check_scalars(rec.scalars)
