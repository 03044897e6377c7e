"""Everything the analysis reads off the LoRA pair itself — singular values of A, B and
ΔW = scaling·B·A, and ΔW's norm, mean, distance from the first snapshot, update sizes and update
cosines — from one pass over the two series.

`spectra.lora_singular_values` and `stats.lowrank_dynamics` each walk the whole series; both
build the r×r Gram matrices of every snapshot, check ranges and take minima and maxima. Here
each cache-sized chunk is read once: its float64 Grams feed the ΔW norms, tell whether the
chunk is in the fast range, and are kept (2·r² values a snapshot) for the spectra of A, B and ΔW,
three batched eigendecompositions at the end; the products that update cosines need from earlier
snapshots are carried over from the previous chunk instead of recomputing two look-back
snapshots per chunk. Numbers are those of the two functions (same formulas, same fallbacks,
float64 Grams); a series with NaN/Inf, magnitudes beyond the fast range, or a rank larger than
a side of the matrix is handed to them unchanged."""
from __future__ import annotations

import numpy as np

from lorascope.analysis import spectra as _spectra
from lorascope.analysis import stats as _stats
from lorascope.analysis.batch import CACHE_VALUES, FAST_RANGE, Scratch, cosine, lora_pair, ones, origin, time_chunks, trace_products

__all__ = ["lora_series", "lora_matrices", "update_factors", "update_mean"]


def lora_series(A: np.ndarray, B: np.ndarray, scaling: float, first: tuple[np.ndarray, np.ndarray] | None = None,
                ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(singular values, ΔW dynamics) of a LoRA series: the first is what
    `spectra.lora_singular_values(A, B, scaling)` returns ({"A", "B", "dW"}, each (T, k)), the
    second what `stats.lowrank_dynamics(A, B, scaling, first)` returns (mean, frobenius,
    distance_from_first, update_size, update_cosine, each (T,)). `first` = (A_0, B_0), the origin
    of the distance, lets a piece of a series cut along time give the whole series' numbers."""
    A, B = lora_pair(A, B)
    if A.dtype != B.dtype:
        A, B = A.astype(np.float64), B.astype(np.float64)
    A0, B0 = (None, None) if first is None else first
    A0, B0 = origin(A, A0), origin(B, B0)
    got = _one_pass(A, B, float(scaling), A0, B0)
    if got is None:
        return _spectra.lora_singular_values(A, B, scaling), _stats.lowrank_dynamics(A, B, scaling, (A0, B0))
    return got


def lora_matrices(A: np.ndarray, B: np.ndarray, scaling: float, first: tuple[np.ndarray, np.ndarray] | None = None,
                  compensated: bool = False) -> dict[str, dict[str, np.ndarray]]:
    """Per matrix, what the analysis reads off a LoRA series: {"A": {"singular_values"},
    "B": {"singular_values"}, "dW": {"singular_values", "mean", "frobenius",
    "distance_from_first", "update_size", "update_cosine"}}, each (T, k) or (T,).

    "dW" is the update from the pretrained weight, ΔW_t = W_eff(t) − W_pretrained. Without
    `compensated` that is the adapter's product scaling·B_t·A_t (B_0 = 0 or A_0 = 0 at init).
    With `compensated` the base was rewritten to W − scaling·B_0·A_0 at init (PiSSA's svd,
    both_nonzero, gaussian_a_uniform_b: an init that rewrites the base), so
    ΔW_t = scaling·(B_t A_t − B_0 A_0) (zero at step 0, rank ≤ 2r, never formed), and the
    adapter's own product is returned beside it as "BA" with the same keys. The two differ by a
    constant, so their distance from the first snapshot, update sizes and cosines are the same
    numbers. `first` = (A_0, B_0): the first snapshot when the series is a piece cut along time."""
    A, B = lora_pair(A, B)
    A0, B0 = (A[0], B[0]) if first is None else first
    sv, dyn = lora_series(A, B, scaling, (A0, B0))
    out = {"A": {"singular_values": sv["A"]}, "B": {"singular_values": sv["B"]},
           "dW": {"singular_values": sv["dW"], **dyn}}
    if not compensated:
        return out
    out["BA"] = out["dW"]
    out["dW"] = {**dyn, "singular_values": _spectra.update_singular_values(A, B, scaling, (A0, B0)),
                 "mean": update_mean(A, B, scaling, (A0, B0)), "frobenius": dyn["distance_from_first"]}
    return out


def update_mean(A: np.ndarray, B: np.ndarray, scaling: float, first: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Mean entry (T,) of scaling·(B_t A_t − B_0 A_0) from the factors' sums: 1ᵀ(B_t − B_0)·A_t 1 +
    1ᵀB_0·(A_t − A_0) 1, differences taken before the products (no cancellation of two large
    means). NaN where A_t or B_t is not finite."""
    A, B = lora_pair(A, B)
    T, r, n_in = A.shape
    n_out = B.shape[1]
    A0, B0 = (np.asarray(x, dtype=np.float64) for x in first)
    b0 = B0.sum(axis=0)
    out = np.empty(T)
    for sl in time_chunks(T, r * (n_in + n_out), CACHE_VALUES):
        a, b = A[sl].astype(np.float64), B[sl].astype(np.float64)
        fin = np.isfinite(a).all(axis=(1, 2)) & np.isfinite(b).all(axis=(1, 2))  # an Inf would give ±inf
        with np.errstate(invalid="ignore", over="ignore"):
            db = (b - B0).sum(axis=1)   # (n, r) column sums of B_t − B_0
            ra = a.sum(axis=2)          # (n, r) row sums of A_t
            da = (a - A0).sum(axis=2)   # (n, r) row sums of A_t − A_0
            out[sl] = np.where(fin, np.einsum("tr,tr->t", db, ra) + da @ b0, np.nan)
    return float(scaling) * out / (n_out * n_in)


def update_factors(A: np.ndarray, B: np.ndarray, scaling: float, first: tuple[np.ndarray, np.ndarray] | None = None,
                   compensated: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """ΔW_t = P_t Q_t as float64 factors P (T, out, q), Q (T, q, in), for the kernels that take
    ΔW as a low-rank product (intruders, amplification, magnitude/direction): P = scaling·B,
    Q = A (q = r), or with `compensated` P = scaling·[B_t − B_0, B_0], Q = [A_t; A_t − A_0]
    (q = 2r; their product is scaling·(B_t A_t − B_0 A_0), with no large product subtracted)."""
    A, B = lora_pair(A, B)
    a, b, s = A.astype(np.float64), B.astype(np.float64), float(scaling)
    if not compensated:
        return s * b, a
    A0, B0 = (a[0], b[0]) if first is None else (np.asarray(x, dtype=np.float64) for x in first)
    P = np.concatenate([s * (b - B0), np.broadcast_to(s * B0, b.shape)], axis=2)
    Q = np.concatenate([a, a - A0], axis=1)
    return P, Q


def _grams_in_range(Ga: np.ndarray, Gb: np.ndarray, n_in: int, n_out: int, dtype) -> bool:
    """The fast path's condition (every snapshot finite, its largest |value| in the fast
    range (`batch.FAST_RANGE`) or zero), read off the float64 Grams instead of another pass over the chunk: each entry
    x of A is in a diagonal entry d of A Aᵀ (a sum of n_in squares), so √(d/n_in) ≤ max|x| ≤ √d
    with d the largest one. A NaN or Inf makes d non-finite. The √n slack only sends more
    borderline series to the exact path."""
    lo, hi = FAST_RANGE[np.dtype(dtype)]
    for G, n in ((Ga, n_in), (Gb, n_out)):
        d = np.diagonal(G, axis1=1, axis2=2).max(axis=1)
        if not (np.isfinite(d).all() and np.all((d == 0) | ((d >= lo * lo * n) & (d <= hi * hi)))):
            return False
    return True


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


def _spectra_of(A: np.ndarray, B: np.ndarray, Ga: np.ndarray, Gb: np.ndarray, k: int) -> tuple[np.ndarray, ...]:
    """Singular values of A, B and B·A for the whole series from its float64 Grams (r ≤ in,
    r ≤ out), three batched eigendecompositions in all; unreliable rows are redone from the
    series as `spectra` does (SVD for A and B, QR core for ΔW)."""
    sA = np.sqrt(np.maximum(np.linalg.eigvalsh(Ga)[:, ::-1], 0.0))
    sB = np.sqrt(np.maximum(np.linalg.eigvalsh(Gb)[:, ::-1], 0.0))
    for sv, x in ((sA, A), (sB, B)):
        top = sv[:, :1]
        with np.errstate(invalid="ignore", divide="ignore"):
            bad = ((sv / np.where(top > 0, top, 1.0)) < _spectra.GRAM_RELIABLE_RATIO).any(axis=1) & (top[:, 0] > 0)
        if bad.any():
            sv[bad] = np.linalg.svd(x[bad].astype(np.float64), compute_uv=False)
    sW = _dw_values(Ga, Gb, k)
    ref = np.sqrt(np.maximum(np.trace(Ga, axis1=1, axis2=2), 0.0) * np.maximum(np.trace(Gb, axis1=1, axis2=2), 0.0))
    bad = (sW < _spectra.GRAM_RELIABLE_RATIO * ref[:, None]).any(axis=1) & (ref > 0)
    if bad.any():
        _, core, _ = _spectra.qr_cores(A[bad].astype(np.float64), B[bad].astype(np.float64), "r")
        sW[bad] = np.linalg.svd(core, compute_uv=False)[:, :k]
    return sA, sB, sW


def _one_pass(A: np.ndarray, B: np.ndarray, scaling: float, A0: np.ndarray, B0: np.ndarray):
    """The chunk loop: per cache-sized chunk, float64 Grams (kept for the whole series, 2·r²
    values per snapshot, so that the spectra are three batched calls at the end instead of
    three per chunk), the sums behind the mean, the distance from the first snapshot, and the
    r×r products of the updates. None when the series needs the exact path."""
    T, r, n_in = A.shape
    n_out = B.shape[1]
    if r > n_in or r > n_out:
        return None  # the r×r Grams are not the small ones: the separate functions choose
    f64, s = np.float64, abs(scaling)
    Ga, Gb = np.empty((T, r, r)), np.empty((T, r, r))
    sums_a, sums_b = np.empty((T, r)), np.empty((T, r))
    n2 = np.full(T, np.nan)   # ‖U_t‖² of the update U_t = ΔW_t − ΔW_{t−1} (unscaled)
    dot = np.full(T, np.nan)  # ⟨U_t, U_{t−1}⟩
    b0_zero = not B0.any()  # the usual LoRA init: ΔW_0 = 0, so the distance is ‖ΔW_t‖
    d2 = None if b0_zero else np.empty(T)
    GB0 = (B0.astype(f64).T @ B0.astype(f64))
    GA0 = (A0.astype(f64) @ A0.astype(f64).T)
    if not _grams_in_range(GA0[None], GB0[None], n_in, n_out, A.dtype):
        return None  # the origin of the distance may lie outside this piece of the series
    sc = Scratch()
    carry = None
    for sl in time_chunks(T, r * (n_in + n_out), CACHE_VALUES):
        a, b = A[sl], B[sl]
        a64, b64 = sc("a64", a.shape, f64), sc("b64", b.shape, f64)
        np.copyto(a64, a)
        np.copyto(b64, b)
        np.matmul(a64, a64.transpose(0, 2, 1), out=Ga[sl])
        np.matmul(b64.transpose(0, 2, 1), b64, out=Gb[sl])
        if not _grams_in_range(Ga[sl], Gb[sl], n_in, n_out, A.dtype):
            return None
        # column sums of B and row sums of A as BLAS products (3x faster than .sum on these shapes)
        np.matmul(ones(n_out, f64), b64, out=sums_b[sl])
        np.matmul(a64, ones(n_in, f64), out=sums_a[sl])
        if d2 is not None:
            dB0, dA0 = b - B0, a - A0
            d2[sl] = (trace_products((dB0.transpose(0, 2, 1) @ dB0).astype(f64), Ga[sl])
                      + trace_products(np.broadcast_to(GB0, (len(a), r, r)), (dA0 @ dA0.transpose(0, 2, 1)).astype(f64))
                      + 2 * trace_products((dB0.transpose(0, 2, 1) @ B0).astype(f64), (dA0 @ a.transpose(0, 2, 1)).astype(f64)))
        carry = _updates(A, B, sl, Ga, Gb, n2, dot, carry, sc)
    sA, sB, sW = _spectra_of(A, B, Ga, Gb, r)
    frob = np.sqrt(np.maximum(trace_products(Gb, Ga), 0.0))
    norms = np.sqrt(np.maximum(n2, 0.0))
    cos = np.full(T, np.nan)
    if T > 2:
        cos[2:] = cosine(dot[2:], norms[2:], norms[1:-1])
    dyn = {
        "mean": np.sign(scaling) * s * np.einsum("tr,tr->t", sums_b, sums_a) / (n_out * n_in),
        "frobenius": s * frob,
        "distance_from_first": s * (frob if d2 is None else np.sqrt(np.maximum(d2, 0.0))),
        "update_size": s * norms,
        "update_cosine": cos,
    }
    return {"A": sA, "B": sB, "dW": sW * s}, dyn


def _updates(A, B, sl: slice, Ga, Gb, n2, dot, carry, sc: Scratch):
    """The updates U_t = ΔW_t − ΔW_{t−1} = dB_t A_t + B_{t−1} dA_t ending in this chunk: their
    squared norms into n2[t] and their inner products with the update before into dot[t], from
    r×r products of differences taken in the series' precision (a small update of a large factor
    keeps its digits). The first update here starts at the previous chunk's last snapshot (read
    from the series); `carry` holds that chunk's last difference and products, so that no
    difference or product is formed twice. Returns the carry for the next chunk."""
    f64 = np.float64
    start, stop = sl.start, sl.stop
    first = max(start, 1)  # the first update ending here
    nu = stop - first
    if nu < 1:
        return None
    r, n_in, n_out = A.shape[1], A.shape[2], B.shape[1]
    # difference buffers whose row 0 holds the carried difference, so that consecutive
    # differences across the chunk boundary need no concatenated copy
    dAbuf = sc("dA", (nu + 1, r, n_in), A.dtype)
    dBbuf = sc("dB", (nu + 1, n_out, r), B.dtype)
    np.subtract(A[first:stop], A[first - 1:stop - 1], out=dAbuf[1:])
    np.subtract(B[first:stop], B[first - 1:stop - 1], out=dBbuf[1:])
    dA, dB = dAbuf[1:], dBbuf[1:]
    dBT = dB.transpose(0, 2, 1)
    Y = (dBT @ dB).astype(f64)                                       # dBᵀ dB
    X = (dBT @ B[first - 1:stop - 1]).astype(f64)                    # dBᵀ B_{t−1}
    Ya = (dA @ dA.transpose(0, 2, 1)).astype(f64)                    # dA dAᵀ
    Xa = (dA @ A[first:stop].transpose(0, 2, 1)).astype(f64)         # dA A_tᵀ
    n2[first:stop] = trace_products(Y, Ga[first:stop]) + trace_products(Gb[first - 1:stop - 1], Ya) + 2 * trace_products(X, Xa)
    if carry is not None:  # join the previous chunk's last update to this chunk's
        dAbuf[0], dBbuf[0] = carry["dA"], carry["dB"]
        dAc, dBc = dAbuf, dBbuf
        Xc, Yc = np.concatenate([carry["X"], X]), np.concatenate([carry["Y"], Y])
        Xac, Yac = np.concatenate([carry["Xa"], Xa]), np.concatenate([carry["Ya"], Ya])
        c0 = first
    else:
        dAc, dBc, Xc, Yc, Xac, Yac = dA, dB, X, Y, Xa, Ya
        c0 = first + 1
    if len(dBc) >= 2:
        # ⟨U_t, U_{t−1}⟩ from the products above and two lag-one ones, Z = dB_{t−1}ᵀdB_t and
        # Za = dA_t dA_{t−1}ᵀ: each factor product is rewritten through B_{t−1} = B_{t−2} + dB_{t−1}
        # and A_{t−1} = A_t − dA_t, adding small terms to large ones (no cancellation).
        Z = (dBc[:-1].transpose(0, 2, 1) @ dBc[1:]).astype(f64)
        Za = (dAc[1:] @ dAc[:-1].transpose(0, 2, 1)).astype(f64)
        XT, XaT = Xc.transpose(0, 2, 1), Xac.transpose(0, 2, 1)
        tr = trace_products
        dot[c0:stop] = (tr(Z, Ga[c0:stop] - XaT[1:])
                        + tr(XT[1:] - Z, XaT[:-1] + Za)
                        + tr(Xc[:-1] + Yc[:-1], Xac[1:] - Yac[1:])
                        + tr(Gb[c0 - 2:stop - 2] + XT[:-1], Za))
    return {"dA": dA[-1].copy(), "dB": dB[-1].copy(), "X": X[-1:], "Y": Y[-1:], "Xa": Xa[-1:], "Ya": Ya[-1:]}
