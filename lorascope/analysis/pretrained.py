"""How the update ΔW_t relates to the pretrained weight W0, per snapshot: the LoRA paper's
amplification (Hu et al. 2021, arXiv 2106.09685, §7 and Table 7) and DoRA's split of the change
into magnitude and direction (Liu et al. 2024, arXiv 2402.09353, §3).

ΔW_t comes as factors P (T, out, q), Q (T, q, in) with ΔW_t = P_t Q_t (`lowrank.update_factors`:
the adapter's s·B·A, or s(B_t A_t − B_0 A_0) over a compensated base); W0 is the pretrained
(out, in) weight. Nothing out×in is formed per snapshot: W0 is multiplied by a q-column basis
of ΔW's row space once per snapshot, and everything else is q×q."""
from __future__ import annotations

import numpy as np

from lorascope.errors import UsageError

__all__ = ["amplification", "random_projection", "magnitude_direction", "correlation"]


def _check(W0: np.ndarray, P: np.ndarray, Q: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    W0 = np.asarray(W0, dtype=np.float64)
    P, Q = np.asarray(P, dtype=np.float64), np.asarray(Q, dtype=np.float64)
    if W0.ndim != 2 or P.ndim != 3 or Q.ndim != 3 or P.shape[1] != W0.shape[0] or Q.shape[2] != W0.shape[1] \
            or P.shape[2] != Q.shape[1] or len(P) != len(Q):
        raise UsageError(f"W0 {W0.shape} and ΔW's factors P {P.shape}, Q {Q.shape} do not fit together as "
                         "W0 + P·Q; give P (steps, out, q) and Q (steps, q, in)")
    return W0, P, Q


def _finite(P: np.ndarray, Q: np.ndarray) -> np.ndarray:
    return np.isfinite(P).all(axis=(1, 2)) & np.isfinite(Q).all(axis=(1, 2))


def random_projection(W0: np.ndarray, k: int) -> float:
    """The random-direction baseline of ‖UᵀW0V‖_F: for U (out×k) and V (in×k) with orthonormal
    columns drawn uniformly at random, E‖UᵀW0V‖²_F = k²‖W0‖²_F/(out·in) (E[UUᵀ] = (k/out)·I);
    this returns its square root, k‖W0‖_F/√(out·in)."""
    W0 = np.asarray(W0, dtype=np.float64)
    out_f, in_f = W0.shape
    if not 1 <= k <= min(out_f, in_f):
        raise UsageError(f"the number of directions k must lie in 1..{min(out_f, in_f)}, got {k}")
    return float(k * np.linalg.norm(W0) / np.sqrt(out_f * in_f))


def amplification(W0: np.ndarray, P: np.ndarray, Q: np.ndarray, k: int,
                  eps: float = float(np.finfo(np.float32).eps)) -> dict[str, np.ndarray]:
    """Per snapshot (each (T,)): `frobenius` ‖ΔW‖_F; `projection` ‖UᵀW0V‖_F with U, V ΔW's top-k
    left/right singular vectors (k = the LoRA rank in the paper); `amplification`
    ‖ΔW‖_F/‖UᵀW0V‖_F, how strongly ΔW amplifies directions W0 barely uses; `random_projection`
    and `random_amplification`, the same for random directions (`random_projection`): an
    amplification far above the random one says ΔW picked directions W0 does not emphasise.
    NaN where ΔW is zero (no directions) or not finite; `status` says which ('ok', 'zero',
    'nonfinite'). Where ΔW has fewer than k numerically non-null directions (singular values
    above max(out, in)·eps·σ_max, eps the recorded precision's: float32 by default) the others
    are rounding noise, so the status is 'rank_deficient' and the numbers are NaN too."""
    W0, P, Q = _check(W0, P, Q)
    T, q = len(P), P.shape[2]
    k_max = min(q, *W0.shape)
    if not 1 <= k <= k_max:
        raise UsageError(f"the number of ΔW directions k must lie in 1..{k_max}, got {k}")
    fin = _finite(P, Q)
    proj, frob = np.full(T, np.nan), np.full(T, np.nan)
    rank = np.zeros(T, dtype=np.int64)
    if fin.any():
        p, qt = P[fin], Q[fin].transpose(0, 2, 1)
        QP, RP = np.linalg.qr(p)            # (n, out, q'), (n, q', q)
        QQ, RQ = np.linalg.qr(qt)           # (n, in, q''), (n, q'', q)
        Uc, S, Vct = np.linalg.svd(RP @ RQ.transpose(0, 2, 1))
        frob[fin] = np.sqrt((S**2).sum(axis=1))
        tol = max(W0.shape) * eps * S[:, :1]
        rank[fin] = (S > tol).sum(axis=1)
        U = QP @ Uc[:, :, :k]               # (n, out, k)
        V = QQ @ Vct[:, :k].transpose(0, 2, 1)
        proj[fin] = np.linalg.norm(U.transpose(0, 2, 1) @ (W0 @ V), axis=(1, 2))
    status = np.where(~fin, "nonfinite", np.where(rank == 0, "zero",
                                                  np.where(rank < k, "rank_deficient", "ok"))).astype(object)
    ok = status == "ok"
    proj = np.where(ok, proj, np.nan)
    base = random_projection(W0, k)
    with np.errstate(divide="ignore", invalid="ignore"):
        amp = np.where(ok & (proj > 0), frob / proj, np.nan)
    return {"frobenius": np.where(fin, frob, np.nan), "projection": proj, "amplification": amp,
            "random_projection": np.full(T, base), "random_amplification": np.where(ok, frob / base, np.nan),
            "status": status}


def magnitude_direction(W0: np.ndarray, P: np.ndarray, Q: np.ndarray, magnitude: np.ndarray | None = None,
                        norm: str = "row") -> dict[str, np.ndarray]:
    """DoRA's weight decomposition analysis of W_eff against W0, per snapshot (each (T,)):
    ΔM = mean over output features o of |‖W_eff,o‖ − ‖W0,o‖| and ΔD = mean over o of
    1 − cos(W_eff,o, W0,o). An output feature is a column of the paper's W ∈ R^{d×k} and a row
    of the (out, in) weight here (`norm` "row"; "column" for a magnitude per input, as PEFT's
    DoRA on an embedding); PEFT's and the authors' magnitude vector is the same norm.
    For LoRA, W_eff = W0 + P Q. For DoRA, `magnitude` (T, out) or (T, in) is the recorded vector
    m and W_eff = m ⊙ V/‖V‖ with V = W0 + P Q (P Q the LoRA part s·B·A): its norms are |m| and its
    directions V's (flipped where m < 0). A zero row of W0 has no direction and is left out of
    ΔD. NaN where ΔW (or m) is not finite.

    From q-wide products only: ⟨W0,o, ΔW_o⟩ = (P ∘ W0 Qᵀ)_o·1 and ‖ΔW_o‖² = (P (QQᵀ) Pᵀ)_oo. The
    differences are taken without cancellation: ‖V_o‖ − ‖W0,o‖ = (2c + d)/(‖V_o‖ + ‖W0,o‖) and
    1 − cos = sin²/(1 + cos) with sin² = (‖W0,o‖²‖ΔW_o‖² − c²)/(‖W0,o‖²‖V_o‖²), so a step 1e-6 the
    size of W0 keeps its digits."""
    if norm not in ("row", "column"):
        raise UsageError(f"the magnitude norm is taken over each 'row' or 'column', got {norm!r}")
    W0, P, Q = _check(W0, P, Q)
    if norm == "column":  # the same analysis of the transposed weight: W0ᵀ + Qᵀ Pᵀ
        W0, P, Q = W0.T, Q.transpose(0, 2, 1), P.transpose(0, 2, 1)
    T = len(P)
    fin = _finite(P, Q)
    if magnitude is not None:
        magnitude = np.asarray(magnitude, dtype=np.float64)
        if magnitude.shape != (T, W0.shape[0]):
            raise UsageError(f"the DoRA magnitude {magnitude.shape} does not match {T} snapshots of "
                             f"{W0.shape[0]} {norm}s")
        fin &= np.isfinite(magnitude).all(axis=1)
    dm, dd = np.full(T, np.nan), np.full(T, np.nan)
    if fin.any():
        p, q = P[fin], Q[fin]
        n0 = (W0**2).sum(axis=1)                                           # (out,)
        c = np.einsum("toq,toq->to", p, W0 @ q.transpose(0, 2, 1))          # ⟨W0,o, ΔW_o⟩
        d = np.maximum(np.einsum("toq,tqr,tor->to", p, q @ q.transpose(0, 2, 1), p), 0.0)  # ‖ΔW_o‖²
        n1 = np.maximum(n0 + 2 * c + d, 0.0)                               # ‖V_o‖²
        r0, r1 = np.sqrt(n0), np.sqrt(n1)
        with np.errstate(divide="ignore", invalid="ignore"):
            if magnitude is None:
                dm[fin] = np.abs(np.where(r0 + r1 > 0, (2 * c + d) / (r0 + r1), 0.0)).mean(axis=1)
            else:
                dm[fin] = np.abs(np.abs(magnitude[fin]) - r0).mean(axis=1)
            cos = np.clip((n0 + c) / (r0 * r1), -1.0, 1.0)
            sin2 = np.maximum(n0 * d - c * c, 0.0) / (n0 * n1)
            one_minus = np.where(cos > 0, sin2 / (1.0 + cos), 1.0 - cos)
            if magnitude is not None:  # m < 0 turns the row around: 1 − cos becomes 1 + cos
                one_minus = np.where(magnitude[fin] < 0, 2.0 - one_minus, one_minus)
        live = (n0 > 0) & (n1 > 0)  # a zero row has no direction to change
        count = live.sum(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            dd[fin] = np.where(count > 0, np.where(live, one_minus, 0.0).sum(axis=1) / count, np.nan)
    return {"magnitude_change": dm, "direction_change": dd}


def correlation(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation of two series over the steps where both are finite and not both zero
    (ΔW = 0 at the first step is the origin of both, not an observation); NaN with fewer than
    three such steps or a constant series. DoRA reports +0.83 between ΔM and ΔD for LoRA,
    −0.62 for full fine-tuning and −0.31 for DoRA."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    keep = np.isfinite(x) & np.isfinite(y) & ((x != 0) | (y != 0))
    if keep.sum() < 3:
        return float("nan")
    x, y = x[keep] - x[keep].mean(), y[keep] - y[keep].mean()
    den = np.sqrt((x * x).sum() * (y * y).sum())
    return float((x * y).sum() / den) if den > 0 else float("nan")
