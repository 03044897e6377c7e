"""Everything the analysis reads off the LoRA pair itself — singular values of A, B and
ΔW = scaling·B·A, and ΔW's norm, mean, distance from the first snapshot, update sizes and update
cosines — from one pass over the two series.

`spectra.lora_singular_values` and `stats.lowrank_dynamics` each walk the whole series; both
build the r×r Gram matrices of every snapshot, check ranges and take minima and maxima. Here
each cache-sized chunk is read once: its float64 Grams feed the singular values and the ΔW norms
alike, B's eigendecomposition gives both B's spectrum and ΔW's core, and the products that
update cosines need from earlier snapshots are carried over from the previous chunk instead of
recomputing two look-back snapshots per chunk. Numbers are those of the two functions (same
formulas, same fallbacks, float64 Grams); a series with NaN/Inf, magnitudes beyond the fast
range, or a rank larger than a side of the matrix is handed to them unchanged."""
from __future__ import annotations

import numpy as np

from lorascope.analysis import spectra as _spectra
from lorascope.analysis import stats as _stats
from lorascope.analysis._batch import CACHE_VALUES, Scratch, _ones, time_chunks

__all__ = ["lora_series"]

_DYN_KEYS = ("mean", "frobenius", "distance_from_first", "update_size", "update_cosine")


def lora_series(A: np.ndarray, B: np.ndarray, scaling: float) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(singular values, ΔW dynamics) of a LoRA series: the first is what
    `spectra.lora_singular_values(A, B, scaling)` returns ({"A", "B", "dW"}, each (T, k)), the
    second what `stats.lowrank_dynamics(A, B, scaling)` returns (mean, frobenius,
    distance_from_first, update_size, update_cosine, each (T,))."""
    A, B = _spectra._pair(A, B)
    if A.dtype != B.dtype:
        A, B = A.astype(np.float64), B.astype(np.float64)
    got = _one_pass(A, B, float(scaling))
    if got is None:
        return _spectra.lora_singular_values(A, B, scaling), _stats.lowrank_dynamics(A, B, scaling)
    return got


def _in_range(x: np.ndarray) -> bool:
    """Finite, and every snapshot's largest |value| where float64 Grams and the float32 products
    of differences neither overflow nor underflow (the fast paths' common condition)."""
    return _stats._in_fast_range(_stats._abs_max(x.reshape(len(x), -1)), x.dtype)


def _dw_values(Ga: np.ndarray, Gb: np.ndarray, k: int) -> np.ndarray:
    """Singular values (n, k) of B·A from G_A = AAᵀ and G_B = BᵀB: σ² are the eigenvalues of
    Lᵀ G_B L with G_A = L Lᵀ (Cholesky, a few µs against ~35 µs for an eigendecomposition of
    G_B), or, where A is rank-deficient and Cholesky fails, of F G_A Fᵀ with G_B = V Λ Vᵀ,
    F = Λ^½ Vᵀ. Both are backward stable, with an absolute error of order eps·‖G_A‖·‖G_B‖."""
    try:
        L = np.linalg.cholesky(Ga)
        C = L.transpose(0, 2, 1) @ Gb @ L
    except np.linalg.LinAlgError:
        lam, V = np.linalg.eigh(Gb)
        F = np.sqrt(np.maximum(lam, 0.0))[:, :, None] * V.transpose(0, 2, 1)
        C = F @ Ga @ F.transpose(0, 2, 1)
    return np.sqrt(np.maximum(np.linalg.eigvalsh(C)[:, ::-1][:, :k], 0.0))


def _spectra_of(a: np.ndarray, b: np.ndarray, Ga: np.ndarray, Gb: np.ndarray, k: int) -> tuple[np.ndarray, ...]:
    """Singular values of A, B and B·A for a chunk from its float64 Grams (r ≤ in, r ≤ out);
    unreliable rows are redone as `spectra` does (SVD for A and B, QR core for ΔW)."""
    sA = np.sqrt(np.maximum(np.linalg.eigvalsh(Ga)[:, ::-1], 0.0))
    sB = np.sqrt(np.maximum(np.linalg.eigvalsh(Gb)[:, ::-1], 0.0))
    for s, x in ((sA, a), (sB, b)):
        top = s[:, :1]
        with np.errstate(invalid="ignore", divide="ignore"):
            bad = ((s / np.where(top > 0, top, 1.0)) < _spectra.GRAM_RELIABLE_RATIO).any(axis=1) & (top[:, 0] > 0)
        if bad.any():
            s[bad] = np.linalg.svd(x[bad], compute_uv=False)
    sW = _dw_values(Ga, Gb, k)
    ref = np.sqrt(np.maximum(np.trace(Ga, axis1=1, axis2=2), 0.0) * np.maximum(np.trace(Gb, axis1=1, axis2=2), 0.0))
    bad = (sW < _spectra.GRAM_RELIABLE_RATIO * ref[:, None]).any(axis=1) & (ref > 0)
    if bad.any():
        _, core, _ = _spectra._cores(a[bad], b[bad], "r")
        sW[bad] = np.linalg.svd(core, compute_uv=False)[:, :k]
    return sA, sB, sW


def _one_pass(A: np.ndarray, B: np.ndarray, scaling: float):
    T, r, n_in = A.shape
    n_out = B.shape[1]
    if r > n_in or r > n_out:
        return None  # the r×r Grams are not the small ones: the separate functions choose
    f64, s = np.float64, abs(scaling)
    k = r
    sv = {"A": np.full((T, r), np.nan), "B": np.full((T, r), np.nan), "dW": np.full((T, k), np.nan)}
    dyn = {key: np.full(T, np.nan) for key in _DYN_KEYS}
    A0, B0 = A[0], B[0]
    b0_zero = not B0.any()  # the usual LoRA init: ΔW_0 = 0, so the distance is ‖ΔW_t‖
    sc = Scratch()
    # Carried from the previous chunk: its last snapshot's factors, Grams and update products,
    # and the update before it (what the first cosines of this chunk need).
    prev: dict[str, np.ndarray] | None = None
    GB0 = None
    for sl in time_chunks(T, r * (n_in + n_out), CACHE_VALUES):
        a, b = A[sl], B[sl]
        m = len(a)
        if not (_in_range(a) and _in_range(b)):
            return None
        a64 = sc("a64", a.shape, f64)
        b64 = sc("b64", b.shape, f64)
        np.copyto(a64, a)
        np.copyto(b64, b)
        Ga, Gb = a64 @ a64.transpose(0, 2, 1), b64.transpose(0, 2, 1) @ b64
        sA, sB, sW = _spectra_of(a64, b64, Ga, Gb, k)
        sv["A"][sl], sv["B"][sl], sv["dW"][sl] = sA, sB, sW * s
        frob = np.sqrt(np.maximum(_stats._tr(Gb, Ga), 0.0))
        dyn["frobenius"][sl] = s * frob
        # column sums of B and row sums of A as BLAS products (3x faster than .sum on these shapes)
        sums_b, sums_a = _ones(n_out, f64) @ b64, a64 @ _ones(n_in, f64)
        dyn["mean"][sl] = np.sign(scaling) * s * np.einsum("tr,tr->t", sums_b, sums_a) / (n_out * n_in)
        if GB0 is None:
            GB0 = Gb[0].copy()
        if b0_zero:
            dyn["distance_from_first"][sl] = s * frob
        else:
            dB0, dA0 = b - B0, a - A0
            d2 = (_stats._tr((dB0.transpose(0, 2, 1) @ dB0).astype(f64), Ga)
                  + _stats._tr(np.broadcast_to(GB0, (m, r, r)), (dA0 @ dA0.transpose(0, 2, 1)).astype(f64))
                  + 2 * _stats._tr((dB0.transpose(0, 2, 1) @ B0).astype(f64), (dA0 @ a.transpose(0, 2, 1)).astype(f64)))
            dyn["distance_from_first"][sl] = s * np.sqrt(np.maximum(d2, 0.0))
        # Updates ending in this chunk: with `prev`, the first one starts at the previous chunk's
        # last snapshot. Differences go to buffers whose row 0 holds the previous chunk's last
        # update, so that consecutive updates across the boundary need no concatenated copies.
        p = 0 if prev is None else 1
        nu = m - 1 + p
        if nu >= 1:
            dAbuf = sc("dA", (m + 1, r, n_in), a.dtype)
            dBbuf = sc("dB", (m + 1, n_out, r), b.dtype)
            if p:
                np.subtract(a[0], prev["a"], out=dAbuf[1])
                np.subtract(b[0], prev["b"], out=dBbuf[1])
            np.subtract(a[1:], a[:-1], out=dAbuf[1 + p:1 + nu])
            np.subtract(b[1:], b[:-1], out=dBbuf[1 + p:1 + nu])
            dA, dB = dAbuf[1:1 + nu], dBbuf[1:1 + nu]
            dBT = dB.transpose(0, 2, 1)
            Y = (dBT @ dB).astype(f64)  # dBᵀdB
            X = np.empty((nu, r, r))     # dBᵀB_{t−1}
            if p:
                X[0] = dBT[0] @ prev["b"]
            X[p:] = dBT[p:] @ b[:-1]
            Ya = (dA @ dA.transpose(0, 2, 1)).astype(f64)  # dA dAᵀ
            Xa = (dA @ a[1 - p:].transpose(0, 2, 1)).astype(f64)  # dA A_tᵀ
            Gb_prev = np.concatenate([prev["Gb"], Gb[:-1]]) if p else Gb[:-1]  # Gb at t−1
            n2 = np.maximum(_stats._tr(Y, Ga[1 - p:]) + _stats._tr(Gb_prev, Ya) + 2 * _stats._tr(X, Xa), 0.0)
            norms = np.sqrt(n2)
            t0 = sl.start + 1 - p  # the snapshot at which the first update here ends
            dyn["update_size"][t0:sl.stop] = s * norms
            # cosines of consecutive updates: the previous chunk's last update joins this chunk's
            joined = prev is not None and "dA" in prev
            if joined:
                dAbuf[0], dBbuf[0] = prev["dA"], prev["dB"]
                dAc, dBc = dAbuf[:1 + nu], dBbuf[:1 + nu]
                Xc, Yc = np.concatenate([prev["X"], X]), np.concatenate([prev["Y"], Y])
                Xac, Yac = np.concatenate([prev["Xa"], Xa]), np.concatenate([prev["Ya"], Ya])
                nc = np.concatenate([prev["norm"], norms])
                Gb2 = np.concatenate([prev["Gb2"], Gb_prev])  # Gb2[:-1]: Gb at t−2 for the cosine ending at t
                c0 = t0
            else:
                dAc, dBc, Xc, Yc, Xac, Yac, nc, Gb2 = dA, dB, X, Y, Xa, Ya, norms, Gb_prev
                c0 = t0 + 1
            if len(dBc) >= 2:
                Z = (dBc[:-1].transpose(0, 2, 1) @ dBc[1:]).astype(f64)  # dB_{t−1}ᵀ dB_t
                Za = (dAc[1:] @ dAc[:-1].transpose(0, 2, 1)).astype(f64)  # dA_t dA_{t−1}ᵀ
                XT, XaT = Xc.transpose(0, 2, 1), Xac.transpose(0, 2, 1)
                Ga_c = Ga[m - (len(dBc) - 1):]  # Ga at t
                dot = (_stats._tr(Z, Ga_c - XaT[1:])
                       + _stats._tr(XT[1:] - Z, XaT[:-1] + Za)
                       + _stats._tr(Xc[:-1] + Yc[:-1], Xac[1:] - Yac[1:])
                       + _stats._tr(Gb2[:-1] + XT[:-1], Za))
                dyn["update_cosine"][c0:sl.stop] = _stats._cosine(dot, nc[1:], nc[:-1])
            prev = {"a": a[-1].copy(), "b": b[-1].copy(), "Gb": Gb[-1:], "dB": dB[-1].copy(), "dA": dA[-1].copy(),
                    "X": X[-1:], "Y": Y[-1:], "Xa": Xa[-1:], "Ya": Ya[-1:], "norm": norms[-1:],
                    "Gb2": Gb_prev[-1:]}
        else:
            prev = {"a": a[-1].copy(), "b": b[-1].copy(), "Gb": Gb[-1:]}
    return sv, dyn
