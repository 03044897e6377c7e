"""LoRA geometry: subspace similarity's fixed points, the random baseline, numerical ranks, and
float16 inputs against their float64 upcast."""
from __future__ import annotations

import numpy as np
import pytest

from lorascope.analysis import geometry, lowrank, pretrained
from lorascope.errors import UsageError


def test_phi_of_a_subspace_with_itself_is_one_and_orthogonal_is_zero():
    rng = np.random.default_rng(0)
    Q, _ = np.linalg.qr(rng.normal(size=(30, 8)))
    assert geometry.subspace_similarity(Q[:, :4], Q[:, :4], 4, 4) == pytest.approx(1.0)
    assert geometry.subspace_similarity(Q[:, :4], Q[:, 4:], 4, 4) == pytest.approx(0.0, abs=1e-14)
    # a 2-dimensional subspace inside a 4-dimensional one: φ normalises by min(i, j)
    assert geometry.subspace_similarity(Q[:, :2], Q[:, :4], 2, 4) == pytest.approx(1.0)


def test_subspace_basis_sides():
    rng = np.random.default_rng(1)
    A = rng.normal(size=(2, 4, 20))
    V = geometry.subspace_basis(A, "A")  # right-singular: spans A's rows
    assert V.shape == (2, 20, 4)
    np.testing.assert_allclose(V @ V.transpose(0, 2, 1) @ A.transpose(0, 2, 1), A.transpose(0, 2, 1), atol=1e-12)
    B = rng.normal(size=(2, 20, 4))
    U = geometry.subspace_basis(B, "B")  # left-singular: spans B's columns
    np.testing.assert_allclose(U @ U.transpose(0, 2, 1) @ B, B, atol=1e-12)
    # the same row space with other coefficients: φ = 1
    mix = rng.normal(size=(4, 4))
    assert geometry.subspace_similarity(V[0], geometry.subspace_basis(mix @ A[0], "A")[0], 4, 4) == pytest.approx(1.0)


def test_random_baseline_matches_random_subspaces():
    rng = np.random.default_rng(2)
    d, i, j = 64, 4, 8
    Q1 = np.linalg.qr(rng.normal(size=(400, d, i)))[0]
    Q2 = np.linalg.qr(rng.normal(size=(400, d, j)))[0]
    phi = geometry.subspace_similarity(Q1, Q2, i, j)
    assert phi.mean() == pytest.approx(geometry.random_baseline(d, i, j), rel=0.05)


def test_similarity_grid_equals_pointwise_phi():
    rng = np.random.default_rng(3)
    U1 = np.linalg.qr(rng.normal(size=(25, 4)))[0]
    U2 = np.linalg.qr(rng.normal(size=(25, 6)))[0]
    grid = geometry.similarity_grid(U1, U2)
    for i in range(1, 5):
        for j in range(1, 7):
            assert grid[i - 1, j - 1] == pytest.approx(geometry.subspace_similarity(U1, U2, i, j))


def test_bad_input_is_a_usage_error():
    with pytest.raises(UsageError, match="different spaces"):
        geometry.subspace_similarity(np.eye(4)[:, :2], np.eye(5)[:, :2], 1, 1)
    with pytest.raises(UsageError, match="NaN"):
        geometry.subspace_basis(np.full((1, 2, 3), np.nan), "A")
    with pytest.raises(UsageError, match="'A' or 'B'"):
        geometry.subspace_basis(np.ones((1, 2, 3)), "dW")


def test_float16_inputs_equal_their_float64_upcast():
    rng = np.random.default_rng(6)
    W0 = rng.normal(size=(30, 20)).astype(np.float16)
    A = rng.uniform(-0.25, 0.25, size=(3, 4, 20)).astype(np.float16)
    B = (0.05 * rng.normal(size=(3, 30, 4))).astype(np.float16)
    up = {k: v.astype(np.float64) for k, v in {"W0": W0, "A": A, "B": B}.items()}
    for matrix, X in (("A", A), ("B", B)):
        U16, U64 = geometry.subspace_basis(X, matrix), geometry.subspace_basis(up[matrix], matrix)
        for i, j in ((1, 1), (4, 4), (2, 3)):
            np.testing.assert_allclose(geometry.subspace_similarity(U16, U16[-1], i, j),
                                       geometry.subspace_similarity(U64, U64[-1], i, j), rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(geometry.similarity_grid(U16[0], U16[-1]), geometry.similarity_grid(U64[0], U64[-1]),
                                   rtol=1e-6, atol=1e-7)
    # the update's geometry against W0 (pretrained.py) reads float16 factors as their upcast
    for fn in (lambda W, a, b: pretrained.amplification(W, *lowrank.update_factors(a, b, 0.5), 4),
               lambda W, a, b: pretrained.magnitude_direction(W, *lowrank.update_factors(a, b, 0.5))):
        got, want = fn(W0, A, B), fn(up["W0"], up["A"], up["B"])
        for k in want:
            if k != "status":
                np.testing.assert_allclose(got[k], want[k], rtol=1e-6, err_msg=k)


def test_rank_deficient_factor_gives_no_phi_beyond_its_numerical_rank():
    # issue 12, item 3: B of rank 1 (of 8), stored in float32; its other seven basis vectors are an
    # arbitrary completion, so φ at i = j = 8 is undefined, while φ at i = j = 1 is the dense one
    rng = np.random.default_rng(10)
    u, v = rng.normal(size=(40, 1)), rng.normal(size=(1, 8))
    B = np.stack([u @ v, rng.normal(size=(40, 8))]).astype(np.float32)
    S = geometry.subspaces(B, "B")
    assert list(S.rank) == [1, 8]
    np.testing.assert_allclose(S.tolerance, 40 * np.finfo(np.float32).eps * np.linalg.svd(
        B.astype(np.float64), compute_uv=False)[:, 0], rtol=1e-12)
    phi, status = geometry.similarity(S[0], S[1], 8, 8)
    assert np.isnan(phi) and status == "rank_deficient"
    phi, status = geometry.similarity(S, S[1], 1, 1)
    U = np.linalg.svd(B.astype(np.float64))[0]
    np.testing.assert_allclose(phi, (U[:, :, 0] @ U[1, :, 0]) ** 2, rtol=1e-12)
    assert list(status) == ["ok", "ok"]
    phi, status = geometry.similarity(S[1], S[0], 8, 1)  # the reference's rank limits j, not i
    assert np.isfinite(phi) and status == "ok"
    phi, status = geometry.similarity(S[1], S[0], 1, 2)
    assert np.isnan(phi) and status == "rank_deficient"
    grid = geometry.similarity_grid(S.basis[0], S.basis[1], S.rank[0], S.rank[1])
    assert np.isfinite(grid[0]).all() and np.isnan(grid[1:]).all()


def test_zero_factor_and_zero_reference_are_named():
    rng = np.random.default_rng(11)
    B = np.stack([np.zeros((30, 4)), rng.normal(size=(30, 4))])
    S = geometry.subspaces(B, "B")
    assert list(S.rank) == [0, 4]
    assert geometry.similarity(S[0], S[1], 1, 1)[1] == "zero"
    assert geometry.similarity(S[1], S[0], 1, 1)[1] == "zero_reference"


def test_numerical_rank_follows_the_recorded_precision():
    # the same values have rank 1 when read as float16 data and 2 as float64 data
    s = np.array([[1.0, 1e-5]])
    assert geometry.numerical_rank(s, (4, 6), np.finfo(np.float16).eps)[0][0] == 1
    assert geometry.numerical_rank(s, (4, 6), np.finfo(np.float64).eps)[0][0] == 2
    X = np.diag([1.0, 1e-5])[None].astype(np.float16)
    assert geometry.subspaces(X, "A").rank[0] == 1
    assert geometry.subspaces(X.astype(np.float64), "A").rank[0] == 2
