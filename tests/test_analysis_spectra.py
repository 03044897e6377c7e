"""Spectra against matrices built from chosen singular values and numpy's SVD."""
from __future__ import annotations

import numpy as np
import pytest

from lorascope.analysis import spectra
from lorascope.errors import UsageError


def with_singular_values(s, m, n, rng):
    """An m×n matrix whose singular values are exactly s."""
    U, _ = np.linalg.qr(rng.normal(size=(m, len(s))))
    V, _ = np.linalg.qr(rng.normal(size=(n, len(s))))
    return (U * s) @ V.T


def test_singular_values_recover_chosen_values():
    rng = np.random.default_rng(0)
    s = np.array([[5.0, 2.0, 1.0, 0.5], [3.0, 3.0, 1e-3, 1e-6]])  # the second is ill-conditioned
    X = np.stack([with_singular_values(row, 4, 60, rng) for row in s])
    np.testing.assert_allclose(spectra.singular_values(X), s, rtol=1e-8, atol=1e-13)
    np.testing.assert_allclose(spectra.singular_values(X.transpose(0, 2, 1)), s, rtol=1e-8, atol=1e-13)


def test_small_singular_values_fall_back_to_svd(monkeypatch):
    rng = np.random.default_rng(1)
    X = with_singular_values(np.array([1.0, 1e-7]), 2, 30, rng)[None]
    called = []
    real = np.linalg.svd
    monkeypatch.setattr(np.linalg, "svd", lambda *a, **k: called.append(1) or real(*a, **k))
    np.testing.assert_allclose(spectra.singular_values(X)[0], [1.0, 1e-7], rtol=1e-6)
    assert called  # the Gram route alone would lose 1e-7 under 1e-16·σ_max²


def test_huge_values_do_not_overflow():
    X = np.diag([3e200, 4e200])[None]
    np.testing.assert_allclose(spectra.singular_values(X), [[4e200, 3e200]])


def test_delta_w_qr_path_equals_svd_of_product():
    rng = np.random.default_rng(2)
    A, B = rng.normal(size=(5, 4, 50)).astype(np.float32), rng.normal(size=(5, 70, 4)).astype(np.float32)
    B[0] = 0.0
    W = 0.25 * B.astype(np.float64) @ A.astype(np.float64)
    want = np.linalg.svd(W, compute_uv=False)[:, :4]
    np.testing.assert_allclose(spectra.delta_w_singular_values(A, B, 0.25), want, rtol=1e-9, atol=1e-12)
    U, S, V = spectra.delta_w_svd(A, B, -0.25)
    np.testing.assert_allclose(U @ (S[..., None] * V.transpose(0, 2, 1)), -W, atol=1e-9)


def test_metrics_known_spectra():
    s = np.array([[1.0, 1.0, 1.0, 1.0], [2.0, 0.0, 0.0, 0.0], [3.0, 4.0, 0.0, 0.0]])
    np.testing.assert_allclose(spectra.effective_rank(s), [4.0, 1.0, np.exp(-(3 / 7) * np.log(3 / 7) - (4 / 7) * np.log(4 / 7))])
    np.testing.assert_allclose(spectra.stable_rank(s), [4.0, 1.0, 25 / 16])
    np.testing.assert_allclose(spectra.energy_share(s, 1), [0.25, 1.0, 16 / 25])
    np.testing.assert_allclose(spectra.condition_number(s), [1.0, np.inf, np.inf])


def test_zero_spectrum_is_undefined_not_zero():
    m = spectra.spectrum_metrics(np.zeros((1, 3)))
    assert m["spectral_norm"][0] == 0
    for k in ("effective_rank", "stable_rank", "energy_top1", "condition_number"):
        assert np.isnan(m[k][0]), k


def test_top1_energy_is_there_whatever_top_k():
    s = np.array([[3.0, 4.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    m = spectra.spectrum_metrics(s, top_k=3)
    np.testing.assert_allclose(m["energy_top1"], [16 / 25, 0.25])  # the spike check reads this one
    np.testing.assert_allclose(m["energy_top3"], [1.0, 0.75])
    assert [k for k in spectra.spectrum_metrics(s) if k.startswith("energy")] == ["energy_top1"]


def test_mismatched_pair_is_a_usage_error():
    with pytest.raises(UsageError, match="LoRA pair"):
        spectra.delta_w_singular_values(np.zeros((2, 3, 5)), np.zeros((2, 4, 2)), 1.0)


def _ill_conditioned_pair(rng):
    """Three snapshots of a rank-3 pair with known spectra: ΔW/scaling has singular values
    1, 1e-3, 1e-6 at t = 0 (through B) and t = 1 (through A), and 2, 1, 0.5 at t = 2. The
    spread beyond 1/GRAM_RELIABLE_RATIO sends t = 0, 1 to the fallbacks, and t = 2 not."""
    s = np.array([1.0, 1e-3, 1e-6])
    assert s[-1] / s[0] < spectra.GRAM_RELIABLE_RATIO

    def orth(m):
        return np.linalg.qr(rng.normal(size=(m, 3)))[0]
    A = np.stack([orth(40).T, (orth(40) * s).T, orth(40).T])
    B = np.stack([orth(30) * s, orth(30), orth(30) * [2.0, 1.0, 0.5]])
    return A, B, s


@pytest.mark.parametrize("route", ["spectra", "lowrank"])
def test_ill_conditioned_delta_w_takes_the_qr_core_and_factors_the_svd(monkeypatch, route):
    from lorascope.analysis import lowrank

    A, B, s = _ill_conditioned_pair(np.random.default_rng(5))
    cores, svds = [], []
    real_cores, real_svd = spectra.qr_cores, np.linalg.svd
    monkeypatch.setattr(spectra, "qr_cores", lambda a, b, mode: cores.append(len(a)) or real_cores(a, b, mode))
    monkeypatch.setattr(np.linalg, "svd", lambda x, *a, **k: svds.append(np.shape(x)) or real_svd(x, *a, **k))
    got = spectra.lora_singular_values(A, B, -0.5) if route == "spectra" else lowrank.lora_series(A, B, -0.5)[0]
    monkeypatch.setattr(np.linalg, "svd", real_svd)
    assert cores == [2]  # the two ill-conditioned snapshots, once, and not the third
    # A's and B's SVD fallback, each for its one ill-conditioned snapshot (t = 1 and t = 0)
    assert (1, 3, 40) in svds and (1, 30, 3) in svds, svds
    W = -0.5 * B @ A
    want = real_svd(W, compute_uv=False)[:, :3]
    np.testing.assert_allclose(want[:2], 0.5 * np.stack([s, s]), rtol=1e-9)  # the reference itself
    # the Gram route alone is off by ~3e-6 relative at 1e-6: 1e-9 needs the QR core
    np.testing.assert_allclose(got["dW"], want, rtol=1e-9, atol=0)
    np.testing.assert_allclose(got["A"], real_svd(A, compute_uv=False), rtol=1e-12)
    np.testing.assert_allclose(got["B"], real_svd(B, compute_uv=False), rtol=1e-12)
    np.testing.assert_allclose(got["A"][1], s, rtol=1e-12)
    np.testing.assert_allclose(got["B"][0], s, rtol=1e-12)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
@pytest.mark.parametrize("where", ["A", "B"])
def test_one_factors_nonfinite_entry_blanks_only_that_factor_and_dw(bad, where):
    # issue 12, item 1: a NaN in A used to blank B's spectrum at that step (and an Inf in B A's)
    rng = np.random.default_rng(9)
    A, B = rng.normal(size=(4, 3, 20)), rng.normal(size=(4, 25, 3))
    (A if where == "A" else B)[2, 1, 1] = bad
    got = spectra.lora_singular_values(A, B, 0.5)
    other = "B" if where == "A" else "A"
    np.testing.assert_allclose(got[other], np.linalg.svd({"A": A, "B": B}[other], compute_uv=False), rtol=1e-12)
    assert np.isnan(got[where][2]).all() and np.isnan(got["dW"][2]).all()
    fine = [0, 1, 3]
    np.testing.assert_allclose(got[where][fine], np.linalg.svd({"A": A, "B": B}[where][fine], compute_uv=False),
                               rtol=1e-12)
    np.testing.assert_allclose(got["dW"][fine], np.linalg.svd(0.5 * B[fine] @ A[fine], compute_uv=False)[:, :3],
                               rtol=1e-10)
