"""The fast paths work in float32 for float32 series: each is checked here against float64
references (the dense out×in product where ΔW is concerned), with the tolerance it promises."""
from __future__ import annotations

import numpy as np
import pytest

from lorascope.analysis import stats


def _walk(T: int, shape: tuple[int, int], rng, start: float, step: float) -> np.ndarray:
    X = step * rng.standard_normal((T, *shape))
    X[0] = start * rng.standard_normal(shape)
    return np.cumsum(X, axis=0)


def _dense(X: np.ndarray) -> dict[str, np.ndarray]:
    """Reference dynamics of a dense float64 series, one snapshot at a time."""
    flat = X.reshape(len(X), -1)
    upd = np.diff(flat, axis=0)
    n = np.linalg.norm(upd, axis=1)
    cos = np.einsum("ij,ij->i", upd[1:], upd[:-1]) / (n[1:] * n[:-1])
    return {"distance_from_first": np.linalg.norm(flat - flat[0], axis=1),
            "update_size": np.r_[np.nan, n], "update_cosine": np.r_[np.nan, np.nan, cos]}


@pytest.mark.parametrize("b0", ["zero", "nonzero"])
def test_float32_lowrank_dynamics_within_1e5_of_the_dense_product(b0):
    rng = np.random.default_rng(0)
    A = _walk(9, (4, 40), rng, 0.1, 1e-3)
    B = _walk(9, (30, 4), rng, 0.0 if b0 == "zero" else 0.05, 1e-3)
    A32, B32 = A.astype(np.float32), B.astype(np.float32)
    W = 0.5 * B32.astype(np.float64) @ A32.astype(np.float64)  # the product of the stored values
    got, want = stats.lowrank_dynamics(A32, B32, 0.5), _dense(W)
    for k in ("distance_from_first", "update_size"):
        np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-12)
    np.testing.assert_allclose(got["update_cosine"], want["update_cosine"], rtol=0, atol=1e-5)
    np.testing.assert_allclose(got["frobenius"], np.linalg.norm(W, axis=(1, 2)), rtol=1e-5)


def test_float64_fast_lowrank_dynamics_equals_the_rescaling_path():
    # B_0 != 0 exercises the difference form of the distance; float64 in, float64 out
    rng = np.random.default_rng(1)
    A, B = _walk(7, (3, 17), rng, 1.0, 0.1), _walk(7, (11, 3), rng, 1.0, 0.1)
    fast = stats._lowrank_dynamics_fast(A, B, -2.0, A[0], B[0])
    exact = stats._lowrank_dynamics_exact(A, B, -2.0, A[0], B[0])
    for k in exact:
        np.testing.assert_allclose(fast[k], exact[k], rtol=1e-10, atol=1e-13)


def test_float32_dense_dynamics_within_1e6_of_float64():
    rng = np.random.default_rng(2)
    X = _walk(12, (16, 96), rng, 0.1, 1e-4).astype(np.float32)
    got, want = stats.dynamics(X), _dense(X.astype(np.float64))
    for k in ("distance_from_first", "update_size"):
        np.testing.assert_allclose(got[k], want[k], rtol=1e-6)
    np.testing.assert_allclose(got["update_cosine"], want["update_cosine"], rtol=0, atol=1e-6)


def test_one_ulp_updates_keep_their_digits():
    # late in a run updates shrink to a few float32 ulps: differences are taken before any square
    X = np.full((4, 8, 8), 0.75, dtype=np.float32)
    X[2, 0, 0] = np.nextafter(np.float32(0.75), np.float32(1))
    X[3] = X[2]
    X[3, 1, 1] = np.nextafter(np.float32(0.75), np.float32(0))
    ulp_up, ulp_down = float(X[2, 0, 0]) - 0.75, 0.75 - float(X[3, 1, 1])
    d = stats.dynamics(X)
    np.testing.assert_allclose(d["update_size"][1:], [0.0, ulp_up, ulp_down], rtol=1e-12)
    B = np.ones((4, 5, 8), dtype=np.float32)
    lo = stats.lowrank_dynamics(X, B, 1.0)  # ΔW's rows are column sums of X: each update moves one column
    np.testing.assert_allclose(lo["update_size"][2:], [np.sqrt(5) * ulp_up, np.sqrt(5) * ulp_down], rtol=1e-6)


def test_extreme_magnitudes_take_the_rescaling_path():
    rng = np.random.default_rng(3)
    X = (_walk(5, (4, 6), rng, 1.0, 0.1) * 1e30).astype(np.float32)  # squares overflow float32
    got, want = stats.dynamics(X), _dense(X.astype(np.float64))
    np.testing.assert_allclose(got["update_size"], want["update_size"], rtol=1e-6)
    A = (_walk(5, (2, 6), rng, 1.0, 0.1) * 1e-30).astype(np.float32)
    B = _walk(5, (3, 2), rng, 1.0, 0.1).astype(np.float32)
    W = B.astype(np.float64) @ A.astype(np.float64)
    np.testing.assert_allclose(stats.lowrank_dynamics(A, B, 1.0)["update_size"], _dense(W)["update_size"], rtol=1e-6)
