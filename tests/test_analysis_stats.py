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
    X, x = series
    m = stats.moments(X)
    np.testing.assert_allclose(m["mean"], x.mean(1), rtol=1e-12)
    np.testing.assert_allclose(m["std"], x.std(1), rtol=1e-12)
    np.testing.assert_allclose(m["skew"], ss.skew(x, axis=1), rtol=1e-10)
    np.testing.assert_allclose(m["kurtosis"], ss.kurtosis(x, axis=1), rtol=1e-10)
    np.testing.assert_allclose(m["q25"], np.quantile(x, 0.25, axis=1))
    np.testing.assert_allclose(m["frobenius"], np.linalg.norm(x, axis=1), rtol=1e-12)
    assert list(m["status"]) == ["ok"] * 7


def test_moments_chunked_equals_whole(series, monkeypatch):
    X, _ = series
    whole = stats.moments(X)
    monkeypatch.setattr("lorascope.analysis.stats.time_chunks",
                        lambda T, n, budget=0: (slice(i, min(T, i + 2)) for i in range(0, T, 2)))
    chunked = stats.moments(X)
    for k in ("mean", "skew", "q99", "frobenius"):
        np.testing.assert_allclose(chunked[k], whole[k])


def test_half_precision_is_upcast():
    X = np.linspace(-1, 1, 2 * 3 * 50, dtype=np.float16).reshape(2, 3, 50)
    m = stats.moments(X)
    np.testing.assert_allclose(m["std"], X.reshape(2, -1).astype(np.float64).std(1), rtol=1e-12)


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
