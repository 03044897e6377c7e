"""Singular spectra of LoRA factors and of ΔW = scaling·B·A, batched over the time axis, and the
numbers people read off a spectrum: effective rank, stable rank, top-k energy, condition number."""
from __future__ import annotations

import numpy as np

from lorascope.analysis.batch import CACHE_VALUES, Scratch, as_stack, lora_pair, time_chunks
from lorascope.errors import UsageError

__all__ = [
    "GRAM_RELIABLE_RATIO",
    "singular_values",
    "delta_w_singular_values",
    "lora_singular_values",
    "update_singular_values",
    "delta_w_svd",
    "qr_cores",
    "effective_rank",
    "stable_rank",
    "energy_share",
    "condition_number",
    "spectrum_metrics",
]

# Eigenvalues of the float64 Gram matrix carry an absolute error of about eps64·σ_max², so a
# singular value σ comes back with relative error ≈ eps64·(σ_max/σ)²/2. Below this ratio σ/σ_max
# that error would exceed float32's own resolution, and the snapshot is redone by a real SVD.
GRAM_RELIABLE_RATIO = 1e-4


def _gram_singular_values(x: np.ndarray, G: np.ndarray | None = None) -> np.ndarray:
    """Singular values of a (k, m, n) float64 stack from the eigenvalues of its small Gram matrix
    (computed unless given), descending; the snapshots where small values are unreliable are
    recomputed by SVD."""
    if G is None:
        xt = x.transpose(0, 2, 1)
        G = x @ xt if x.shape[1] <= x.shape[2] else xt @ x
    lam = np.linalg.eigvalsh(G)[:, ::-1]
    s = np.sqrt(np.maximum(lam, 0.0))
    top = s[:, :1]
    with np.errstate(invalid="ignore", divide="ignore"):
        unreliable = ((s / np.where(top > 0, top, 1.0)) < GRAM_RELIABLE_RATIO).any(axis=1) & (top[:, 0] > 0)
    if unreliable.any():
        s[unreliable] = np.linalg.svd(x[unreliable], compute_uv=False)
    return s


def _upcast_rows(x: np.ndarray, rows: np.ndarray | None, buf: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The chosen rows of a (k, m, n) chunk as float64 (into a reused buffer) divided by their
    largest |value| where that lies beyond 1e±100, and that scale (1 elsewhere): Gram entries are
    squares, and only such magnitudes could overflow or underflow them."""
    x = x if rows is None else x[rows]
    y = buf[: len(x)]
    np.copyto(y, x)
    big = np.abs(y).max(axis=(1, 2)) if y.size else np.zeros(len(y))
    scale = np.where((big > 1e100) | ((big < 1e-100) & (big > 0)), big, 1.0)
    if (scale != 1.0).any():
        y /= scale[:, None, None]
    return y, scale


def _finite_rows(x: np.ndarray) -> np.ndarray:
    """Which snapshots of a (k, m, n) chunk are finite (NaN/Inf propagate into min and max)."""
    flat = x.reshape(len(x), -1)
    return np.isfinite(flat.min(axis=1)) & np.isfinite(flat.max(axis=1))


def singular_values(X: np.ndarray) -> np.ndarray:
    """Singular values (T, min(m, n)) of every snapshot of X (T, m, n), descending, in float64.
    Each snapshot is divided by its largest |value| first, so huge values cannot overflow the
    Gram matrix; snapshots holding NaN/Inf give a row of NaN."""
    X = as_stack(X)
    T, m, n = X.shape
    out = np.full((T, min(m, n)), np.nan)
    sc = Scratch()
    for sl in time_chunks(T, m * n, CACHE_VALUES):
        fin = _finite_rows(X[sl])
        if not fin.any():
            continue
        x, scale = _upcast_rows(X[sl], None if fin.all() else fin, sc("x", X[sl].shape, np.float64))
        out[np.arange(sl.start, sl.stop)[fin]] = _gram_singular_values(x) * scale[:, None]
    return out



def qr_cores(a: np.ndarray, b: np.ndarray, mode: str):
    """QR of B (out×r) and Aᵀ (in×r); ΔW/scaling = Q_B (R_B R_Aᵀ) Q_Aᵀ, so the r×r core carries
    ΔW's whole spectrum."""
    if mode == "r":
        RB = np.linalg.qr(b, mode="r")
        RA = np.linalg.qr(a.transpose(0, 2, 1), mode="r")
        return None, RB @ RA.transpose(0, 2, 1), None
    QB, RB = np.linalg.qr(b)
    QA, RA = np.linalg.qr(a.transpose(0, 2, 1))
    return QB, RB @ RA.transpose(0, 2, 1), QA


def _dw_from_grams(Ga: np.ndarray, Gb: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Singular values (n, k) of B·A from G_A = AAᵀ and G_B = BᵀB (r×r each), and which rows are
    unreliable. With G_B = V Λ Vᵀ and F = Λ^½ Vᵀ, B = Q F for some Q with orthonormal columns, so
    σ(BA) = σ(F A) and σ² are the eigenvalues of F G_A Fᵀ. Their absolute error is about
    eps·tr(G_A)·tr(G_B): values below GRAM_RELIABLE_RATIO·sqrt(tr G_A · tr G_B) are flagged."""
    lam, V = np.linalg.eigh(Gb)
    F = np.sqrt(np.maximum(lam, 0.0))[:, :, None] * V.transpose(0, 2, 1)
    C = F @ Ga @ F.transpose(0, 2, 1)
    s = np.sqrt(np.maximum(np.linalg.eigvalsh(C)[:, ::-1][:, :k], 0.0))
    ref = np.sqrt(np.maximum(np.trace(Ga, axis1=1, axis2=2), 0.0) * np.maximum(np.trace(Gb, axis1=1, axis2=2), 0.0))
    unreliable = (s < GRAM_RELIABLE_RATIO * ref[:, None]).any(axis=1) & (ref > 0)
    return s, unreliable


def lora_singular_values(A: np.ndarray, B: np.ndarray, scaling: float) -> dict[str, np.ndarray]:
    """Singular values of A, B and ΔW = scaling·B·A at every snapshot ({"A", "B", "dW"}, each
    (T, k) descending), from one pass over the series: the r×r Gram matrices of A and B give
    all three, and snapshots where a small value would lose digits to the squaring are redone
    by SVD (A, B) or by QR of B and Aᵀ and the SVD of the r×r core (ΔW). Each factor's values
    come from its own entries: a NaN in A blanks A's and ΔW's rows at that step, never B's."""
    A, B = lora_pair(A, B)
    T, r, n_in = A.shape
    n_out = B.shape[1]
    k = min(r, n_in, n_out)  # ΔW has at most this many
    out = {"A": np.full((T, min(r, n_in)), np.nan), "B": np.full((T, min(r, n_out)), np.nan),
           "dW": np.full((T, k), np.nan)}
    sc = Scratch()
    for sl in time_chunks(T, r * (n_in + n_out), CACHE_VALUES):
        fa, fb = _finite_rows(A[sl]), _finite_rows(B[sl])
        if not (fa.any() or fb.any()):
            continue
        here = np.arange(sl.start, sl.stop)
        a, sa = _upcast_rows(A[sl], None if fa.all() else fa, sc("a", A[sl].shape, np.float64))
        b, sb = _upcast_rows(B[sl], None if fb.all() else fb, sc("b", B[sl].shape, np.float64))
        Ga, Gb = a @ a.transpose(0, 2, 1), b.transpose(0, 2, 1) @ b
        # the r×r Grams are the small ones unless a factor is wider than tall the other way
        if fa.any():
            out["A"][here[fa]] = _gram_singular_values(a, Ga if r <= n_in else None) * sa[:, None]
        if fb.any():
            out["B"][here[fb]] = _gram_singular_values(b, Gb if r <= n_out else None) * sb[:, None]
        both = fa & fb
        if not both.any():
            continue
        ia, ib = both[fa], both[fb]  # the rows finite in both, among each factor's finite rows
        s, unreliable = _dw_from_grams(Ga[ia], Gb[ib], k)
        if unreliable.any():
            _, core, _ = qr_cores(a[ia][unreliable], b[ib][unreliable], "r")
            s[unreliable] = np.linalg.svd(core, compute_uv=False)[:, :k]
        # one factor at a time: a zero singular value stays zero even where sa·sb overflows
        out["dW"][here[both]] = s * sa[ia][:, None] * sb[ib][:, None] * abs(float(scaling))
    return out


def delta_w_singular_values(A: np.ndarray, B: np.ndarray, scaling: float) -> np.ndarray:
    """Singular values (T, min(r, out, in)) of ΔW_t = scaling·B_t A_t, descending, from the r×r
    Gram matrices of the factors (QR of B and Aᵀ and the SVD of the r×r core where small values
    need it); the out×in product is never formed. NaN rows where A or B is not finite."""
    return lora_singular_values(A, B, scaling)["dW"]


def update_singular_values(A: np.ndarray, B: np.ndarray, scaling: float,
                           first: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """Singular values (T, min(2r, out, in)) of the update from the pretrained weight when the
    base was compensated by the first snapshot's product (PiSSA, both_nonzero, ...):
    ΔW_t = scaling·(B_t A_t − B_0 A_0), a rank ≤ 2r product. `first` = (A_0, B_0) (default: the
    series' first snapshot). NaN rows where A_t or B_t is not finite.

    ΔW_t/scaling = [B_t − B_0, B_0]·[A_t; A_t − A_0]: in both factors each column pairs a small
    difference with a large matrix, so the QR of each factor (column-wise backward stable) and
    the SVD of their 2r×2r core never subtract two large products: at PiSSA's step 40 the
    update is ~1e-2 of B_0 A_0 and keeps all its digits, where B_t A_t − B_0 A_0 formed
    directly would lose two."""
    A, B = lora_pair(A, B)
    T, r, n_in = A.shape
    n_out = B.shape[1]
    A0, B0 = (A[0], B[0]) if first is None else first
    A0, B0 = np.asarray(A0, dtype=np.float64), np.asarray(B0, dtype=np.float64)
    if A0.shape != A.shape[1:] or B0.shape != B.shape[1:]:
        raise UsageError(f"the first snapshot's A {A0.shape} and B {B0.shape} are not shaped like the series' "
                         f"{A.shape[1:]} and {B.shape[1:]}")
    k = min(2 * r, n_in, n_out)
    out = np.full((T, k), np.nan)
    for sl in time_chunks(T, 2 * r * (n_in + n_out), CACHE_VALUES):
        fin = _finite_rows(A[sl]) & _finite_rows(B[sl])
        if not fin.any():
            continue
        a, b = A[sl][fin].astype(np.float64), B[sl][fin].astype(np.float64)
        P = np.concatenate([b - B0, np.broadcast_to(B0, b.shape)], axis=2)        # (n, out, 2r)
        Qt = np.concatenate([a, a - A0], axis=1).transpose(0, 2, 1)               # (n, in, 2r)
        # each factor divided by its largest |value|, so that products of huge values cannot overflow
        sp, sq = _unit_scale(P), _unit_scale(Qt)
        RP = np.linalg.qr(P / sp[:, None, None], mode="r")
        RQ = np.linalg.qr(Qt / sq[:, None, None], mode="r")
        s = np.linalg.svd(RP @ RQ.transpose(0, 2, 1), compute_uv=False)[:, :k]
        out[np.arange(sl.start, sl.stop)[fin]] = s * sp[:, None] * sq[:, None] * abs(float(scaling))
    return out


def _unit_scale(x: np.ndarray) -> np.ndarray:
    m = np.abs(x).max(axis=(1, 2)) if x.size else np.zeros(len(x))
    return np.where(m > 0, m, 1.0)


def delta_w_svd(A: np.ndarray, B: np.ndarray, scaling: float):
    """Thin SVD of every ΔW_t = scaling·B_t A_t without forming it: U (T, out, r), S (T, r),
    V (T, in, r) with ΔW_t = U_t diag(S_t) V_tᵀ. Raises for NaN/Inf, which has no subspace."""
    A, B = lora_pair(A, B)
    a, b = A.astype(np.float64), B.astype(np.float64)
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise UsageError("A or B holds NaN/Inf; ΔW has no singular subspace at those steps, select finite steps")
    QB, core, QA = qr_cores(a, b, "full")
    Uc, S, Vct = np.linalg.svd(core)
    return QB @ Uc, S * abs(float(scaling)), np.sign(scaling) * (QA @ Vct.transpose(0, 2, 1))


def effective_rank(s: np.ndarray) -> np.ndarray:
    """Roy & Vetterli (2007): exp of the Shannon entropy of p_i = σ_i / Σσ. Between 1 (one
    direction) and the number of values (flat spectrum); NaN for an all-zero spectrum."""
    s = np.asarray(s, dtype=np.float64)
    total = s.sum(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = s / total
        h = -np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0).sum(axis=-1)
    return np.where(total[..., 0] > 0, np.exp(h), np.nan)


def stable_rank(s: np.ndarray) -> np.ndarray:
    """Σσ² / σ_max², a rank that small singular values barely move; NaN for a zero matrix."""
    s = np.asarray(s, dtype=np.float64)
    top = s.max(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(top > 0, (s**2).sum(axis=-1) / top**2, np.nan)


def energy_share(s: np.ndarray, k: int = 1) -> np.ndarray:
    """Share of Σσ² held by the k largest singular values; NaN for a zero matrix."""
    if k < 1:
        raise UsageError(f"the top-k energy needs k >= 1, got {k}")
    s = -np.sort(-np.asarray(s, dtype=np.float64), axis=-1)
    e = s**2
    total = e.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, e[..., :k].sum(axis=-1) / total, np.nan)


def condition_number(s: np.ndarray) -> np.ndarray:
    """σ_max / σ_min over all min(m, n) values: inf for a rank-deficient matrix, NaN for zero."""
    s = np.asarray(s, dtype=np.float64)
    top, bottom = s.max(axis=-1), s.min(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(top > 0, np.where(bottom > 0, top / np.where(bottom > 0, bottom, 1.0), np.inf), np.nan)


def spectrum_metrics(s: np.ndarray, top_k: int = 1) -> dict[str, np.ndarray]:
    """The usual one-number summaries of a (T, k) stack of spectra, each a (T,) array. The energy
    share of the top singular value, `energy_top1`, is always there (the spectral-spike check
    reads it); `energy_top{top_k}` is added beside it for another top_k."""
    s = np.asarray(s, dtype=np.float64)
    energy = {f"energy_top{k}": energy_share(s, k) for k in dict.fromkeys((1, top_k))}
    return {
        "spectral_norm": s.max(axis=-1),
        "sigma_min": s.min(axis=-1),
        "effective_rank": effective_rank(s),
        "stable_rank": stable_rank(s),
        **energy,
        "condition_number": condition_number(s),
    }
