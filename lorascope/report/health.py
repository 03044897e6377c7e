"""Health warnings for the report, from `lorascope.analysis`'s checks. The checks run on the
snapshots the report already read (a bounded subsample), through the same `ModuleAnalysis` that
`lorascope analyze` uses, so a report never reads a whole long recording a second time."""
from __future__ import annotations

from typing import Any

import numpy as np

from lorascope.analysis import health as _health
from lorascope.analysis.tables import ModuleAnalysis, Options
from lorascope.report.collect import ModuleData, RunModule

__all__ = ["module_findings", "loss_findings"]

_OPTIONS = Options(quantiles=())


class _ReadSeries:
    """A module as ModuleAnalysis reads it, holding the report's subsampled A and B."""

    def __init__(self, rm: RunModule) -> None:
        self.A, self.B = rm.A, rm.B
        self.layer_index = getattr(rm.source, "layer_index", None)
        self.scaling, self.rank = rm.scaling, rm.rank
        self.attrs = getattr(rm.source, "attrs", {}) or {}


def module_findings(data: ModuleData) -> dict[str, list[_health.Finding]]:
    """Findings per run for one module."""
    out: dict[str, list[_health.Finding]] = {}
    for run, rm in data.runs.items():
        analysis = ModuleAnalysis(run, data.name, _ReadSeries(rm), rm.steps, _OPTIONS)
        out[run] = _health.check_module(analysis.series(), _OPTIONS.thresholds)
    return out


def loss_findings(rec: Any) -> list[_health.Finding]:
    """NaN/Inf in a run's training loss (skipped fp16-overflow steps excepted)."""
    scalars = rec.scalars
    if "loss" not in scalars or "step" not in scalars:
        return []
    skipped = scalars["skipped"].to_numpy() if "skipped" in scalars else None
    if skipped is not None:
        skipped = np.nan_to_num(skipped, nan=0.0)  # NaN: the trainer did not report it, so not skipped
    return _health.check_loss(scalars["step"].to_numpy(), scalars["loss"].to_numpy(), skipped)
