"""Singular spectra of LoRA factors and of ΔW = scaling·B·A, batched over the time axis, and the
numbers people read off a spectrum: effective rank, stable rank, top-k energy, condition number."""
from __future__ import annotations

import numpy as np

from lorascope.analysis._batch import as_stack, finite_scale, time_chunks
from lorascope.errors import UsageError

__all__ = [
    "GRAM_RELIABLE_RATIO",
    "singular_values",
    "delta_w_singular_values",
    "delta_w_svd",
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


def _gram_singular_values(x: np.ndarray) -> np.ndarray:
    """Singular values of a (k, m, n) float64 stack from the eigenvalues of its small Gram matrix,
    descending; the snapshots where small values are unreliable are recomputed by SVD."""
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


def singular_values(X: np.ndarray) -> np.ndarray:
    """Singular values (T, min(m, n)) of every snapshot of X (T, m, n), descending, in float64.
    Each snapshot is divided by its largest |value| first, so huge values cannot overflow the
    Gram matrix; snapshots holding NaN/Inf give a row of NaN."""
    X = as_stack(X)
    T, m, n = X.shape
    out = np.full((T, min(m, n)), np.nan)
    for sl in time_chunks(T, m * n):
        x = X[sl].astype(np.float64)
        big = np.abs(x).max(axis=(1, 2))
        fin = np.isfinite(big)  # NaN or Inf anywhere makes the max non-finite
        if not fin.any():
            continue
        x, big = (x, big) if fin.all() else (x[fin], big[fin])
        # Gram entries are squares: only magnitudes beyond ~1e±100 need rescaling first
        scale = np.where((big > 1e100) | ((big < 1e-100) & (big > 0)), big, 1.0)
        if (scale != 1.0).any():
            x = x / scale[:, None, None]
        rows = np.arange(sl.start, sl.stop)[fin]
        out[rows] = _gram_singular_values(x) * scale[:, None]
    return out


def _pair(A: np.ndarray, B: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    A, B = as_stack(A, "A"), as_stack(B, "B")
    if A.shape[0] != B.shape[0] or A.shape[1] != B.shape[2]:
        raise UsageError(
            f"A {A.shape} and B {B.shape} are not a LoRA pair over the same steps: "
            "A must be (T, rank, in) and B (T, out, rank)"
        )
    return A, B


def _cores(a: np.ndarray, b: np.ndarray, mode: str):
    """QR of B (out×r) and Aᵀ (in×r); ΔW/scaling = Q_B (R_B R_Aᵀ) Q_Aᵀ, so the r×r core carries
    ΔW's whole spectrum."""
    if mode == "r":
        RB = np.linalg.qr(b, mode="r")
        RA = np.linalg.qr(a.transpose(0, 2, 1), mode="r")
        return None, RB @ RA.transpose(0, 2, 1), None
    QB, RB = np.linalg.qr(b)
    QA, RA = np.linalg.qr(a.transpose(0, 2, 1))
    return QB, RB @ RA.transpose(0, 2, 1), QA


def delta_w_singular_values(A: np.ndarray, B: np.ndarray, scaling: float) -> np.ndarray:
    """Singular values (T, min(r, out, in)) of ΔW_t = scaling·B_t A_t, descending, from QR of B and Aᵀ and the
    SVD of the r×r core; the out×in product is never formed. NaN rows where A or B is not finite."""
    A, B = _pair(A, B)
    T, r, n_in = A.shape
    out = np.full((T, min(r, n_in, B.shape[1])), np.nan)  # ΔW has at most this many
    for sl in time_chunks(T, r * (n_in + B.shape[1])):
        a, b = A[sl].astype(np.float64), B[sl].astype(np.float64)
        fin = np.isfinite(a).all(axis=(1, 2)) & np.isfinite(b).all(axis=(1, 2))
        if not fin.any():
            continue
        a, b = a[fin], b[fin]
        sa, sb = finite_scale(a.reshape(len(a), -1)), finite_scale(b.reshape(len(b), -1))
        _, core, _ = _cores(a / sa[:, None, None], b / sb[:, None, None], "r")
        s = np.linalg.svd(core, compute_uv=False)
        # one factor at a time: a zero singular value stays zero even where sa·sb overflows
        out[np.arange(sl.start, sl.stop)[fin]] = s * sa[:, None] * sb[:, None] * abs(float(scaling))
    return out


def delta_w_svd(A: np.ndarray, B: np.ndarray, scaling: float):
    """Thin SVD of every ΔW_t = scaling·B_t A_t without forming it: U (T, out, r), S (T, r),
    V (T, in, r) with ΔW_t = U_t diag(S_t) V_tᵀ. Raises for NaN/Inf, which has no subspace."""
    A, B = _pair(A, B)
    a, b = A.astype(np.float64), B.astype(np.float64)
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise UsageError("A or B holds NaN/Inf; ΔW has no singular subspace at those steps, select finite steps")
    QB, core, QA = _cores(a, b, "full")
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
    """The usual one-number summaries of a (T, k) stack of spectra, each a (T,) array."""
    s = np.asarray(s, dtype=np.float64)
    return {
        "spectral_norm": s.max(axis=-1),
        "sigma_min": s.min(axis=-1),
        "effective_rank": effective_rank(s),
        "stable_rank": stable_rank(s),
        f"energy_top{top_k}": energy_share(s, top_k),
        "condition_number": condition_number(s),
    }
