"""The asymmetry of the two LoRA factors over training (Zhu et al. 2024, "Asymmetry in Low-Rank
Adapters of Foundation Models", arXiv 2402.16842): how far A and B move from their init,
relative to their init's size, and how much of A's row space stays the one it started with —
the numbers behind "A barely moves, B does the learning"."""
from __future__ import annotations

import numpy as np

from lorascope.analysis import geometry as _geo
from lorascope.analysis import stats as _stats
from lorascope.analysis.batch import CACHE_VALUES, as_stack, time_chunks
from lorascope.analysis.batch import lora_pair
from lorascope.analysis.spectra import GRAM_RELIABLE_RATIO
from lorascope.errors import UsageError

__all__ = ["asymmetry", "row_space_similarity"]


def asymmetry(A: np.ndarray, B: np.ndarray, first: tuple[np.ndarray, np.ndarray] | None = None,
              eps: float | None = None) -> dict[str, np.ndarray]:
    """Per snapshot (each (T,)), for X in A and B: `X_distance` ‖X_t − X_0‖_F, `X_relative`
    ‖X_t − X_0‖_F / ‖X_0‖_F (NaN where X_0 = 0, B's usual init: no size to be relative to;
    `X_init_norm` says so), and `A_phi` = φ(A_t, A_0, r, r), the share of A_0's row space that
    A_t's keeps (1: the same subspace; r/in for unrelated ones), with `A_phi_status` as in
    `geometry.similarity` ('rank_deficient' where either A has numerical rank below r,
    tolerance max(r, in)·eps·σ_max, eps the recorded precision's, default X's dtype's).
    `first` = (A_0, B_0) when the series is a piece cut along time."""
    A, B = lora_pair(A, B)
    A0, B0 = (A[0], B[0]) if first is None else first
    out: dict[str, np.ndarray] = {}
    for name, X, X0 in (("A", A, A0), ("B", B, B0)):
        dist = _stats.dynamics(X, X0)["distance_from_first"]
        n0 = float(np.linalg.norm(np.asarray(X0, dtype=np.float64)))
        with np.errstate(divide="ignore", invalid="ignore"):
            out[f"{name}_distance"], out[f"{name}_relative"] = dist, (dist / n0 if n0 > 0 else np.full(len(X), np.nan))
        out[f"{name}_init_norm"] = np.full(len(X), n0)
    phi, status = row_space_similarity(A, A0, eps=eps)
    out["A_phi"], out["A_phi_status"] = phi, status
    return out


def row_space_similarity(A: np.ndarray, A0: np.ndarray, i: int | None = None, eps: float | None = None,
                         ) -> tuple[np.ndarray, np.ndarray]:
    """φ(A_t, A0, i, i) for every snapshot of A (T, r, in) against one matrix A0 (r, in): the right
    singular subspaces (A's row spaces), i = r by default, with a status per snapshot as in
    `geometry.similarity`. From r×r products only: with G = AAᵀ = W Λ Wᵀ the top-i basis is
    V = Aᵀ W Λ^-½, so V_tᵀ V_0 = Λ_t^-½ W_tᵀ (A_t A0ᵀ) W_0 Λ_0^-½. The Gram route squares the
    conditioning: snapshots whose i-th singular value is below GRAM_RELIABLE_RATIO of the top
    one are redone by SVD. NaN with status 'nonfinite' where A_t holds NaN/Inf."""
    A, A0 = np.asarray(A), np.asarray(A0)
    if eps is None:  # before as_stack, which reads half precision as float32
        eps = np.finfo(A.dtype if np.issubdtype(A.dtype, np.floating) else np.float64).eps
    A = as_stack(A, "A")
    if A0.shape != A.shape[1:]:
        raise UsageError(f"the reference A0 {A0.shape} is not shaped like the series' snapshots {A.shape[1:]}")
    T, r, n_in = A.shape
    i = min(r, n_in) if i is None else i
    if not 1 <= i <= min(r, n_in):
        raise UsageError(f"i must lie in 1..{min(r, n_in)}, got {i}")
    if not np.isfinite(A0).all():
        raise UsageError("the reference A0 holds NaN/Inf; it spans no subspace, pick a finite snapshot")
    ref = _geo.subspaces(A0[None], "A", eps)[0]
    phi, status = np.full(T, np.nan), np.full(T, "nonfinite", dtype=object)
    a0 = A0.astype(np.float64)
    lam0, W0 = np.linalg.eigh(a0 @ a0.T)
    lam0, W0 = lam0[::-1][:i], W0[:, ::-1][:, :i]
    for sl in time_chunks(T, r * n_in, CACHE_VALUES):
        a = A[sl].astype(np.float64)
        fin = np.isfinite(a).all(axis=(1, 2))
        if not fin.any():
            continue
        a = a[fin]
        lam, W = np.linalg.eigh(a @ a.transpose(0, 2, 1))
        lam, W = lam[:, ::-1], W[:, :, ::-1]
        s = np.sqrt(np.maximum(lam, 0.0))
        st = _geo.similarity_status(_geo.numerical_rank(s, (r, n_in), eps)[0], ref.rank, i, i)
        with np.errstate(divide="ignore", invalid="ignore"):
            M = (W[:, :, :i] / np.sqrt(lam[:, None, :i])).transpose(0, 2, 1) @ (a @ a0.T) @ (W0 / np.sqrt(lam0))
            p = (M**2).sum(axis=(1, 2)) / i
        weak = (st == "ok") & (s[:, i - 1] < GRAM_RELIABLE_RATIO * s[:, 0])
        if weak.any():
            p[weak] = _geo.subspace_similarity(_geo.subspaces(a[weak], "A", eps).basis, ref.basis, i, i)
        idx = np.arange(sl.start, sl.stop)[fin]
        phi[idx], status[idx] = np.where(st == "ok", p, np.nan), st
    return phi, status
