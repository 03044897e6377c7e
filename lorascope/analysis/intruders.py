"""Intruder dimensions (Shuttleworth et al. 2024, "LoRA vs Full Fine-tuning: An Illusion of
Equivalence", arXiv 2410.21228): among the top k left-singular vectors of the fine-tuned weight
W_eff = W0 + ΔW, those whose largest |cosine| with any left-singular vector of W0 is below ε.
The paper's code takes the thin SVDs of the (out, in) weights, k = 10; ε = 0.5 is its default.

W0's SVD is computed once (`pretrained_svd`) and reused for every snapshot. A snapshot never
forms the out×in W_eff: with ΔW = P Q of rank q, W_eff lives in the span of W0's singular
vectors and of ΔW's directions outside them, W_eff = [U0, Qp] K [V0, Qq]ᵀ with a core K of
(m + q)×(m + q), m = min(out, in). A left-singular vector of W_eff is [U0, Qp] z for a
left-singular vector z of K, so its cosines with W0's singular vectors are simply z's first m
coordinates: no out-long vector is ever compared."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import linalg as sla

from lorascope.analysis._batch import time_chunks
from lorascope.errors import UsageError

__all__ = ["PretrainedSVD", "pretrained_svd", "intruder_dimensions", "DEFAULT_K", "DEFAULT_EPSILON"]

DEFAULT_K = 10
DEFAULT_EPSILON = 0.5


@dataclass(frozen=True)
class PretrainedSVD:
    """The thin SVD of a pretrained weight W0 (out, in) = U diag(S) Vᵀ, in float64: U (out, m),
    S (m,) descending, V (in, m), m = min(out, in). Compute it once per module."""
    U: np.ndarray
    S: np.ndarray
    V: np.ndarray

    @property
    def shape(self) -> tuple[int, int]:
        return self.U.shape[0], self.V.shape[0]


def pretrained_svd(W0: np.ndarray) -> PretrainedSVD:
    """W0's thin SVD, the one the intruder analysis reuses at every snapshot."""
    W0 = np.asarray(W0, dtype=np.float64)
    if W0.ndim != 2 or not np.isfinite(W0).all():
        raise UsageError(f"W0 must be a finite (out, in) matrix, got shape {W0.shape}; re-record with base_weights")
    U, S, Vt = np.linalg.svd(W0, full_matrices=False)
    return PretrainedSVD(U, S, Vt.T)


def _outside(X: np.ndarray, basis: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates C = basisᵀX (n, m, q) of X (n, d, q), and the R factor of the part of X outside
    the basis (n, q', q), empty when the basis spans the whole space."""
    C = basis.T @ X
    if basis.shape[1] >= basis.shape[0]:
        return C, np.zeros((len(X), 0, X.shape[2]))
    return C, np.linalg.qr(X - basis @ C, mode="r")


def _cores(svd: PretrainedSVD, P: np.ndarray, Q: np.ndarray) -> np.ndarray:
    """K (n, m + q', m + q'') with W0 + P Q = [U0, Qp] K [V0, Qq]ᵀ: the diagonal of W0's
    singular values plus ΔW in those coordinates (Qp, Qq: ΔW's directions outside U0, V0)."""
    Pc, Rp = _outside(P, svd.U)
    Qc, Rq = _outside(Q.transpose(0, 2, 1), svd.V)
    left = np.concatenate([Pc, Rp], axis=1)               # (n, m + q', q)
    right = np.concatenate([Qc, Rq], axis=1)              # (n, m + q'', q)
    K = left @ right.transpose(0, 2, 1)
    m = len(svd.S)
    K[:, np.arange(m), np.arange(m)] += svd.S
    return K


def intruder_dimensions(svd: PretrainedSVD, P: np.ndarray, Q: np.ndarray, k: int = DEFAULT_K,
                        epsilon: float = DEFAULT_EPSILON) -> dict[str, np.ndarray]:
    """Intruder dimensions of W0 + ΔW_t at every snapshot, ΔW_t = P_t Q_t given as factors
    P (T, out, q), Q (T, q, in) (`lowrank.update_factors`). Returns `count` (T,) the number of
    the top k left-singular vectors of W_eff whose largest |cos| with W0's left-singular vectors
    is below epsilon, `worst_similarity` (T,) the smallest of those largest |cos| (the most
    intruding direction), `similarity` (T, k) each top vector's largest |cos|, `sigma` (T, k)
    W_eff's top k singular values, and `status` ('ok', or 'nonfinite' where ΔW_t holds NaN/Inf:
    its numbers are NaN and its count 0)."""
    if not 1 <= k:
        raise UsageError(f"the number of top singular vectors k must be at least 1, got {k}")
    if not 0 < epsilon <= 1:
        raise UsageError(f"the intruder threshold epsilon must lie in (0, 1], got {epsilon}")
    P, Q = np.asarray(P, dtype=np.float64), np.asarray(Q, dtype=np.float64)
    out_f, in_f = svd.shape
    if P.ndim != 3 or Q.ndim != 3 or P.shape[1] != out_f or Q.shape[2] != in_f or P.shape[2] != Q.shape[1]:
        raise UsageError(f"ΔW's factors P {P.shape} and Q {Q.shape} do not match W0 {svd.shape}")
    T, m = len(P), len(svd.S)
    k = min(k, out_f, in_f)
    sim, sigma = np.full((T, k), np.nan), np.full((T, k), np.nan)
    fin = np.isfinite(P).all(axis=(1, 2)) & np.isfinite(Q).all(axis=(1, 2))
    for sl in time_chunks(T, (out_f + in_f) * max(P.shape[2], 1) + (m + P.shape[2]) ** 2):
        rows = np.arange(sl.start, sl.stop)[fin[sl]]
        if not len(rows):
            continue
        K = _cores(svd, P[rows], Q[rows])
        n = K.shape[1]
        for i, t in enumerate(rows):
            lam, Z = sla.eigh(K[i] @ K[i].T, subset_by_index=[n - k, n - 1])
            Z = Z[:, ::-1]
            sigma[t] = np.sqrt(np.maximum(lam[::-1], 0.0))
            sim[t] = np.abs(Z[:m]).max(axis=0)
    count = np.where(fin, (sim < epsilon).sum(axis=1), 0)
    worst = np.where(fin, np.nanmin(np.where(fin[:, None], sim, np.inf), axis=1), np.nan)
    return {"count": count, "worst_similarity": worst, "similarity": sim, "sigma": sigma,
            "status": np.where(fin, "ok", "nonfinite").astype(object)}
