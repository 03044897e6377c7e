"""Analysis of recorded LoRA series: pure, batched functions over (T, m, n) stacks of matrices
(`stats`, `fits`, `spectra`, `geometry`, `health`; numpy/scipy only) and `tables`, the thin layer
that reads a recording into tidy DataFrames (one row per run × module × matrix × step)."""
from __future__ import annotations

from lorascope.analysis import fits, geometry, health, spectra, stats

__all__ = ["fits", "geometry", "health", "spectra", "stats"]
