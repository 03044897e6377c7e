"""Statistics of one series over time that the checks share: where a condition first holds, the
longest run of it, robust z-scores, outlying rises, running medians and growth exponents. Each
takes whole arrays (one numpy call over time, no loop over snapshots)."""
from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

__all__ = ["first", "longest_run", "robust_z", "outlying_rises", "running_median", "growth_exponents",
           "logging_cadence"]

# 1.4826 · MAD estimates the standard deviation of normal data (MAD of N(0, 1) is 0.6745).
MAD_TO_SD = 1.4826


def first(mask: np.ndarray) -> int | None:
    idx = np.flatnonzero(mask)
    return int(idx[0]) if len(idx) else None


def longest_run(mask: np.ndarray) -> tuple[int, int]:
    """(length, start index) of the longest run of True in ``mask``; (0, -1) when there is none."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(np.int8), [0]])))
    starts, ends = edges[::2], edges[1::2]  # each run is [start, end)
    if not len(starts):
        return 0, -1
    k = int(np.argmax(ends - starts))  # the first of the longest
    return int(ends[k] - starts[k]), int(starts[k])


def robust_z(x: np.ndarray, floor: float) -> np.ndarray:
    """(x − median) / (1.4826 · MAD): a z-score that the outliers it looks for do not inflate.
    The scale is at least `floor`, so that a series that barely changes (MAD 0) does not make
    every small wiggle infinitely unusual."""
    x = np.asarray(x, dtype=np.float64)
    centre = np.median(x)
    scale = max(MAD_TO_SD * float(np.median(np.abs(x - centre))), floor)
    return (x - centre) / scale


def outlying_rises(values: np.ndarray, history: int = 3, floor: float = 1e-3) -> tuple[np.ndarray, np.ndarray]:
    """(rise, z) for each step of `values` (T,) to the next, both (T − 1,): the rise, and how far
    it stands out from the series' other rises. A rise is first set against the median of the
    two rises before and the two after it, so that a trend (a share that climbs fast early and
    slowly later) is not an outlier, only a jump its neighbours do not share; the z-score is
    `robust_z` of those residuals over the whole series. A rise with fewer than `history` rises
    before it has no history to stand out from: its z is 0."""
    d = np.diff(np.asarray(values, dtype=np.float64))
    if len(d) <= history:
        return d, np.zeros_like(d)
    neighbours = sliding_window_view(np.pad(d, 2, constant_values=np.nan), 5)[:, [0, 1, 3, 4]]  # (T − 1, 4)
    residual = d - np.nanmedian(neighbours, axis=1)
    z = robust_z(residual, floor)
    z[:history] = 0.0
    return d, z


def running_median(values: np.ndarray, window: int) -> np.ndarray:
    """Median of each `window` consecutive values: (n − window + 1,), entry i over values[i:i + window]."""
    return np.median(sliding_window_view(np.asarray(values, dtype=np.float64), window), axis=1)


def growth_exponents(steps: np.ndarray, norms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(reference index, exponent p) for each snapshot: the norm at step s set against the norm at
    the last snapshot at or before step s/2, as the power of the steps it grew by,
    p = log(‖X_s‖ / ‖X_ref‖) / log(s / s_ref). A steady optimizer adds at most a bounded update
    per step, so a norm that starts at zero grows at most linearly (p ≤ 1; p ≤ 2 under a linear
    warmup), whatever its first value was. NaN where there is no reference: no snapshot at
    step ≥ 1 and ≤ s/2, or a zero or non-finite norm there."""
    steps = np.asarray(steps, dtype=np.float64)
    norms = np.asarray(norms, dtype=np.float64)
    ref = np.searchsorted(steps, steps / 2, side="right") - 1  # the last snapshot at step ≤ s/2
    held = ref >= 0
    safe = np.where(held, ref, 0)
    s_ref, f_ref = steps[safe], norms[safe]
    ok = held & (s_ref >= 1) & np.isfinite(f_ref) & (f_ref > 0) & np.isfinite(norms) & (norms > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = np.where(ok, np.log(norms / np.where(ok, f_ref, 1.0)) / np.log(steps / np.where(ok, s_ref, 1.0)), np.nan)
    return ref, p


def logging_cadence(steps: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Which steps were due a value (bool (n,)): the steps that hold one (any value but NaN) and
    the steps on their cadence. A trainer that logs every k steps (Hugging Face's
    `logging_steps`) leaves NaN between its logs: those steps were not logged, while a NaN at a
    step on the cadence was. The cadence is the most common gap between logged steps (the
    smallest on a tie), counted from the first, whose step is the first that was due (a row
    before it, such as an evaluation before training, logged other values); a column with a
    single value has none (NaN
    elsewhere is absence), a column present with no value at all was given only NaN (a column
    never given a value is not stored: docs/format.md)."""
    steps = np.asarray(steps, dtype=np.int64)
    logged = ~np.isnan(np.asarray(values, dtype=np.float64))
    at = steps[logged]
    if len(at) == 0:
        return np.ones(len(steps), dtype=bool)
    if len(at) == 1:
        return logged
    gaps, counts = np.unique(np.diff(at), return_counts=True)
    every = max(int(gaps[np.argmax(counts)]), 1)
    return logged | ((steps >= at[0]) & ((steps - at[0]) % every == 0))
