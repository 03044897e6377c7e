"""Helpers shared by the analysis kernels: checking a (T, m, n) stack, upcasting half precision,
and cutting the time axis into chunks so that a float64 working copy stays small."""
from __future__ import annotations

from typing import Iterator

import numpy as np

from lorascope.errors import UsageError

__all__ = ["as_stack", "time_chunks", "finite_scale", "CHUNK_VALUES"]

# A float64 working copy of this many values is 32 MiB: large enough that numpy's per-call
# overhead vanishes, small enough that a 2304x16 B series never doubles in memory.
CHUNK_VALUES = 1 << 22


def as_stack(X: np.ndarray, name: str = "X") -> np.ndarray:
    """Returns X as a (T, m, n) floating array; a single (m, n) matrix becomes a 1-step series.
    Half precision is upcast to float32 because numpy's linear algebra refuses it and its sums
    lose digits."""
    X = np.asarray(X)
    if X.ndim == 2:
        X = X[None]
    if X.ndim != 3:
        raise UsageError(
            f"{name} must be a (steps, rows, columns) stack of matrices, got shape {X.shape}; "
            "stack the snapshots along a leading time axis"
        )
    if X.shape[1] == 0 or X.shape[2] == 0:
        raise UsageError(f"{name} has an empty matrix dimension {X.shape}; nothing to analyse")
    if not np.issubdtype(X.dtype, np.floating):
        if X.dtype.kind in "iub":
            return X.astype(np.float64)
        raise UsageError(f"{name} must hold real numbers, got dtype {X.dtype}")
    if X.dtype.itemsize < 4:
        return X.astype(np.float32)
    return X


def time_chunks(T: int, values_per_step: int, budget: int = CHUNK_VALUES) -> Iterator[slice]:
    """Slices of the time axis holding at most `budget` values each (at least one step)."""
    step = max(1, budget // max(1, values_per_step))
    for start in range(0, T, step):
        yield slice(start, min(T, start + step))


def finite_scale(x: np.ndarray) -> np.ndarray:
    """Largest finite |value| of each row of a (k, N) array, 1 where there is none or it is 0.
    Dividing by it keeps sums of squares and Gram matrices of huge values from overflowing."""
    a = np.abs(x).max(axis=1) if x.shape[1] else np.zeros(len(x))
    bad = ~np.isfinite(a)  # NaN or Inf somewhere: only those rows take the slower masked pass
    if bad.any():
        xb = x[bad]
        a[bad] = np.where(np.isfinite(xb), np.abs(xb), 0.0).max(axis=1)
    return np.where(a > 0, a, 1.0)
