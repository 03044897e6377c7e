"""Batched statistics against scipy/numpy computed one snapshot at a time."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as ss

from lorascope.analysis import stats
from lorascope.errors import UsageError


@pytest.fixture
def series():
    rng = np.random.default_rng(0)
    X = rng.standard_t(5, size=(7, 6, 40)).astype(np.float32)
    return X, X.reshape(7, -1).astype(np.float64)


def test_moments_match_scipy(series):
    # float64 input is worked on in float64: agreement to rounding
    _, x = series
    m = stats.moments(x.reshape(7, 6, 40))
    np.testing.assert_allclose(m["mean"], x.mean(1), rtol=1e-12)
    np.testing.assert_allclose(m["std"], x.std(1), rtol=1e-12)
    np.testing.assert_allclose(m["skew"], ss.skew(x, axis=1), rtol=1e-10)
    np.testing.assert_allclose(m["kurtosis"], ss.kurtosis(x, axis=1), rtol=1e-10)
    np.testing.assert_allclose(m["q25"], np.quantile(x, 0.25, axis=1))
    np.testing.assert_allclose(m["frobenius"], np.linalg.norm(x, axis=1), rtol=1e-12)
    assert list(m["status"]) == ["ok"] * 7
    assert (m["quantile_n"] == 240).all()


def test_float32_moments_within_1e6_of_float64(series):
    # float32 input is worked on in float32 with float64 sums (the fast path for recordings)
    X, x = series
    m = stats.moments(X)
    sd = x.std(1)
    np.testing.assert_allclose(m["mean"], x.mean(1), rtol=0, atol=1e-6 * sd.max())  # a mean near 0: on std's scale
    np.testing.assert_allclose(m["std"], sd, rtol=1e-6)
    np.testing.assert_allclose(m["skew"], ss.skew(x, axis=1), rtol=0, atol=1e-5)
    np.testing.assert_allclose(m["kurtosis"], ss.kurtosis(x, axis=1), rtol=0, atol=1e-5)
    np.testing.assert_allclose(m["frobenius"], np.linalg.norm(x, axis=1), rtol=1e-6)
    np.testing.assert_array_equal(m["q25"], np.quantile(x, 0.25, axis=1))  # exact by default


def test_float32_moments_of_an_offset_series_keep_their_digits():
    # a mean 1000x the spread: the shift by the mean keeps the deviations exact in float32
    rng = np.random.default_rng(3)
    X = (1.0 + 1e-3 * rng.standard_normal((3, 64, 512))).astype(np.float32)
    x = X.reshape(3, -1).astype(np.float64)
    m = stats.moments(X, quantiles=())
    np.testing.assert_allclose(m["std"], x.std(1), rtol=1e-6)
    np.testing.assert_allclose(m["kurtosis"], ss.kurtosis(x, axis=1), atol=1e-4)
    assert "quantile_n" not in m


def test_subsampled_quantiles_are_close_to_exact():
    # 4096 of 49152 entries: a quantile's rank error is ~sqrt(q(1-q)/n) <= 0.008, so within 0.03
    # in rank (4 standard errors) and, for these normal values, within 0.08 std in value
    rng = np.random.default_rng(4)
    X = rng.standard_normal((5, 3072, 16)).astype(np.float32)
    x = X.reshape(5, -1).astype(np.float64)
    m = stats.moments(X, quantile_samples=4096)
    assert (m["quantile_n"] == 4096).all()
    for q in (0.01, 0.25, 0.5, 0.75, 0.99):
        got = m[f"q{100 * q:g}"]
        rank = (x <= got[:, None]).mean(axis=1)
        assert np.abs(rank - q).max() < 0.03, q
        assert np.abs(got - np.quantile(x, q, axis=1)).max() < 0.08, q
    # the same entries at every step: a series that does not change keeps its quantiles
    same = stats.moments(np.repeat(X[:1], 3, axis=0), quantile_samples=4096)
    assert np.ptp(same["q50"]) == 0


def test_moments_chunked_equals_whole(series, monkeypatch):
    _, x = series
    X = x.reshape(7, 6, 40)  # float64: BLAS may sum float32 rows in a different order per chunk size
    whole = stats.moments(X)
    monkeypatch.setattr("lorascope.analysis.stats.time_chunks",
                        lambda T, n, budget=0: (slice(i, min(T, i + 2)) for i in range(0, T, 2)))
    chunked = stats.moments(X)
    for k in ("mean", "skew", "q99", "frobenius"):
        np.testing.assert_allclose(chunked[k], whole[k])


def test_half_precision_is_upcast():
    X = np.linspace(-1, 1, 2 * 3 * 50, dtype=np.float16).reshape(2, 3, 50)
    m = stats.moments(X)
    # upcast to float32 (not float64): agreement to float32 rounding
    np.testing.assert_allclose(m["std"], X.reshape(2, -1).astype(np.float64).std(1), rtol=1e-6)


def test_dynamics_known_path():
    # X_t = t·D for t < 3, then turns by 90°: distances, steps and cosines are known exactly.
    D, E = np.zeros((2, 2)), np.zeros((2, 2))
    D[0, 0], E[1, 1] = 3.0, 4.0
    X = np.stack([0 * D, D, 2 * D, 2 * D + E])
    d = stats.dynamics(X)
    np.testing.assert_allclose(d["distance_from_first"], [0, 3, 6, np.sqrt(36 + 16)])
    np.testing.assert_allclose(d["update_size"][1:], [3, 3, 4])
    assert np.isnan(d["update_size"][0])
    np.testing.assert_allclose(d["update_cosine"][2:], [1.0, 0.0], atol=1e-15)


def test_dynamics_zero_update_has_no_angle():
    X = np.stack([np.zeros((2, 2)), np.ones((2, 2)), np.ones((2, 2))])
    assert np.isnan(stats.dynamics(X)["update_cosine"][2])


def test_lowrank_dynamics_equals_dense_product():
    rng = np.random.default_rng(1)
    A, B = rng.normal(size=(6, 3, 17)), rng.normal(size=(6, 11, 3))
    B[0] = 0.0
    W = 0.5 * B @ A
    lo, dense = stats.lowrank_dynamics(A, B, 0.5), stats.dynamics(W)
    for k in ("distance_from_first", "update_size", "update_cosine"):
        np.testing.assert_allclose(lo[k], dense[k], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(lo["frobenius"], np.linalg.norm(W, axis=(1, 2)), rtol=1e-12)
    np.testing.assert_allclose(lo["mean"], W.mean(axis=(1, 2)), atol=1e-15)


def test_histograms_match_numpy_on_shared_edges(series):
    X, x = series
    other = X * 2.0
    edges = stats.shared_edges([stats.value_range(X), stats.value_range(other)], bins=16)
    for S in (X, other):
        h = stats.histogram_counts(S, edges)
        for t in range(len(S)):
            np.testing.assert_array_equal(h.counts[t], np.histogram(S[t], edges)[0])
        assert (h.outside == 0).all()


def test_histograms_count_what_falls_outside():
    X = np.array([[[0.0, 0.5, 1.0, 2.0, np.nan]]])
    h = stats.histogram_counts(X, np.array([0.0, 0.5, 1.0]))
    assert h.counts.tolist() == [[1, 2]] and h.outside.tolist() == [2]


def test_bad_input_is_a_usage_error():
    with pytest.raises(UsageError, match="stack"):
        stats.moments(np.zeros(5))
    with pytest.raises(UsageError, match="bins"):
        stats.shared_edges([(0, 1)], bins=0)
    with pytest.raises(UsageError, match="no finite"):
        stats.shared_edges([None])
