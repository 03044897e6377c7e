"""Asymmetry of A and B: distances from init against numpy, φ of A's row space against scipy's
principal angles, and the named cases (zero init, rank-deficient and non-finite A)."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import linalg as sla

from lorascope.analysis import asymmetry


def _phi_scipy(a: np.ndarray, a0: np.ndarray) -> float:
    """φ(i = j = r) = mean of cos² of the principal angles between the two row spaces."""
    return float((np.cos(sla.subspace_angles(a.T, a0.T)) ** 2).mean())


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_distances_and_row_space_similarity_against_dense(dtype):
    rng = np.random.default_rng(0)
    T, r, n_in, n_out = 6, 4, 30, 25
    A = (rng.uniform(-1, 1, (r, n_in)) / np.sqrt(n_in) + 0.02 * np.cumsum(rng.normal(size=(T, r, n_in)), 0))
    B = 0.01 * np.cumsum(rng.normal(size=(T, n_out, r)), 0)
    B[0] = 0.0
    A, B = A.astype(dtype), B.astype(dtype)
    got = asymmetry.asymmetry(A, B)
    a, b = A.astype(np.float64), B.astype(np.float64)
    dA = np.linalg.norm(a - a[0], axis=(1, 2))
    rtol = 1e-6 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(got["A_distance"], dA, rtol=rtol, atol=1e-12)
    np.testing.assert_allclose(got["A_relative"], dA / np.linalg.norm(a[0]), rtol=rtol, atol=1e-12)
    np.testing.assert_allclose(got["B_distance"], np.linalg.norm(b, axis=(1, 2)), rtol=rtol)
    assert np.isnan(got["B_relative"]).all() and (got["B_init_norm"] == 0).all()  # B_0 = 0: no init size
    np.testing.assert_allclose(got["A_phi"], [_phi_scipy(x, a[0]) for x in a], rtol=1e-9)
    assert got["A_phi"][0] == pytest.approx(1.0) and list(got["A_phi_status"]) == ["ok"] * T


def test_ill_conditioned_a_takes_the_svd_route_and_rank_deficient_a_is_named():
    rng = np.random.default_rng(1)
    A0 = rng.normal(size=(3, 20))
    A = np.stack([A0, A0 + 0.1 * rng.normal(size=(3, 20)), A0.copy(), A0.copy()])
    A[2, 2] = A[2, 0] + 1e-6 * rng.normal(size=20)   # σ_3/σ_1 ~ 1e-7: beyond the Gram route, still rank 3
    A[3, 2] = 2 * A[3, 0]                             # rank 2
    phi, status = asymmetry.row_space_similarity(A, A0)
    assert list(status) == ["ok", "ok", "ok", "rank_deficient"] and np.isnan(phi[3])
    np.testing.assert_allclose(phi[:3], [_phi_scipy(x, A0) for x in A[:3]], rtol=1e-7)
    _, status1 = asymmetry.row_space_similarity(A, A0, i=1)
    assert list(status1) == ["ok"] * 4


def test_nonfinite_snapshots_are_named():
    rng = np.random.default_rng(2)
    A = rng.normal(size=(3, 2, 10))
    B = rng.normal(size=(3, 12, 2))
    A[1, 0, 0] = np.nan
    got = asymmetry.asymmetry(A, B)
    assert got["A_phi_status"][1] == "nonfinite" and np.isnan(got["A_phi"][1]) and np.isnan(got["A_distance"][1])
    assert np.isfinite(got["B_distance"]).all()
    np.testing.assert_allclose(got["B_relative"], np.linalg.norm(B - B[0], axis=(1, 2)) / np.linalg.norm(B[0]))
