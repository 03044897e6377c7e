"""Intruder dimensions (Shuttleworth et al. 2024, "LoRA vs Full Fine-tuning: An Illusion of
Equivalence", arXiv 2410.21228): among the top k left-singular vectors of the fine-tuned weight
W_eff = W0 + ΔW, those whose largest |cosine| with any left-singular vector of W0 is below ε.
The paper's code takes the thin SVDs of the (out, in) weights, k = 10; ε = 0.5 is its default.

W0's SVD is computed once (`pretrained_svd`) and reused for every snapshot. A snapshot never
forms the out×in W_eff: with ΔW = P Q of rank q, W_eff lives in the span of W0's singular
vectors and of ΔW's directions outside them, W_eff = [U0, Qp] K [V0, Qq]ᵀ with a core
K = diag(S0) + L Rmᵀ of (m + q)×(m + q), m = min(out, in). A left-singular vector of W_eff is
[U0, Qp] z for a left-singular vector z of K, so its cosines with W0's singular vectors are
simply z's first m coordinates. K Kᵀ is a diagonal plus a rank-2q term: its top k eigenvectors
come from a small matrix on W0's leading directions, with the rest of W0's spectrum entering
through a 2q×2q term (`_top_left`), at O(m·q²) per snapshot and eigenvalue instead of O(m³)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lorascope.analysis.batch import time_chunks
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


def _factors(svd: PretrainedSVD, P: np.ndarray, Q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ΔW = P Q in W0's singular coordinates: L (n, m + q', q) and Rm (n, m + q'', q) with
    W0 + P Q = [U0, Qp] (D + L Rmᵀ) [V0, Qq]ᵀ, D the diagonal of W0's singular values and Qp, Qq
    ΔW's directions outside U0, V0 (none where U0 or V0 spans its whole space)."""
    Pc, Rp = _outside(P, svd.U)
    Qc, Rq = _outside(Q.transpose(0, 2, 1), svd.V)
    return np.concatenate([Pc, Rp], axis=1), np.concatenate([Qc, Rq], axis=1)


def _top_left(S: np.ndarray, L: np.ndarray, Rm: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The top k singular values of K = D + L Rmᵀ (n rows of a batch) and the largest |coordinate|
    of each of their left-singular vectors among the first m = len(S) (W0's own vectors).

    K Kᵀ = diag(d) + Z C Zᵀ with d = (S², 0…), Z = [D Rm, L] and C = [[0, I], [I, RmᵀRm]], a rank-2q
    change of a diagonal. The coordinates split into a head H (W0's top h and ΔW's own) and W0's
    tail R. Once λ_k of the head block exceeds a bound on the tail block's spectrum (d_h plus the
    largest eigenvalue of Z_R C Z_Rᵀ), each of the top k eigenvalues λ solves λ = μ_j(S(λ)), with
    S(λ) = M_HH + Z_H C Z_Rᵀ (λ − M_RR)⁻¹ Z_R C Z_Hᵀ a small |H|×|H| matrix: the tail enters through
    the 2q×2q matrix Γ = Z_Rᵀ (λ − d_R)⁻¹ Z_R (Woodbury), so the cost is O(m·q²) per λ instead of
    O(m³). Newton's method on λ − μ_j(S(λ)) (its slope is −(1 + ‖v_R‖²)) inside a bracket finds
    it; the eigenvector's tail is v_R = (λ − M_RR)⁻¹ M_RH v_H. Where the bound fails, h doubles
    while the head stays small against m; past a quarter of m (a flat spectrum, as attention
    weights of small encoders have) one eigendecomposition of the whole K Kᵀ costs less than the
    iteration's k decompositions of the head per Newton step, and is exact."""
    n, nl, q = L.shape
    m = len(S)
    d = np.r_[S**2, np.zeros(nl - m)]
    Y = np.zeros((n, nl, q))
    Y[:, :m] = S[:, None] * Rm[:, :m]
    G = Rm.transpose(0, 2, 1) @ Rm
    Z = np.concatenate([Y, L], axis=2)                                 # (n, nl, 2q)
    eye, zero = np.broadcast_to(np.eye(q), G.shape), np.zeros_like(G)
    C = np.block([[zero, eye], [eye, G]])
    Cinv = np.block([[-G, eye], [eye, zero]])
    lam_out, sim_out = np.full((n, k), np.nan), np.full((n, k), np.nan)
    todo = np.arange(n)
    h = min(m, 2 * k + 2 * q)
    while len(todo):
        if 4 * h >= m:
            lam_out[todo], sim_out[todo] = _whole(d, Z[todo], C[todo], m, k)
            break
        ok, lam, sim = _secular(d, Z[todo], C[todo], Cinv[todo], h, m, k)
        lam_out[todo[ok]], sim_out[todo[ok]] = lam, sim
        todo = todo[~ok]
        h *= 2
    return np.sqrt(np.maximum(lam_out, 0.0)), sim_out


def _whole(d: np.ndarray, Z: np.ndarray, C: np.ndarray, m: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """`_top_left` without a tail: the top k eigenpairs of K Kᵀ = diag(d) + Z C Zᵀ from one
    eigendecomposition per row, with each eigenvector's largest |coordinate| among the first m."""
    M = Z @ C @ Z.transpose(0, 2, 1)
    M[:, np.arange(len(d)), np.arange(len(d))] += d
    lam, V = np.linalg.eigh(M)
    return lam[:, ::-1][:, :k], np.abs(V[:, :m, ::-1][:, :, :k]).max(axis=1)


def _secular(d, Z, C, Cinv, h: int, m: int, k: int):
    """`_top_left` for one head size h: (which rows the tail bound allowed, their top k
    eigenvalues (desc) and the largest |W0 coordinate| of each eigenvector)."""
    n, nl, q2 = Z.shape
    H = np.r_[np.arange(h), np.arange(m, nl)]
    ZH, ZR, dR = Z[:, H], Z[:, h:m], d[h:m]
    MHH = ZH @ C @ ZH.transpose(0, 2, 1)
    MHH[:, np.arange(len(H)), np.arange(len(H))] += d[H]
    muH = np.linalg.eigvalsh(MHH)[:, ::-1][:, :k]
    if len(dR):
        g, V = np.linalg.eigh(ZR.transpose(0, 2, 1) @ ZR)
        half = V * np.sqrt(np.maximum(g, 0.0))[:, None, :] @ V.transpose(0, 2, 1)
        bound = dR.max() + np.maximum(np.linalg.eigvalsh(half @ C @ half)[:, -1], 0.0)
    else:
        bound = np.full(n, -np.inf)
    ok = muH[:, -1] > bound * (1 + 1e-9) + 1e-300
    rows = np.flatnonzero(ok)
    ZH, ZR, C, Cinv, MHH, lo = ZH[rows], ZR[rows], C[rows], Cinv[rows], MHH[rows], muH[rows].copy()
    nr = len(rows)
    outer = (ZR[:, :, :, None] * ZR[:, :, None, :]).reshape(nr, len(dR), q2 * q2)  # z zᵀ per tail row
    hi = np.full((nr, k), np.inf)
    lam = lo.copy()
    jj = np.arange(k)
    for _ in range(60):
        w1 = 1.0 / (lam[:, :, None] - dR)                                       # (nr, k, |R|)
        Gam = (w1 @ outer).reshape(nr, k, q2, q2)
        Gam2 = ((w1 * w1) @ outer).reshape(nr, k, q2, q2)
        I2 = np.eye(q2)
        T = Gam @ np.linalg.inv(I2 - C[:, None] @ Gam)                           # Γ (I − CΓ)⁻¹
        CZt = C @ ZH.transpose(0, 2, 1)                                           # (nr, 2q, |H|)
        Smat = MHH[:, None] + CZt.transpose(0, 2, 1)[:, None] @ T @ CZt[:, None]
        mu, VH = np.linalg.eigh(Smat)
        mu_j = mu[:, jj, -1 - jj]                                                # j-th largest
        v = VH.transpose(0, 1, 3, 2)[:, jj, -1 - jj]                              # (nr, k, |H|)
        wv = (CZt[:, None] @ v[..., None])[..., 0]                                # C Z_Hᵀ v_H
        u = wv + np.linalg.solve(Cinv[:, None] - Gam, (Gam @ wv[..., None]))[..., 0]
        vr2 = np.maximum((u[:, :, None, :] @ Gam2 @ u[..., None])[..., 0, 0], 0.0)  # ‖v_R‖²
        phi = mu_j - lam
        lo, hi = np.where(phi > 0, lam, lo), np.where(phi > 0, np.minimum(hi, mu_j), np.minimum(hi, lam))
        done = np.abs(phi) <= 1e-14 * np.abs(lam)
        if done.all():
            break
        newton = lam + phi / (1.0 + vr2)
        inside = (newton >= lo) & (newton <= hi)
        lam = np.where(done, lam, np.where(inside, newton, 0.5 * (lo + np.where(np.isfinite(hi), hi, mu_j))))
    vR = (1.0 / (lam[:, :, None] - dR)) * (u @ ZR.transpose(0, 2, 1))              # (nr, k, |R|)
    top = np.maximum(np.abs(v[:, :, :h]).max(axis=2), np.abs(vR).max(axis=2) if len(dR) else 0.0)
    return ok, lam, top / np.sqrt(1.0 + vr2)


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
    q = P.shape[2]
    # a chunk's largest temporaries: the tail's z zᵀ (m·4q²) and the factors (out + in)·q
    for sl in time_chunks(T, m * 4 * q * q + (out_f + in_f) * q + k * m):
        rows = np.arange(sl.start, sl.stop)[fin[sl]]
        if len(rows):
            L, Rm = _factors(svd, P[rows], Q[rows])
            sigma[rows], sim[rows] = _top_left(svd.S, L, Rm, k)
    count = np.where(fin, (sim < epsilon).sum(axis=1), 0)
    worst = np.where(fin, np.nanmin(np.where(fin[:, None], sim, np.inf), axis=1), np.nan)
    return {"count": count, "worst_similarity": worst, "similarity": sim, "sigma": sigma,
            "status": np.where(fin, "ok", "nonfinite").astype(object)}
