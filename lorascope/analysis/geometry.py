"""LoRA geometry (Hu et al. 2021, arXiv 2106.09685, §7): how much the subspaces that A and B span
overlap between steps and runs, how ΔW relates to the frozen W0, and DoRA's (Liu et al. 2024,
arXiv 2402.09353) split of the change of W0 + ΔW into magnitude and direction."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lorascope.analysis.batch import as_stack
from lorascope.errors import UsageError

__all__ = [
    "Subspaces",
    "subspaces",
    "numerical_rank",
    "similarity",
    "similarity_status",
    "subspace_basis",
    "subspace_similarity",
    "similarity_grid",
    "random_baseline",
    "w0_projection",
    "dora_change",
]

# The subspace each factor spans on the model's side: A (r×in) acts through its rows, so its
# right-singular vectors; B (out×r) writes through its columns, so its left-singular vectors.
_SIDE = {"A": "right", "B": "left"}


@dataclass(frozen=True)
class Subspaces:
    """The subspaces a factor spans at every snapshot: `basis` (T, d, r) orthonormal singular
    vectors ordered by singular value, `singular_values` (T, r), `rank` (T,) the numerical rank
    and `tolerance` (T,) the singular value at or below which a direction counts as null. Only
    the first `rank` columns of a basis are the matrix's; the others complete it arbitrarily.
    Indexing takes snapshots: `S[-1]` is the last one."""
    basis: np.ndarray
    singular_values: np.ndarray
    rank: np.ndarray
    tolerance: np.ndarray

    def __getitem__(self, t) -> "Subspaces":
        return Subspaces(self.basis[t], self.singular_values[t], self.rank[t], self.tolerance[t])


def numerical_rank(s: np.ndarray, shape: tuple[int, int], eps: float) -> tuple[np.ndarray, np.ndarray]:
    """(rank, tolerance) of matrices of `shape` from their singular values s (..., k): the count
    of values above tol = max(m, n)·eps·σ_max, numpy's `matrix_rank` rule, with eps the
    resolution the values were recorded in (float32's 1.2e-7 for a float32 recording, not
    float64's): rounding a rank-1 matrix to float32 leaves its other values near eps·σ_max."""
    s = np.asarray(s, dtype=np.float64)
    tol = max(shape) * float(eps) * s.max(axis=-1)
    return (s > tol[..., None]).sum(axis=-1), tol


def subspaces(X: np.ndarray, matrix: str, eps: float | None = None) -> Subspaces:
    """The subspaces of "A" (right-singular vectors, (T, in, r): A acts through its rows) or "B"
    (left-singular, (T, out, r): B writes through its columns) at every snapshot of X, with
    their numerical rank. `eps`: the relative resolution of the recorded values (default: that
    of X's dtype; pass float16's or bfloat16's for a series stored in half precision and read
    as float32)."""
    if matrix not in _SIDE:
        raise UsageError(f"subspaces are defined for matrix 'A' or 'B', got {matrix!r}")
    X = np.asarray(X)
    if eps is None:
        eps = np.finfo(X.dtype if np.issubdtype(X.dtype, np.floating) else np.float64).eps
    X = as_stack(X, matrix).astype(np.float64)
    if not np.isfinite(X).all():
        raise UsageError(f"{matrix} holds NaN/Inf; it spans no subspace at those steps, select finite steps")
    U, s, Vt = np.linalg.svd(X, full_matrices=False)
    rank, tol = numerical_rank(s, X.shape[1:], eps)
    return Subspaces(Vt.transpose(0, 2, 1) if _SIDE[matrix] == "right" else U, s, rank, tol)


def subspace_basis(X: np.ndarray, matrix: str) -> np.ndarray:
    """`subspaces(X, matrix).basis`: the singular vectors without their ranks."""
    return subspaces(X, matrix).basis


def similarity(S1: Subspaces, S2: Subspaces, i: int, j: int) -> tuple[np.ndarray, np.ndarray]:
    """φ(S1, S2, i, j) and a status per snapshot (leading axes broadcast, as in
    `subspace_similarity`), see `similarity_status`. φ is NaN wherever the status is not 'ok'."""
    phi = subspace_similarity(S1.basis, S2.basis, i, j)
    status = similarity_status(S1.rank, S2.rank, i, j)
    return np.where(status == "ok", phi, np.nan), status


def similarity_status(rank1, rank2, i: int, j: int) -> np.ndarray:
    """Whether φ(·, ·, i, j) is defined for subspaces of numerical ranks rank1 and rank2
    (broadcast): 'ok'; 'zero' where the first matrix is zero (rank 0), 'zero_reference' where
    the second is; 'rank_deficient' where i exceeds rank1 or j rank2, since the directions beyond
    the rank are an arbitrary completion of the basis (another valid one would give another φ)."""
    r1, r2 = np.broadcast_arrays(np.asarray(rank1), np.asarray(rank2))
    return np.where(r1 == 0, "zero", np.where(r2 == 0, "zero_reference",
                    np.where((i > r1) | (j > r2), "rank_deficient", "ok"))).astype(object)


def _check_dims(U1: np.ndarray, U2: np.ndarray, i: int, j: int) -> None:
    if U1.shape[-2] != U2.shape[-2]:
        raise UsageError(f"subspaces live in different spaces ({U1.shape[-2]} vs {U2.shape[-2]} dimensions)")
    if not (1 <= i <= U1.shape[-1] and 1 <= j <= U2.shape[-1]):
        raise UsageError(f"i={i}, j={j} must lie in 1..{U1.shape[-1]} and 1..{U2.shape[-1]}")


def subspace_similarity(U1: np.ndarray, U2: np.ndarray, i: int, j: int) -> np.ndarray:
    """φ(U1, U2, i, j) = ‖U1[:, :i]ᵀ U2[:, :j]‖²_F / min(i, j), in [0, 1]: 1 when the smaller
    subspace lies inside the larger, 0 when they are orthogonal. Leading axes broadcast, so a
    (T, d, r) stack against one (d, r) basis gives (T,)."""
    U1, U2 = np.asarray(U1, dtype=np.float64), np.asarray(U2, dtype=np.float64)
    _check_dims(U1, U2, i, j)
    M = np.swapaxes(U1[..., :, :i], -1, -2) @ U2[..., :, :j]
    return (M**2).sum(axis=(-1, -2)) / min(i, j)


def similarity_grid(U1: np.ndarray, U2: np.ndarray, rank1=None, rank2=None) -> np.ndarray:
    """φ for every (i, j) at once, the LoRA paper's Figure 3: grid[..., i-1, j-1]. Built from
    cumulative sums of (U1ᵀU2)², one matrix product instead of r1·r2. With the numerical ranks
    of the two bases (`Subspaces.rank`), cells where i or j exceeds them are NaN."""
    U1, U2 = np.asarray(U1, dtype=np.float64), np.asarray(U2, dtype=np.float64)
    _check_dims(U1, U2, 1, 1)
    M2 = (np.swapaxes(U1, -1, -2) @ U2) ** 2
    C = M2.cumsum(axis=-2).cumsum(axis=-1)
    i = np.arange(1, U1.shape[-1] + 1)[:, None]
    j = np.arange(1, U2.shape[-1] + 1)[None, :]
    grid = C / np.minimum(i, j)
    if rank1 is not None:
        grid = np.where(i > np.asarray(rank1)[..., None, None], np.nan, grid)
    if rank2 is not None:
        grid = np.where(j > np.asarray(rank2)[..., None, None], np.nan, grid)
    return grid


def random_baseline(dim: int, i: int, j: int) -> float:
    """Expected φ between an i- and a j-dimensional uniformly random subspace of R^dim:
    E‖U1ᵀU2‖²_F = i·j/dim, so φ = max(i, j)/dim. A similarity near this says 'unrelated'."""
    if not (1 <= i <= dim and 1 <= j <= dim):
        raise UsageError(f"subspace dimensions i={i}, j={j} must lie in 1..{dim}")
    return max(i, j) / dim


def w0_projection(W0: np.ndarray, U: np.ndarray, V: np.ndarray, dw_frobenius: np.ndarray) -> dict[str, np.ndarray]:
    """‖UᵀW0V‖_F for ΔW's top singular directions U (T, out, k), V (T, in, k), and the LoRA paper's
    amplification factor ‖ΔW‖_F / ‖UᵀW0V‖_F: how strongly ΔW boosts directions W0 already has
    (both NaN where ΔW = 0, the amplification also where the projection is zero)."""
    W0 = np.asarray(W0, dtype=np.float64)
    U, V = np.asarray(U, dtype=np.float64), np.asarray(V, dtype=np.float64)
    if W0.ndim != 2 or U.shape[-2] != W0.shape[0] or V.shape[-2] != W0.shape[1]:
        raise UsageError(f"W0 {W0.shape} does not match ΔW's singular vectors U {U.shape}, V {V.shape}")
    proj = np.linalg.norm(np.swapaxes(U, -1, -2) @ W0 @ V, axis=(-2, -1))
    dw = np.asarray(dw_frobenius, dtype=np.float64)
    proj = np.where(dw > 0, proj, np.nan)  # ΔW = 0 has no directions: U and V would be arbitrary
    with np.errstate(divide="ignore", invalid="ignore"):
        amp = np.where(proj > 0, dw / proj, np.nan)
    return {"w0_projection": proj, "amplification": amp}


def dora_change(W0: np.ndarray, A: np.ndarray, B: np.ndarray, scaling: float) -> dict[str, np.ndarray]:
    """DoRA's magnitude and direction change of W' = W0 + scaling·B A against W0, per output
    feature (the rows of the (out, in) weight, as PEFT's magnitude vector):
    ΔM = mean_o |‖W'_o‖ − ‖W0_o‖| and ΔD = mean_o (1 − cos(W'_o, W0_o)). Uses W0·Aᵀ (out×r) and
    A·Aᵀ (r×r), never the full W'."""
    W0 = np.asarray(W0, dtype=np.float64)
    A, B = as_stack(A, "A").astype(np.float64), as_stack(B, "B").astype(np.float64)
    if W0.ndim != 2 or A.shape[2] != W0.shape[1] or B.shape[1] != W0.shape[0] or A.shape[1] != B.shape[2]:
        raise UsageError(f"W0 {W0.shape}, A {A.shape[1:]} and B {B.shape[1:]} do not fit together as W0 + B·A")
    s = float(scaling)
    n0 = (W0**2).sum(axis=1)                                   # (out,)
    cross = s * np.einsum("tor,tor->to", B, W0 @ A.transpose(0, 2, 1))  # W0_o · ΔW_o
    own = s * s * np.einsum("tor,trq,toq->to", B, A @ A.transpose(0, 2, 1), B)  # ‖ΔW_o‖²
    n1 = np.maximum(n0 + 2 * cross + own, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        cos = np.clip((n0 + cross) / np.sqrt(n0 * n1), -1.0, 1.0)
    live = n0 > 0  # a zero row of W0 has no direction to change
    dm = np.abs(np.sqrt(n1) - np.sqrt(n0)).mean(axis=1)
    dd = np.where(live, 1.0 - cos, np.nan)
    return {"dora_magnitude": dm, "dora_direction": np.nanmean(dd, axis=1) if live.any() else np.full(len(A), np.nan)}
