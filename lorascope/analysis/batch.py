"""Helpers shared by the analysis kernels: checking a (T, m, n) stack or a LoRA pair, upcasting
half precision, cutting the time axis into cache-sized chunks, the small products and cosines of
the r×r kernels, and the fixed subset of entries that the superlinear statistics (quantiles,
fits) use.

The kernels work in the series' own precision (float32 for recordings, float64 when given
float64) on chunks small enough to stay in the CPU cache, so that the dozen elementwise passes
of a kernel cost one read of the series from memory; per-snapshot sums go through BLAS
matrix-vector products, whose blocked float32 accumulation keeps a relative error near 1e-7
(measured in tests/test_analysis_precision.py)."""
from __future__ import annotations

import math
from typing import Iterator

import numpy as np

from lorascope.errors import UsageError

__all__ = [
    "as_stack", "lora_pair", "time_chunks", "finite_scale", "row_sums", "ones", "trace_products", "cosine",
    "origin", "entry_subset", "CHUNK_VALUES", "CACHE_VALUES", "FAST_RANGE", "Scratch",
]

# A float64 working copy of this many values is 32 MiB: large enough that numpy's per-call
# overhead vanishes, small enough that a 2304x16 B series never doubles in memory.
CHUNK_VALUES = 1 << 22
# Values per chunk of the fast kernels: 2 MiB of float32 plus its temporaries stays in L2/L3, so
# repeated passes over a chunk do not go back to memory. Measured on 1,000 snapshots of c_fc's A
# and B: 2^19 against 2^18 was 10-20% faster on one thread and let a second thread add 1.4-1.8x
# instead of 1.1-1.5x (half the numpy calls, half the GIL hand-offs); 2^21 and up were slower.
CACHE_VALUES = 1 << 19

# Largest |value| of a series that the fast kernels accept: in float32 a difference of two values
# is at least 2^-63 (one ulp of 2^-40), whose square is still a normal number.
FAST_RANGE = {np.dtype(np.float32): (2.0**-40, 2.0**40), np.dtype(np.float64): (2.0**-200, 2.0**200)}


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


def lora_pair(A: np.ndarray, B: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A (T, rank, in) and B (T, out, rank) as stacks, checked to be a LoRA pair over the same steps."""
    A, B = as_stack(A, "A"), as_stack(B, "B")
    if A.shape[0] != B.shape[0] or A.shape[1] != B.shape[2]:
        raise UsageError(
            f"A {A.shape} and B {B.shape} are not a LoRA pair over the same steps: "
            "A must be (T, rank, in) and B (T, out, rank)"
        )
    return A, B


def origin(X: np.ndarray, first: np.ndarray | None) -> np.ndarray:
    """The snapshot distances are measured from: `first` (one matrix shaped like X's) or X_0."""
    if first is None:
        return X[0]
    first = np.asarray(first)
    if first.shape != X.shape[1:]:
        raise UsageError(f"the first snapshot {first.shape} is not shaped like the series' snapshots {X.shape[1:]}")
    return first.astype(X.dtype, copy=False)


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


def row_sums(x: np.ndarray) -> np.ndarray:
    """Sum of every row of a 2-D array, as float64: a BLAS matrix-vector product (2x faster than
    `sum(axis=1)` on float32, relative error ~2e-7 from its blocked accumulation). `np.dot`, not
    `@`: numpy's matmul holds the GIL for a matrix-vector product, so two analysis threads calling
    it ran one at a time (measured: 0.97x the speed of one thread, np.dot 1.5-1.8x)."""
    return np.dot(x, ones(x.shape[1], x.dtype)).astype(np.float64)


_ONES: dict = {}


def ones(n: int, dtype) -> np.ndarray:
    """A read-only vector of n ones, kept per (n, dtype): the row-sum kernels ask for the same one per chunk."""
    key = (n, np.dtype(dtype))
    got = _ONES.get(key)  # read once: another thread may clear the cache meanwhile
    if got is None:
        if len(_ONES) > 64:
            _ONES.clear()
        got = np.ones(n, dtype=dtype)
        got.flags.writeable = False
        _ONES[key] = got
    return got


def trace_products(P: np.ndarray, Q: np.ndarray) -> np.ndarray:
    """tr(P_t Q_t) for stacks of r×r matrices."""
    return np.einsum("tij,tji->t", P, Q)


def cosine(dot: np.ndarray, n1: np.ndarray, n2: np.ndarray) -> np.ndarray:
    """dot / (n1 n2), NaN where either vector is zero: the angle to a non-move is undefined."""
    with np.errstate(divide="ignore", invalid="ignore"):
        c = dot / (n1 * n2)
    c = np.where((n1 > 0) & (n2 > 0), c, np.nan)
    return np.clip(c, -1.0, 1.0)


def entry_subset(N: int, max_samples: int | None, seed: int = 0, minimum: int = 1) -> np.ndarray | None:
    """A sorted random subset of max_samples of the N entries of a matrix, or None (use them all)
    when max_samples is None or not smaller than N. The same entries at every step, so that a
    change over time is the weights', not the draw's."""
    if max_samples is None or N <= max_samples:
        return None
    if max_samples < minimum:
        raise UsageError(f"the number of sampled entries must be at least {minimum}, got {max_samples}")
    return np.sort(np.random.default_rng(seed).choice(N, size=max_samples, replace=False))


class Scratch:
    """Reusable work arrays: for the chunk loops (a fresh 1 MiB temporary per chunk costs more in
    page faults, ~0.7 ms here, than the arithmetic done in it) and for whole series read module
    after module. Named buffers grow to the largest size asked for and are handed out as views
    of the shape and dtype asked for; a view is valid until its name is asked for again."""

    def __init__(self) -> None:
        self._bytes: dict[str, np.ndarray] = {}

    def __call__(self, name: str, shape: tuple[int, ...], dtype) -> np.ndarray:
        dtype = np.dtype(dtype)
        nbytes = math.prod(shape) * dtype.itemsize  # np.prod of a tuple costs ~5 µs, per chunk
        buf = self._bytes.get(name)
        if buf is None or buf.size < nbytes:
            # let the smaller one go before the larger one is taken (this name too held it)
            buf = self._bytes[name] = None
            buf = self._bytes[name] = np.empty(max(nbytes, 1), dtype=np.uint8)
        return buf[:nbytes].view(dtype).reshape(shape)
