"""ΔW of a DoRA module (Liu et al. 2024): W_eff(t) − W0 with W_eff = m_t ⊙ V_t/‖V_t‖ and
V_t = W0 + scaling·B_t·A_t, the norm over each row (one magnitude per output) or each column.
Rescaling every row makes the change full rank, so unlike LoRA's it is formed, a chunk of
snapshots at a time, in float64 (a small difference of W0-sized terms), and its singular values
come from a dense SVD: the numbers `lowrank.lora_matrices` gives for LoRA, for DoRA."""
from __future__ import annotations

import numpy as np

from lorascope.analysis import stats as _stats
from lorascope.analysis.batch import time_chunks
from lorascope.errors import UsageError

__all__ = ["effective_change", "dora_update"]

# float64 values of ΔW formed at once (with the look-back snapshots): 32 MiB
_DENSE_VALUES = 1 << 22


def effective_change(W0: np.ndarray, A: np.ndarray, B: np.ndarray, scaling: float, magnitude: np.ndarray,
                     norm: str = "row") -> np.ndarray:
    """W_eff(t) − W0 (n, out, in) in float64 for snapshots A (n, r, in), B (n, out, r) and the
    magnitude vectors (n, out) ('row') or (n, in) ('column'). NaN where a snapshot is not finite."""
    if norm not in ("row", "column"):
        raise UsageError(f"the DoRA magnitude rescales each 'row' or 'column', got {norm!r}")
    W0 = np.asarray(W0, dtype=np.float64)
    V = W0 + float(scaling) * (np.asarray(B, dtype=np.float64) @ np.asarray(A, dtype=np.float64))
    m = np.asarray(magnitude, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if norm == "row":
            W = V * (m / np.linalg.norm(V, axis=2))[:, :, None]
        else:
            W = V * (m / np.linalg.norm(V, axis=1))[:, None, :]
    return W - W0


def dora_update(W0: np.ndarray, A: np.ndarray, B: np.ndarray, scaling: float, magnitude: np.ndarray,
                norm: str = "row", first: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
                ) -> dict[str, np.ndarray]:
    """Per snapshot of a DoRA series: `singular_values` (T, min(out, in)) of ΔW_t = W_eff(t) − W0,
    its `mean`, `frobenius`, and as `stats.dynamics` gives them `distance_from_first` (from
    ΔW at `first` = (A_0, B_0, m_0), default the series' first snapshot), `update_size` and
    `update_cosine`. NaN where a snapshot is not finite."""
    A, B, magnitude = np.asarray(A), np.asarray(B), np.asarray(magnitude)
    T = len(A)
    out_f, in_f = np.shape(W0)
    A0, B0, m0 = (A[0], B[0], magnitude[0]) if first is None else first
    origin = effective_change(W0, A0[None], B0[None], scaling, np.asarray(m0)[None], norm)[0]
    k = min(out_f, in_f)
    got = {"singular_values": np.full((T, k), np.nan), "mean": np.full(T, np.nan), "frobenius": np.full(T, np.nan),
           "distance_from_first": np.full(T, np.nan), "update_size": np.full(T, np.nan),
           "update_cosine": np.full(T, np.nan)}
    for sl in time_chunks(T, out_f * in_f, _DENSE_VALUES):
        lo = max(0, sl.start - 2)  # an update needs the snapshot before, its cosine the one before that
        D = effective_change(W0, A[lo:sl.stop], B[lo:sl.stop], scaling, magnitude[lo:sl.stop], norm)
        own = slice(sl.start - lo, None)
        dyn = _stats.dynamics(D, origin)
        for key in ("distance_from_first", "update_size", "update_cosine"):
            got[key][sl] = dyn[key][own]
        D = D[own]
        fin = np.isfinite(D).all(axis=(1, 2))
        rows = np.arange(sl.start, sl.stop)[fin]
        if len(rows):
            got["singular_values"][rows] = np.linalg.svd(D[fin], compute_uv=False)
            got["mean"][rows] = D[fin].mean(axis=(1, 2))
            got["frobenius"][rows] = np.linalg.norm(D[fin], axis=(1, 2))
    return got
