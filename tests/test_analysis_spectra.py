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
