"""Analysis of recorded LoRA series: pure, batched functions over (T, m, n) stacks of matrices
(`stats`, `fits`, `spectra`, `geometry`, `health`; numpy/scipy only) and `tables`, the thin layer
that reads recordings into tidy DataFrames (one row per run × module × matrix × step)."""
from __future__ import annotations

from lorascope.analysis import fits, geometry, health, spectra, stats
from lorascope.analysis.health import Finding
from lorascope.analysis.tables import (
    TABLES,
    Analysis,
    Options,
    analyze,
    best_family_changes,
    fits_table,
    geometry_table,
    health_findings,
    histogram_table,
    similarity_table,
    singular_values_table,
    spectra_table,
    stats_table,
)

__all__ = [
    "fits", "geometry", "health", "spectra", "stats",
    "Finding", "TABLES", "Analysis", "Options", "analyze", "best_family_changes", "fits_table",
    "geometry_table", "health_findings", "histogram_table", "similarity_table",
    "singular_values_table", "spectra_table", "stats_table",
]
