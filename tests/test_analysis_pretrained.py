"""ΔW against the pretrained weight: the LoRA paper's amplification and DoRA's magnitude/direction,
each against the dense out×in computation, with zero, rank-deficient and non-finite updates."""
from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from lorascope.analysis import lowrank, pretrained
from lorascope.errors import UsageError


def _series(rng, T=5, out_f=30, in_f=20, r=4):
    W0 = rng.normal(size=(out_f, in_f))
    A = rng.normal(size=(T, r, in_f)) / np.sqrt(in_f)
    B = 0.1 * rng.normal(size=(T, out_f, r)) * np.arange(T)[:, None, None]
    return W0, A, B


def test_amplification_equals_the_dense_svd_of_the_update():
    rng = np.random.default_rng(0)
    W0, A, B = _series(rng)
    P, Q = lowrank.update_factors(A, B, 0.5)
    got = pretrained.amplification(W0, P, Q, k=4)
    dW = P @ Q
    U, _, Vt = np.linalg.svd(dW[1:])
    proj = np.linalg.norm(U[:, :, :4].transpose(0, 2, 1) @ W0 @ Vt[:, :4].transpose(0, 2, 1), axis=(1, 2))
    frob = np.linalg.norm(dW, axis=(1, 2))
    np.testing.assert_allclose(got["projection"][1:], proj, rtol=1e-10)
    np.testing.assert_allclose(got["frobenius"], frob, rtol=1e-12)
    np.testing.assert_allclose(got["amplification"][1:], frob[1:] / proj, rtol=1e-10)
    base = 4 * np.linalg.norm(W0) / np.sqrt(30 * 20)
    np.testing.assert_allclose(got["random_projection"], base, rtol=1e-12)
    np.testing.assert_allclose(got["random_amplification"][1:], frob[1:] / base, rtol=1e-12)
    assert list(got["status"]) == ["zero"] + ["ok"] * 4
    assert np.isnan(got["projection"][0]) and np.isnan(got["amplification"][0])  # ΔW = 0: no directions


def test_random_baseline_is_the_mean_square_of_random_directions():
    rng = np.random.default_rng(1)
    W0 = rng.normal(size=(40, 25)) * np.linspace(3, 0.1, 25)
    U = np.linalg.qr(rng.normal(size=(4000, 40, 3)))[0]
    V = np.linalg.qr(rng.normal(size=(4000, 25, 3)))[0]
    ms = (np.linalg.norm(U.transpose(0, 2, 1) @ W0 @ V, axis=(1, 2)) ** 2).mean()
    assert pretrained.random_projection(W0, 3) == pytest.approx(np.sqrt(ms), rel=0.03)


def test_amplification_of_a_compensated_update_and_its_rank():
    # PiSSA: at step 0 ΔW = 0 (status zero); a rank-1 update asked for k = 2 is rank_deficient
    rng = np.random.default_rng(2)
    W0 = rng.normal(size=(12, 10))
    U, S, Vt = np.linalg.svd(W0, full_matrices=False)
    A = np.repeat((np.sqrt(S[:2])[:, None] * Vt[:2])[None], 3, axis=0)
    B = np.repeat((U[:, :2] * np.sqrt(S[:2]))[None], 3, axis=0)
    B[1, :, 0] += 0.01 * rng.normal(size=12)   # ΔW = (B_1 − B_0) A_0: rank 1
    B[2] += 0.01 * rng.normal(size=(12, 2))    # rank 2
    P, Q = lowrank.update_factors(A, B, 1.0, compensated=True)
    got = pretrained.amplification(W0, P, Q, k=2)
    assert list(got["status"]) == ["zero", "rank_deficient", "ok"]
    dW = B[2] @ A[2] - B[0] @ A[0]
    u, _, vt = np.linalg.svd(dW)
    np.testing.assert_allclose(got["projection"][2], np.linalg.norm(u[:, :2].T @ W0 @ vt[:2].T), rtol=1e-9)
    got1 = pretrained.amplification(W0, P, Q, k=1)
    assert list(got1["status"]) == ["zero", "ok", "ok"]


def _dense_dora(W0, P, Q):
    W = W0 + P @ Q
    n0, n1 = np.linalg.norm(W0, axis=1), np.linalg.norm(W, axis=2)
    return np.abs(n1 - n0).mean(axis=1), (1 - (W * W0).sum(axis=2) / (n0 * n1)).mean(axis=1)


def test_magnitude_direction_equals_dense_rows():
    rng = np.random.default_rng(3)
    W0, A, B = _series(rng)
    P, Q = lowrank.update_factors(A, B, 0.3)
    got = pretrained.magnitude_direction(W0, P, Q)
    dm, dd = _dense_dora(W0, P, Q)
    np.testing.assert_allclose(got["magnitude_change"], dm, rtol=1e-10, atol=1e-15)
    np.testing.assert_allclose(got["direction_change"], dd, rtol=1e-6, atol=1e-15)
    assert got["magnitude_change"][0] == 0 and got["direction_change"][0] == 0


def test_direction_change_of_a_tiny_step_keeps_its_digits():
    # 1 − cos of a 1e-7 relative change is ~1e-15, where 1 − dot/(|a||b|) in floats is rounding noise.
    # Reference: the dense rows a = W0_o, b = (W0 + ΔW)_o, with 1 − cos = (|a|²|b|² − dot²) /
    # (|a||b|(|a||b| + dot)) and the numerator exact in rational arithmetic
    rng = np.random.default_rng(4)
    W0 = rng.normal(size=(6, 5))
    P, Q = 1e-7 * rng.normal(size=(1, 6, 2)), rng.normal(size=(1, 2, 5))
    got = pretrained.magnitude_direction(W0, P, Q)["direction_change"][0]
    Wd = W0 + P[0] @ Q[0]
    want = []
    for a, b in zip(W0, Wd):
        fa, fb = [Fraction(float(v)) for v in a], [Fraction(float(v)) for v in b]
        aa, bb, ab = sum(x * x for x in fa), sum(x * x for x in fb), sum(x * y for x, y in zip(fa, fb))
        nab = np.sqrt(float(aa)) * np.sqrt(float(bb))
        want.append(float(aa * bb - ab * ab) / (nab * (nab + float(ab))))
    assert 0 < got == pytest.approx(np.mean(want), rel=1e-6)


def test_zero_rows_of_w0_and_nonfinite_updates():
    rng = np.random.default_rng(5)
    W0 = rng.normal(size=(8, 6))
    W0[2] = 0.0
    P, Q = rng.normal(size=(3, 8, 2)), rng.normal(size=(3, 2, 6))
    Q[1, 0, 0] = np.inf
    got = pretrained.magnitude_direction(W0, P, Q)
    assert np.isnan(got["magnitude_change"][1]) and np.isnan(got["direction_change"][1])
    with np.errstate(invalid="ignore"):  # the Inf step: its dense numbers are not compared
        W = W0 + P @ Q
        n0, n1 = np.linalg.norm(W0, axis=1), np.linalg.norm(W, axis=2)
        keep = np.arange(8) != 2
        dd = (1 - (W * W0).sum(axis=2)[:, keep] / (n0[keep] * n1[:, keep])).mean(axis=1)
    np.testing.assert_allclose(got["direction_change"][[0, 2]], dd[[0, 2]], rtol=1e-9)
    np.testing.assert_allclose(got["magnitude_change"][[0, 2]], np.abs(n1 - n0).mean(axis=1)[[0, 2]], rtol=1e-12)
    amp = pretrained.amplification(W0, P, Q, 2)
    assert amp["status"][1] == "nonfinite" and np.isnan(amp["frobenius"][1])


def test_correlation_is_pearsons_over_the_moving_steps():
    x = np.array([0.0, 1.0, 2.0, 3.5, np.nan, 5.0])
    y = np.array([0.0, 0.3, 0.2, 0.9, 1.0, 1.1])
    keep = [1, 2, 3, 5]
    assert pretrained.correlation(x, y) == pytest.approx(np.corrcoef(x[keep], y[keep])[0, 1], rel=1e-12)
    assert np.isnan(pretrained.correlation([0.0, 1.0, 2.0], [0.0, 1.0, 3.0]))  # two moving steps
    assert np.isnan(pretrained.correlation([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]))


def test_mismatched_shapes_are_usage_errors():
    with pytest.raises(UsageError, match="do not fit"):
        pretrained.magnitude_direction(np.ones((4, 3)), np.ones((1, 5, 1)), np.ones((1, 1, 3)))
    with pytest.raises(UsageError, match="directions k"):
        pretrained.amplification(np.ones((4, 3)), np.ones((1, 4, 1)), np.ones((1, 1, 3)), k=2)


@pytest.mark.parametrize("norm", ["row", "column"])
def test_magnitude_direction_of_a_dora_recording_against_dense(norm):
    # DoRA: W_eff = m ⊙ V/‖V‖ with V = W0 + s·B·A and the norm over rows (one m per output) or
    # columns; ΔM from the recorded m, ΔD from V's direction (m < 0 turns a row around)
    rng = np.random.default_rng(6)
    W0, A, B = _series(rng, T=4)
    P, Q = lowrank.update_factors(A, B, 0.5)
    V = W0 + P @ Q
    axis = 1 if norm == "row" else 0
    n0 = np.linalg.norm(W0, axis=axis)
    m = n0 * (1 + 0.1 * rng.normal(size=(4, len(n0))))
    m[2, 0] = -m[2, 0]
    Weff = m[:, :, None] * V / np.linalg.norm(V, axis=axis + 1, keepdims=True) if norm == "row" else \
        m[:, None, :] * V / np.linalg.norm(V, axis=1, keepdims=True)
    got = pretrained.magnitude_direction(W0, P, Q, magnitude=m, norm=norm)
    n1 = np.linalg.norm(Weff, axis=axis + 1)
    cos = (Weff * W0).sum(axis=axis + 1) / (n0 * n1)
    np.testing.assert_allclose(got["magnitude_change"], np.abs(n1 - n0).mean(axis=1), rtol=1e-10)
    np.testing.assert_allclose(got["direction_change"], (1 - cos).mean(axis=1), rtol=1e-8, atol=1e-15)
    with pytest.raises(UsageError, match="magnitude"):
        pretrained.magnitude_direction(W0, P, Q, magnitude=m[:, :3], norm=norm)
