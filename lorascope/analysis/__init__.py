"""Analysis of recorded LoRA series: pure, batched functions over (T, m, n) stacks of matrices
(`stats`, `fits`, `spectra`, `lowrank`, `geometry`, `health`; numpy/scipy only), and `analyze`,
which reads recordings into the registered tidy tables (one row per run × module × matrix ×
step) and the health findings.

Importing this package costs nothing: the table names and their descriptions are declared here
(`TABLES`, so `lorascope analyze --help` needs neither pandas nor scipy), and every other name
is imported on first use."""
from __future__ import annotations

import importlib
from typing import Any

from lorascope.lazy import lazy_exports
from lorascope.registry import Registry

# Every table `analyze` builds, with the one line `lorascope analyze --help` shows. The
# implementations register themselves in tables.py (one run's module), pretrained_tables.py (the
# update's geometry), gradient_tables.py (the recorded gradients), multirun.py (a module across
# runs) and derived.py (from other tables); catalog.py imports all five.
TABLES: Registry = Registry("analysis table", declared={
    "stats": "moments, quantiles, norms, distance from the first snapshot, update size and cosine per snapshot",
    "spectra": "spectral norm, effective and stable rank, top-k energy, condition number of A, B and ΔW",
    "singular_values": "every singular value of A, B and ΔW per snapshot",
    "fits": "distribution families fitted to A and B at evenly spaced snapshots, each fit's method",
    "intruders": "intruder dimensions of W0 + ΔW against W0 per snapshot (needs W0)",
    "magnitude_direction": "DoRA's magnitude and direction change against W0 per snapshot, and their correlation "
                           "(needs W0)",
    "amplification": "how ΔW amplifies directions of W0 per snapshot, with the random baseline (needs W0)",
    "asymmetry": "how far A and B move from their init, and how much of A's row space stays",
    "grad_noise": "the gradient noise within each optimizer step: the micro-step gradients' variance against "
                  "their mean's norm, and their leave-one-out agreement (needs record.grads and grad_accum >= 2)",
    "similarity": "subspace similarity φ of A and B against the final snapshot and between runs",
    "histograms": "histograms of A and B on bins shared by every run and snapshot of a module",
    "step_histograms": "histograms of A and B at chosen steps, bins shared by the runs at each step",
    "family_changes": "the steps where the best fitted family changes, from the fits",
    "findings": "the health findings, one row each",
}, provider="lorascope.analysis.catalog")

_SUBMODULES = ("batch", "fits", "geometry", "grad_noise", "health", "lowrank", "spectra", "stats")
_EXPORTS = {
    "Finding": "lorascope.analysis.health",
    "KEYS": "lorascope.analysis.options",
    "Options": "lorascope.analysis.options",
    "Analysis": "lorascope.analysis.driver",
    "analyze": "lorascope.analysis.driver",
    "stats_table": "lorascope.analysis.driver",
    "fits_table": "lorascope.analysis.driver",
    "spectra_table": "lorascope.analysis.driver",
    "singular_values_table": "lorascope.analysis.driver",
    "intruders_table": "lorascope.analysis.driver",
    "magnitude_direction_table": "lorascope.analysis.driver",
    "amplification_table": "lorascope.analysis.driver",
    "asymmetry_table": "lorascope.analysis.driver",
    "grad_noise_table": "lorascope.analysis.driver",
    "similarity_table": "lorascope.analysis.driver",
    "histogram_table": "lorascope.analysis.driver",
    "step_histogram_table": "lorascope.analysis.driver",
    "health_findings": "lorascope.analysis.driver",
    "best_family_changes": "lorascope.analysis.derived",
    "findings_frame": "lorascope.analysis.derived",
    "describe": "lorascope.analysis.overview",
    "runs_table": "lorascope.analysis.overview",
}
_exported, _dir = lazy_exports(__name__, _EXPORTS)

__all__ = ["TABLES", *_SUBMODULES, *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    return _exported(name)


def __dir__() -> list[str]:
    return sorted(["TABLES", *_SUBMODULES, *_dir()])
