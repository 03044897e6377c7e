"""Per-snapshot statistics of a (T, m, n) series of matrices, batched over the time axis:
moments, quantiles, norms, how far and how straight the matrix moves, and histograms on bin
edges shared across steps and runs so that they can be compared."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lorascope.analysis.batch import (
    CACHE_VALUES, FAST_RANGE, Scratch, as_stack, cosine, entry_subset, origin, row_sums, time_chunks, trace_products,
)
from lorascope.errors import UsageError

__all__ = [
    "DEFAULT_QUANTILES",
    "STATUS_OK",
    "moments",
    "snapshot_status",
    "dynamics",
    "lowrank_dynamics",
    "value_range",
    "shared_edges",
    "SCALE_RATIO",
    "run_edges",
    "Histograms",
    "histogram_counts",
]

DEFAULT_QUANTILES: tuple[float, ...] = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)
STATUS_OK = "ok"
# scipy.stats.skew calls the variance zero below this relative size: the moments of a matrix
# whose spread is rounding noise would be noise, so they are reported as undefined (NaN).
_RESOLUTION = np.finfo(np.float64).resolution


def snapshot_status(nonfinite: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """'nonfinite', 'zero', 'constant' or 'ok' per snapshot: the cases where a statistic or a fit
    would be meaningless are named instead of computed."""
    status = np.full(nonfinite.shape, STATUS_OK, dtype=object)
    constant = lo == hi
    status[constant] = "constant"
    status[constant & (lo == 0)] = "zero"
    status[nonfinite > 0] = "nonfinite"
    return status


# Rows whose spread lies beyond 2^±limit are divided by a power of two (exact) before the third
# and fourth powers, which would otherwise overflow or underflow in the working precision.
_POWER_LIMIT = {np.dtype(np.float32): 16, np.dtype(np.float64): 60}


def _central_moments(x: np.ndarray, lo: np.ndarray, hi: np.ndarray, scratch: Scratch | None = None):
    """(mean, m2, m3, m4) of every row of a finite (k, N) array, in float64. The elementwise
    work stays in x's precision: rows are shifted by their mean (a BLAS estimate, exact enough
    for a shift) so that no power loses digits to the mean, and the four sums of powers of the
    deviations are matrix-vector products."""
    k, N = x.shape
    scratch = scratch or Scratch()
    lo64, hi64 = lo.astype(np.float64), hi.astype(np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        c = row_sums(x) / N
    c = np.where(np.isfinite(c) & (c >= lo64) & (c <= hi64), c, lo64 / 2 + hi64 / 2).astype(x.dtype)
    d = np.subtract(x, c[:, None], out=scratch("d", x.shape, x.dtype))
    half = hi64 / 2 - lo64 / 2
    e = np.round(np.log2(np.where(half > 0, half, 1.0)))
    scaled = np.abs(e) > _POWER_LIMIT[x.dtype]
    s = np.exp2(np.where(scaled, e, 0.0))
    if scaled.any():
        d[scaled] *= (1.0 / s[scaled])[:, None].astype(x.dtype)
    d2 = np.multiply(d, d, out=scratch("d2", x.shape, x.dtype))
    S1, S2 = row_sums(d) / N, row_sums(d2) / N
    tmp = np.multiply(d2, d, out=d)  # d is not needed again
    S3 = row_sums(tmp) / N
    S4 = row_sums(np.multiply(d2, d2, out=d2)) / N
    mu = S1
    m2 = np.maximum(S2 - mu * mu, 0.0)
    m3 = S3 - 3 * mu * S2 + 2 * mu**3
    m4 = S4 - 4 * mu * S3 + 6 * mu * mu * S2 - 3 * mu**4
    with np.errstate(over="ignore"):
        mean = c.astype(np.float64) + mu * s
    return mean, m2, m3, m4, s


def _sorted_quantiles(xs: np.ndarray, qs: np.ndarray) -> np.ndarray:
    """Quantiles (len(qs), k) of rows already sorted, with numpy's default linear interpolation."""
    n = xs.shape[1]
    pos = qs * (n - 1)
    i = np.floor(pos).astype(int)
    j = np.minimum(i + 1, n - 1)
    f = (pos - i)[:, None]
    a, b = xs[:, i].T.astype(np.float64), xs[:, j].T.astype(np.float64)
    return a + (b - a) * f


def moments(X: np.ndarray, quantiles: tuple[float, ...] = DEFAULT_QUANTILES,
            quantile_samples: int | None = None, seed: int = 0) -> dict[str, np.ndarray]:
    """Mean, std (population), min, max, skew, excess kurtosis, quantiles and the Frobenius norm
    of every snapshot of X (T, m, n); each value is a (T,) array. Snapshots holding NaN/Inf get
    NaN everywhere except `nonfinite` (their count) and `status`; skew and kurtosis of a constant
    matrix are NaN (undefined), never rounding noise.

    Quantiles are exact by default; with `quantile_samples`, they are those of a fixed random
    subset of that many entries (the same at every step; a sort instead of a selection over the
    whole matrix), and `quantile_n` says how many entries they used. Float32 series are worked
    on in float32 with float64 sums: relative error ~1e-6 against float64 (measured in the tests)."""
    X = as_stack(X)
    T, N = X.shape[0], X.shape[1] * X.shape[2]
    out = {k: np.full(T, np.nan) for k in ("mean", "std", "min", "max", "skew", "kurtosis", "frobenius")}
    qs = np.asarray(quantiles, dtype=np.float64)
    if np.any((qs < 0) | (qs > 1)):
        raise UsageError(f"quantiles must lie in [0, 1], got {list(quantiles)}")
    sub = entry_subset(N, quantile_samples, seed) if len(qs) else None
    qvals = np.full((len(qs), T), np.nan)
    nonfinite = np.zeros(T, dtype=np.int64)
    scratch = Scratch()
    for sl in time_chunks(T, N, CACHE_VALUES):
        x = X[sl].reshape(-1, N)
        lo, hi = x.min(axis=1), x.max(axis=1)  # NaN propagates: a non-finite row has a non-finite end
        ok = np.isfinite(lo) & np.isfinite(hi)
        idx = np.arange(sl.start, sl.stop)
        if not ok.all():
            bad = ~ok
            nonfinite[idx[bad]] = (~np.isfinite(x[bad])).sum(axis=1)
            x, lo, hi, idx = x[ok], lo[ok], hi[ok], idx[ok]
        if not len(idx):
            continue
        mean, m2, m3, m4, s = _central_moments(x, lo, hi, scratch)
        lo64, hi64 = lo.astype(np.float64), hi.astype(np.float64)
        flat = lo64 == hi64
        constant = flat | (m2 * s * s <= (_RESOLUTION * mean) ** 2)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            skew = np.where(constant, np.nan, m3 / m2**1.5)
            kurt = np.where(constant, np.nan, m4 / m2**2 - 3.0)
            std = np.where(flat, 0.0, np.sqrt(m2) * s)
            out["mean"][idx] = np.clip(np.where(flat, lo64, mean), lo64, hi64)
            out["frobenius"][idx] = np.sqrt(N) * np.hypot(std, out["mean"][idx])
        out["std"][idx] = std
        out["min"][idx], out["max"][idx] = lo64, hi64
        out["skew"][idx], out["kurtosis"][idx] = skew, kurt
        if len(qs):
            if sub is None:
                qvals[:, idx] = np.quantile(x.astype(np.float64), qs, axis=1)
            else:
                qvals[:, idx] = _sorted_quantiles(np.sort(x[:, sub], axis=1), qs)
    for q, row in zip(qs, qvals):
        out[f"q{100 * q:g}"] = row
    if len(qs):
        out["quantile_n"] = np.full(T, N if sub is None else len(sub), dtype=np.int64)
    out["nonfinite"] = nonfinite
    out["status"] = snapshot_status(nonfinite, out["min"], out["max"])
    return out



def _series_scale(*flats: np.ndarray) -> float:
    """Largest finite |value| of one or more (T, N) series, chunk by chunk; 1 when there is none.
    (A chunk of zeros counts as 0, not as `finite_scale`'s 1, so that B's zero initial snapshot
    does not hide a series of tiny values.)"""
    best = 0.0
    for flat in flats:
        for sl in time_chunks(flat.shape[0], flat.shape[1]):
            a = np.abs(flat[sl])
            top = float(a.max()) if a.size else 0.0
            if not np.isfinite(top):  # NaN or Inf somewhere: only this chunk takes the masked pass
                top = float(np.where(np.isfinite(a), a, 0.0).max())
            best = max(best, top)
    return best if best > 0 else 1.0


def _row_norms(d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Euclidean norms of the rows of d and the rows scaled to unit norm (zero rows stay zero).
    Each row is divided by its own largest |value| first, so that a step 1e-300 times smaller
    than the series' scale is not squared into underflow."""
    m = np.abs(d).max(axis=1, keepdims=True) if d.shape[1] else np.zeros((len(d), 1))
    m = np.where(m > 0, m, 1.0)
    y = d / m
    n = np.sqrt((y * y).sum(axis=1))
    unit = y / np.where(n > 0, n, 1.0)[:, None]
    return n * m[:, 0], unit


def _diff(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """x − y row by row, and a factor per row: rows whose difference overflows (two values near
    ±1e308) are computed as x/2 − y/2 with factor 2, instead of dividing everything by one scale
    (which would flush tiny rows of a series that also holds huge ones to zero)."""
    with np.errstate(over="ignore", invalid="ignore"):
        d = x - y
    f = np.ones(len(d))
    over = ~np.isfinite(d).all(axis=1)
    if over.any():
        yy = np.broadcast_to(y, x.shape)
        d[over] = x[over] / 2 - yy[over] / 2
        f[over] = 2.0
    return d, f


def _in_fast_range(big: np.ndarray, dtype) -> bool:
    """Whether every row's largest |value| (0 allowed) lies where squares and r-fold products of
    values and of their differences neither overflow nor underflow in `dtype`."""
    lo, hi = FAST_RANGE[np.dtype(dtype)]
    return bool(np.all(np.isfinite(big) & ((big == 0) | ((big >= lo) & (big <= hi)))))


def _abs_max(x: np.ndarray) -> np.ndarray:
    """Largest |value| of every row of a (k, N) array (NaN where a row holds NaN)."""
    return np.maximum(np.abs(x.min(axis=1)), np.abs(x.max(axis=1))).astype(np.float64)


def dynamics(X: np.ndarray, first: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """How a dense series moves: `distance_from_first` ‖X_t − X_0‖_F, `update_size`
    ‖X_t − X_{t−1}‖_F (NaN at t = 0) and `update_cosine`, the cosine between consecutive updates
    (NaN for t < 2 or when an update is zero). NaN wherever a snapshot involved holds NaN/Inf.
    `first` replaces X_0 as the origin of the distance, so that a piece of a series cut along
    time gives the whole series' distances.

    Differences are taken in the series' precision (exact for nearby float32 values) and their
    sums of squares by BLAS; a series with NaN/Inf or magnitudes beyond 2^±40 (float32) takes
    the slower float64 path that rescales every row."""
    X = as_stack(X)
    first = origin(X, first)
    fast = _dynamics_fast(X, first)
    return fast if fast is not None else _dynamics_exact(X, first)



def _dynamics_fast(X: np.ndarray, first: np.ndarray) -> dict[str, np.ndarray] | None:
    T, N = X.shape[0], X.shape[1] * X.shape[2]
    flat = X.reshape(T, N)
    first = first.reshape(N)
    dist, upd, cos = np.full(T, np.nan), np.full(T, np.nan), np.full(T, np.nan)
    sc = Scratch()
    if not _in_fast_range(_abs_max(first[None]), X.dtype):
        return None
    for sl in time_chunks(T, N, CACHE_VALUES):
        lo = max(0, sl.start - 2)
        x = flat[lo:sl.stop]
        if not _in_fast_range(_abs_max(x), x.dtype):
            return None
        m = len(x)
        e = np.subtract(x, first, out=sc("e", x.shape, x.dtype))
        dist[lo:sl.stop] = np.sqrt(row_sums(np.multiply(e, e, out=e)))
        if m < 2:
            continue
        u = np.subtract(x[1:], x[:-1], out=sc("u", (m - 1, N), x.dtype))
        uu = np.multiply(u, u, out=sc("uu", (m - 1, N), x.dtype))
        n2 = row_sums(uu)
        upd[lo + 1:sl.stop] = np.sqrt(n2)
        if m > 2:
            dots = row_sums(np.multiply(u[1:], u[:-1], out=uu[: m - 2]))
            n = np.sqrt(n2)
            cos[lo + 2:sl.stop] = cosine(dots, n[1:], n[:-1])
    return {"distance_from_first": dist, "update_size": upd, "update_cosine": cos}


def _dynamics_exact(X: np.ndarray, first: np.ndarray) -> dict[str, np.ndarray]:
    """`dynamics` in float64 with every row rescaled: for series with NaN/Inf or extreme magnitudes."""
    T, N = X.shape[0], X.shape[1] * X.shape[2]
    flat = X.reshape(T, N)
    first = first.reshape(N).astype(np.float64)
    first_ok = bool(np.isfinite(first).all())
    first0 = np.where(np.isfinite(first), first, 0.0)
    dist, upd, cos = np.full(T, np.nan), np.full(T, np.nan), np.full(T, np.nan)
    for sl in time_chunks(T, N):
        lo = max(0, sl.start - 2)  # two earlier rows give the updates that end inside this chunk
        x = flat[lo:sl.stop].astype(np.float64)
        fin = np.isfinite(x).all(axis=1)
        x = np.where(fin[:, None], x, 0.0)
        here = slice(sl.start - lo, None)
        d0, f0 = _diff(x[here], first0)
        n0, _ = _row_norms(d0)
        with np.errstate(over="ignore"):
            dist[sl] = np.where(fin[here] & first_ok, n0 * f0, np.nan)
        d, f = _diff(x[1:], x[:-1])  # updates ending at steps lo+1 .. stop-1
        dn, unit = _row_norms(d)
        with np.errstate(over="ignore"):
            dn = np.where(fin[1:] & fin[:-1], dn * f, np.nan)
        upd[lo + 1:sl.stop] = dn
        if len(d) > 1:
            dots = np.einsum("ij,ij->i", unit[1:], unit[:-1])
            cos[lo + 2:sl.stop] = cosine(dots, np.where(dn[1:] > 0, 1.0, dn[1:]), np.where(dn[:-1] > 0, 1.0, dn[:-1]))
    return {"distance_from_first": dist, "update_size": upd, "update_cosine": cos}


def _unit_rows(P: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each matrix of a stack divided by its largest |value|, and that value (1 for zeros)."""
    m = np.abs(P).max(axis=(1, 2))
    m = np.where(m > 0, m, 1.0)
    return P / m[:, None, None], m


def _lowrank_norm(P: np.ndarray, Q: np.ndarray, sP: float, sQ: float):
    """‖sP·P · sQ·Q‖_F = sqrt(tr((PᵀP)(QQᵀ)))·sP·sQ for stacks P (T, out, k), Q (T, k, in), without
    forming PQ. Each factor is scaled by its own largest value first, and the scales are applied
    pairwise (sP with P's, sQ with Q's), so that neither a small step of a large matrix underflows
    nor a product of scales overflows. Also returns the factors rescaled to ‖P'Q'‖ = 1 (cosines)."""
    Pu, mp = _unit_rows(P)
    Qu, mq = _unit_rows(Q)
    sq = np.maximum(np.einsum("tij,tji->t", Pu.transpose(0, 2, 1) @ Pu, Qu @ Qu.transpose(0, 2, 1)), 0.0)
    n = np.sqrt(sq)
    inv = 1.0 / np.where(n > 0, n, 1.0)
    with np.errstate(over="ignore"):
        return n * (mp * sP) * (mq * sQ), Pu * inv[:, None, None], Qu


def _terms_dot(t1: list, t2: list) -> np.ndarray:
    """⟨Σ_a X_a Y_a, Σ_b X'_b Y'_b⟩_F = Σ_ab tr((X_aᵀX'_b)(Y'_b Y_aᵀ)) for stacks X (T, out, r),
    Y (T, r, in): r×r products only, no concatenation, no out×in matrix."""
    total = 0.0
    for X, Y in t1:
        for X2, Y2 in t2:
            total = total + np.einsum("tij,tji->t", X.transpose(0, 2, 1) @ X2, Y2 @ Y.transpose(0, 2, 1))
    return total


# Below this a squared norm may have lost digits to underflow: those rows are redone with every
# factor rescaled to its own largest value (slower, rare).
_TINY = 1e-250


def _terms_norm(terms: list, sP: float, sQ: float) -> np.ndarray:
    """‖Σ X_a Y_a‖_F·sP·sQ, fast by Gram traces, exact for rows that would underflow."""
    sq = np.maximum(_terms_dot(terms, terms), 0.0)
    out = np.sqrt(sq) * sP * sQ
    tiny = sq < _TINY
    if tiny.any():
        P = np.concatenate([X[tiny] for X, _ in terms], axis=2)
        Q = np.concatenate([Y[tiny] for _, Y in terms], axis=1)
        out[tiny] = _lowrank_norm(P, Q, sP, sQ)[0]
    return out


def _robust_cosine(t1: list, t2: list) -> float:
    """Cosine between two single-step sums of products, each factor rescaled first."""
    units = [_lowrank_norm(np.concatenate([X for X, _ in t], axis=2), np.concatenate([Y for _, Y in t], axis=1),
                           1.0, 1.0)[1:] for t in (t1, t2)]
    (P1, Q1), (P2, Q2) = units
    return float(_lowrank_dot(P1, Q1, P2, Q2)[0])


def _lowrank_dot(P1, Q1, P2, Q2) -> np.ndarray:
    """⟨P1 Q1, P2 Q2⟩_F = tr((P1ᵀP2)(Q2 Q1ᵀ)) for stacks, without forming either product."""
    return np.einsum("tij,tji->t", P1.transpose(0, 2, 1) @ P2, Q2 @ Q1.transpose(0, 2, 1))


def _times(v: np.ndarray, factors: tuple[float, ...]) -> np.ndarray:
    with np.errstate(over="ignore"):
        for f in factors:
            v = v * f
    return v


def lowrank_dynamics(A: np.ndarray, B: np.ndarray, scaling: float,
                     first: tuple[np.ndarray, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """The same numbers as `dynamics` plus the Frobenius norm and mean for ΔW_t = scaling·B_t A_t,
    computed from the rank-r factors only (never the out×in product). Differences are written
    as (B_t − B_s) A_t + B_s (A_t − A_s), so small updates of large factors keep their digits.

    The fast path takes differences in the series' precision and needs eight r×r products per
    snapshot (four per factor), combined so that no product is formed twice; norms and cosines
    come out with a relative error near 1e-6 for float32 series. Series with NaN/Inf or extreme
    magnitudes take the float64 path that rescales every factor. `first` = (A_0, B_0) replaces the
    series' first snapshot as the origin of the distance (for a piece of a series cut along time)."""
    A, B = as_stack(A, "A"), as_stack(B, "B")
    if A.shape[0] != B.shape[0] or A.shape[1] != B.shape[2]:
        raise UsageError(f"A {A.shape} and B {B.shape} are not a LoRA pair over the same steps")
    if A.dtype != B.dtype:
        A, B = A.astype(np.float64), B.astype(np.float64)
    A0, B0 = (None, None) if first is None else first
    A0, B0 = origin(A, A0), origin(B, B0)
    fast = _lowrank_dynamics_fast(A, B, float(scaling), A0, B0)
    return fast if fast is not None else _lowrank_dynamics_exact(A, B, scaling, A0, B0)



def _lowrank_dynamics_fast(A: np.ndarray, B: np.ndarray, scaling: float, A0: np.ndarray,
                           B0: np.ndarray) -> dict[str, np.ndarray] | None:
    T, r, n_in = A.shape
    n_out = B.shape[1]
    f64 = np.float64
    s = abs(scaling)
    if not (_in_fast_range(_abs_max(A0.reshape(1, -1)), A.dtype) and _in_fast_range(_abs_max(B0.reshape(1, -1)), B.dtype)):
        return None
    b0_zero = not B0.any()  # the usual LoRA init: ΔW_0 = 0, so the distance is ‖ΔW_t‖
    GB0 = (B0.T @ B0).astype(f64)
    keys = ("mean", "frobenius", "distance_from_first", "update_size", "update_cosine")
    out = {k: np.full(T, np.nan) for k in keys}
    for sl in time_chunks(T, r * (n_in + n_out), CACHE_VALUES):
        lo = max(0, sl.start - 2)
        a, b = A[lo:sl.stop], B[lo:sl.stop]  # (m, r, in), (m, out, r)
        m = len(a)
        if not (_in_fast_range(_abs_max(a.reshape(m, -1)), a.dtype) and _in_fast_range(_abs_max(b.reshape(m, -1)), b.dtype)):
            return None
        aT, bT = a.transpose(0, 2, 1), b.transpose(0, 2, 1)
        Ga, Gb = (a @ aT).astype(f64), (bT @ b).astype(f64)
        frob = np.sqrt(np.maximum(trace_products(Gb, Ga), 0.0))
        here = slice(sl.start - lo, None)
        out["frobenius"][sl] = s * frob[here]
        out["mean"][sl] = np.sign(scaling) * s * np.einsum("tr,tr->t", b[here].sum(axis=1, dtype=f64),
                                                            a[here].sum(axis=2, dtype=f64)) / (n_out * n_in)
        if b0_zero:
            out["distance_from_first"][sl] = s * frob[here]
        else:
            dB0, dA0 = b[here] - B0, a[here] - A0
            d2 = (trace_products((dB0.transpose(0, 2, 1) @ dB0).astype(f64), Ga[here])
                  + trace_products(np.broadcast_to(GB0, (len(dA0), r, r)), (dA0 @ dA0.transpose(0, 2, 1)).astype(f64))
                  + 2 * trace_products((dB0.transpose(0, 2, 1) @ B0).astype(f64), (dA0 @ aT[here]).astype(f64)))
            out["distance_from_first"][sl] = s * np.sqrt(np.maximum(d2, 0.0))
        if m < 2:
            continue
        # update j (from snapshot lo+j to lo+j+1): ΔW_t − ΔW_{t−1} = dB_t A_t + B_{t−1} dA_t
        dB, dA = b[1:] - b[:-1], a[1:] - a[:-1]
        dBT = dB.transpose(0, 2, 1)
        Y, X = (dBT @ dB).astype(f64), (dBT @ b[:-1]).astype(f64)            # dBᵀdB, dBᵀB_{t−1}
        Ya, Xa = (dA @ dA.transpose(0, 2, 1)).astype(f64), (dA @ aT[1:]).astype(f64)  # dA dAᵀ, dA A_tᵀ
        n2 = np.maximum(trace_products(Y, Ga[1:]) + trace_products(Gb[:-1], Ya) + 2 * trace_products(X, Xa), 0.0)
        norms = np.sqrt(n2)
        out["update_size"][lo + 1:sl.stop] = s * norms
        if m < 3:
            continue
        # ⟨U_t, U_{t−1}⟩ from the products above and two lag-one ones, Z = dB_{t−1}ᵀdB_t and
        # Za = dA_t dA_{t−1}ᵀ: each factor product is rewritten through B_{t−1} = B_{t−2} + dB_{t−1}
        # and A_{t−1} = A_t − dA_t, adding small terms to large ones (no cancellation).
        Z = (dBT[:-1] @ dB[1:]).astype(f64)
        Za = (dA[1:] @ dA[:-1].transpose(0, 2, 1)).astype(f64)
        XT, XaT = X.transpose(0, 2, 1), Xa.transpose(0, 2, 1)
        dot = (trace_products(Z, Ga[2:] - XaT[1:])
               + trace_products(XT[1:] - Z, XaT[:-1] + Za)
               + trace_products(X[:-1] + Y[:-1], Xa[1:] - Ya[1:])
               + trace_products(Gb[:-2] + XT[:-1], Za))
        out["update_cosine"][lo + 2:sl.stop] = cosine(dot, norms[1:], norms[:-1])
    return out


def _lowrank_dynamics_exact(A: np.ndarray, B: np.ndarray, scaling: float, A0: np.ndarray,
                            B0: np.ndarray) -> dict[str, np.ndarray]:
    """`lowrank_dynamics` in float64 with every factor rescaled: for NaN/Inf or extreme magnitudes."""
    T, r, n_in = A.shape
    n_out = B.shape[1]
    # the origin is in the scale too, in case it lies outside this piece of the series
    sA = _series_scale(A.reshape(T, -1), A0.reshape(1, -1))
    sB = _series_scale(B.reshape(T, -1), B0.reshape(1, -1))
    # applied one factor at a time, so that a zero stays zero when sA·sB alone would overflow
    c = (sA, sB, abs(float(scaling)))
    A0, B0 = A0.astype(np.float64) / sA, B0.astype(np.float64) / sB
    first_ok = bool(np.isfinite(A0).all() and np.isfinite(B0).all())
    keys = ("mean", "frobenius", "distance_from_first", "update_size", "update_cosine")
    out = {k: np.full(T, np.nan) for k in keys}
    for sl in time_chunks(T, r * (n_in + n_out)):
        lo = max(0, sl.start - 2)
        a = A[lo:sl.stop].astype(np.float64) / sA  # (k, r, in)
        b = B[lo:sl.stop].astype(np.float64) / sB  # (k, out, r)
        fin = np.isfinite(a).all(axis=(1, 2)) & np.isfinite(b).all(axis=(1, 2))
        a, b = np.where(fin[:, None, None], a, 0.0), np.where(fin[:, None, None], b, 0.0)
        here = slice(sl.start - lo, None)
        ah, bh, fh = a[here], b[here], fin[here]
        s_abs = abs(float(scaling))
        frob = _terms_norm([(bh, ah)], sB, sA) * s_abs
        mean = np.sign(scaling) * _times(np.einsum("tr,tr->t", bh.sum(axis=1), ah.sum(axis=2)) / (n_out * n_in), c)
        B0s = np.broadcast_to(B0, bh.shape)
        dist = _terms_norm([(bh - B0, ah), (B0s, ah - A0)], sB, sA) * s_abs
        out["frobenius"][sl] = np.where(fh, frob, np.nan)
        out["mean"][sl] = np.where(fh, mean, np.nan)
        out["distance_from_first"][sl] = np.where(fh & first_ok, dist, np.nan)
        if len(a) < 2:
            continue
        # ΔW_t − ΔW_{t−1} = (B_t − B_{t−1}) A_t + B_{t−1} (A_t − A_{t−1})
        terms = [(b[1:] - b[:-1], a[1:]), (b[:-1], a[1:] - a[:-1])]
        raw = _terms_norm(terms, 1.0, 1.0)
        norms = np.where(fin[1:] & fin[:-1], raw, np.nan)
        out["update_size"][lo + 1:sl.stop] = norms * sB * sA * s_abs
        if len(raw) > 1:
            prev = [(X[:-1], Y[:-1]) for X, Y in terms]
            last = [(X[1:], Y[1:]) for X, Y in terms]
            ok = (raw[1:] > 0) & (raw[:-1] > 0)
            with np.errstate(divide="ignore", invalid="ignore"):
                cos = _terms_dot(last, prev) / (raw[1:] * raw[:-1])
            small = ok & ((raw[1:] ** 2 < _TINY) | (raw[:-1] ** 2 < _TINY))
            for k in np.flatnonzero(small):  # rare: unit-scaled factors keep tiny updates' digits
                cos[k] = _robust_cosine([(X[k + 1:k + 2], Y[k + 1:k + 2]) for X, Y in terms],
                                        [(X[k:k + 1], Y[k:k + 1]) for X, Y in terms])
            out["update_cosine"][lo + 2:sl.stop] = cosine(cos, np.where(norms[1:] > 0, 1.0, norms[1:]),
                                                          np.where(norms[:-1] > 0, 1.0, norms[:-1]))
    return out


def value_range(X: np.ndarray) -> tuple[float, float] | None:
    """(min, max) over the finite values of a series; None when it holds no finite value."""
    X = as_stack(X)
    lo, hi = np.inf, -np.inf
    N = X.shape[1] * X.shape[2]
    for sl in time_chunks(X.shape[0], N):
        x = X[sl].reshape(-1)
        f = x[np.isfinite(x)]
        if f.size:
            lo, hi = min(lo, float(f.min())), max(hi, float(f.max()))
    return None if lo > hi else (lo, hi)


def shared_edges(ranges, bins: int = 64) -> np.ndarray:
    """Equal-width bin edges covering every (lo, hi) range given (None entries are skipped), so
    that histograms of different steps and runs share bins and can be overlaid or subtracted.
    A range of one value is widened by ±0.5, as numpy does."""
    if bins < 1:
        raise UsageError(f"the number of histogram bins must be at least 1, got {bins}")
    got = [r for r in ranges if r is not None]
    if not got:
        raise UsageError("no finite values to build histogram bins from; every snapshot is NaN/Inf")
    lo, hi = min(r[0] for r in got), max(r[1] for r in got)
    if lo == hi:
        lo, hi = lo - 0.5, hi + 0.5
    return np.linspace(lo, hi, bins + 1)


# Runs whose scales (largest |value|) differ by more than this factor get bins of their own: on
# bins wide enough for the widest run, a run 100× narrower falls into one or two of them.
SCALE_RATIO = 10.0


def run_edges(ranges, bins: int = 64, ratio: float = SCALE_RATIO) -> tuple[list[np.ndarray], bool]:
    """Bin edges for each run's (lo, hi) range and whether they are shared: one set of
    `shared_edges` for all while the runs' scales max(|lo|, |hi|) are within `ratio` of each
    other, else each run's own edges over its own range (a run with no finite value keeps the
    shared ones). Runs that are all zero have no scale to compare and never split the bins."""
    shared = shared_edges(ranges, bins)
    scales = [max(abs(r[0]), abs(r[1])) for r in ranges if r is not None]
    scales = [s for s in scales if s > 0]
    if not scales or max(scales) <= ratio * min(scales):
        return [shared] * len(ranges), True
    return [shared if r is None else shared_edges([r], bins) for r in ranges], False


@dataclass(frozen=True)
class Histograms:
    edges: np.ndarray    # (bins + 1,)
    counts: np.ndarray   # (T, bins) int64
    outside: np.ndarray  # (T,) values outside the edges or NaN/Inf: counted, not dropped silently


def histogram_counts(X: np.ndarray, edges: np.ndarray) -> Histograms:
    """Counts of every snapshot on the given edges, batched: bins are half-open [a, b) except the
    last, which is closed, exactly like `np.histogram`."""
    X = as_stack(X)
    edges = np.asarray(edges, dtype=np.float64)
    if edges.ndim != 1 or len(edges) < 2 or np.any(np.diff(edges) <= 0):
        raise UsageError("histogram edges must be an increasing 1-D array of at least 2 values")
    T, N = X.shape[0], X.shape[1] * X.shape[2]
    bins = len(edges) - 1
    counts = np.zeros((T, bins), dtype=np.int64)
    for sl in time_chunks(T, N):
        x = X[sl].reshape(-1, N)
        k = x.shape[0]
        idx = np.searchsorted(edges, x, side="right") - 1
        idx[x == edges[-1]] = bins - 1
        valid = (idx >= 0) & (idx < bins) & np.isfinite(x)
        rows = np.broadcast_to(np.arange(k)[:, None], x.shape)
        flat = (rows * bins + idx)[valid]
        counts[sl] = np.bincount(flat, minlength=k * bins).reshape(k, bins)
    return Histograms(edges=edges, counts=counts, outside=N - counts.sum(axis=1))
