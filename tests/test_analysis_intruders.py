"""Intruder dimensions against the paper's definition computed the slow way (numpy SVD of the dense
fine-tuned weight), and the known answers: planted intruders appear exactly, ΔW = 0 gives none."""
from __future__ import annotations

import numpy as np
import pytest

from lorascope.analysis import intruders, lowrank
from lorascope.errors import UsageError


def _dense(W0: np.ndarray, P: np.ndarray, Q: np.ndarray, k: int, eps: float) -> dict[str, np.ndarray]:
    """The definition, on the out×in matrices: thin SVDs of W0 and W0 + P Q (as the paper's code)."""
    U0 = np.linalg.svd(W0, full_matrices=False)[0]
    U, S, _ = np.linalg.svd(W0 + P @ Q, full_matrices=False)
    sim = np.abs(np.einsum("tok,om->tkm", U[:, :, :k], U0)).max(axis=2)
    return {"similarity": sim, "sigma": S[:, :k], "count": (sim < eps).sum(axis=1), "worst_similarity": sim.min(axis=1)}


@pytest.mark.parametrize("shape", [(40, 25), (25, 40), (30, 30)])
def test_equal_the_dense_definition(shape):
    rng = np.random.default_rng(0)
    out_f, in_f = shape
    W0 = rng.normal(size=shape) / np.sqrt(in_f)
    A, B = rng.normal(size=(5, 3, in_f)), rng.normal(size=(5, out_f, 3))
    B[0] = 0.0
    B *= np.linspace(0, 1.5, 5)[:, None, None]  # growing: none at first, intruders later
    P, Q = lowrank.update_factors(A, B, 0.5)
    svd = intruders.pretrained_svd(W0)
    got = intruders.intruder_dimensions(svd, P, Q, k=6, epsilon=0.6)
    want = _dense(W0, P, Q, 6, 0.6)
    for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=1e-9, atol=1e-12, err_msg=key)
    assert got["count"][0] == 0 and got["count"][-1] > 0


@pytest.mark.parametrize("spectrum", ["decaying", "flat"])
def test_both_paths_of_a_large_weight_equal_the_dense_definition(spectrum, monkeypatch):
    """A decaying spectrum is solved on a small head of W0's directions (the secular equation);
    a flat one, as small encoders' attention weights have, by one eigendecomposition of the whole
    core: both give the definition's numbers."""
    rng = np.random.default_rng(1)
    out_f, in_f, q = 200, 160, 3
    U0 = np.linalg.qr(rng.normal(size=(out_f, in_f)))[0]
    V0 = np.linalg.qr(rng.normal(size=(in_f, in_f)))[0]
    S0 = 0.8 ** np.arange(in_f) if spectrum == "decaying" else 1.0 + 0.05 * rng.random(in_f)
    W0 = (U0 * S0) @ V0.T
    A, B = rng.normal(size=(4, q, in_f)) / np.sqrt(in_f), 0.01 * rng.normal(size=(4, out_f, q))
    P, Q = lowrank.update_factors(A, B, 1.0)
    whole = []
    monkeypatch.setattr(intruders, "_whole", lambda *a: whole.append(1) or _whole(*a))
    got = intruders.intruder_dimensions(intruders.pretrained_svd(W0), P, Q, k=6, epsilon=0.6)
    want = _dense(W0, P, Q, 6, 0.6)
    for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=1e-8, atol=1e-10, err_msg=key)
    assert bool(whole) == (spectrum == "flat")


_whole = intruders._whole


def test_planted_intruders_orthogonal_to_w0s_top_space_appear_exactly():
    # ΔW = U0_G H Σ Hᵀ V0_Gᵀ writes into a group G of 8 of W0's weak directions (σ ≈ 0.5), mixed by
    # an 8×8 Hadamard H: W_eff's block on G has singular vectors ≈ U0_G h_j (to ~0.07/80), whose
    # largest |cos| with W0's vectors is 1/√8 < 0.5. Three planted with σ = 100, 90, 80 lead the
    # spectrum: exactly 3 of the top 10 are intruders, the other 7 are W0's own top vectors (cos 1).
    # (G's values differ slightly: equal ones would leave W0's singular vectors there undefined.)
    rng = np.random.default_rng(1)
    n = 30
    U0 = np.linalg.qr(rng.normal(size=(n, n)))[0]
    V0 = np.linalg.qr(rng.normal(size=(n, n)))[0]
    S0 = np.r_[np.linspace(20, 11, 10), np.linspace(0.5, 0.43, 8), np.linspace(0.4, 0.1, n - 18)]
    W0 = (U0 * S0) @ V0.T
    H = np.array([[1.0]])
    for _ in range(3):
        H = np.block([[H, H], [H, -H]])
    H /= np.sqrt(8)
    G = slice(10, 18)
    P = np.zeros((2, n, 3))
    P[1] = U0[:, G] @ H[:, :3] * [100.0, 90.0, 80.0]  # distinct, so that each vector is unique
    Q = np.repeat((V0[:, G] @ H[:, :3]).T[None], 2, axis=0)
    got = intruders.intruder_dimensions(intruders.pretrained_svd(W0), P, Q)
    assert list(got["count"]) == [0, 3]
    np.testing.assert_allclose(got["similarity"][1, :3], 1 / np.sqrt(8), atol=2e-3)
    np.testing.assert_allclose(got["similarity"][1, 3:], 1.0, rtol=1e-12)
    assert got["worst_similarity"][1] == got["similarity"][1, :3].min()
    np.testing.assert_allclose(got["sigma"][1], np.r_[100, 90, 80, S0[:7]], atol=0.5)
    want = _dense(W0, P, Q, 10, 0.5)
    for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=1e-9, atol=1e-12, err_msg=key)
    np.testing.assert_allclose(got["similarity"][0], 1.0, rtol=1e-12)  # ΔW = 0: W0's own vectors
    np.testing.assert_allclose(got["sigma"][0], S0[:10], rtol=1e-12)


def test_zero_update_has_no_intruders_and_compensated_pissa_at_step_0_neither():
    rng = np.random.default_rng(2)
    W0 = rng.normal(size=(30, 20))
    U, S, Vt = np.linalg.svd(W0, full_matrices=False)
    A = np.repeat((np.sqrt(S[:4])[:, None] * Vt[:4])[None], 3, axis=0)
    B = np.repeat((U[:, :4] * np.sqrt(S[:4]))[None], 3, axis=0)
    A[1:] += 0.01 * rng.normal(size=A[1:].shape)
    P, Q = lowrank.update_factors(A, B, 1.0, compensated=True)
    got = intruders.intruder_dimensions(intruders.pretrained_svd(W0), P, Q)
    assert got["count"][0] == 0
    np.testing.assert_allclose(got["similarity"][0], 1.0, rtol=1e-12)
    np.testing.assert_allclose(got["sigma"][0], S[:10], rtol=1e-12)


def test_nonfinite_snapshot_is_named():
    rng = np.random.default_rng(3)
    W0 = rng.normal(size=(12, 10))
    P, Q = rng.normal(size=(3, 12, 2)), rng.normal(size=(3, 2, 10))
    P[1, 0, 0] = np.nan
    got = intruders.intruder_dimensions(intruders.pretrained_svd(W0), P, Q, k=4)
    assert list(got["status"]) == ["ok", "nonfinite", "ok"]
    assert np.isnan(got["similarity"][1]).all() and np.isnan(got["worst_similarity"][1]) and got["count"][1] == 0
    want = _dense(W0, P[[0, 2]], Q[[0, 2]], 4, 0.5)
    np.testing.assert_allclose(got["similarity"][[0, 2]], want["similarity"], rtol=1e-9)


def test_bad_arguments_are_usage_errors():
    svd = intruders.pretrained_svd(np.eye(4))
    P, Q = np.zeros((1, 4, 1)), np.zeros((1, 1, 4))
    with pytest.raises(UsageError, match="epsilon"):
        intruders.intruder_dimensions(svd, P, Q, epsilon=0.0)
    with pytest.raises(UsageError, match="do not match"):
        intruders.intruder_dimensions(svd, np.zeros((1, 5, 1)), Q)
    with pytest.raises(UsageError, match="finite"):
        intruders.pretrained_svd(np.full((3, 3), np.nan))
