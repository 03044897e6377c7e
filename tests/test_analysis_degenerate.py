"""Property tests on degenerate inputs (all zeros, constant, rank-deficient, NaN/Inf, one element,
huge and tiny values): every analysis function returns either a number that agrees with a careful
reference or a flag (NaN plus a status), never a silent wrong number."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lorascope.analysis import fits, spectra, stats

KINDS = ("zeros", "constant", "rank1", "nan", "inf", "huge", "tiny", "normal", "spike")


def _snapshot(kind: str, m: int, n: int, rng: np.random.Generator) -> np.ndarray:
    x = rng.normal(size=(m, n))
    if kind == "zeros":
        return np.zeros((m, n))
    if kind == "constant":
        return np.full((m, n), rng.choice([-3.5, 0.1, 7e5]))
    if kind == "rank1":
        return np.outer(rng.normal(size=m), rng.normal(size=n))
    if kind == "nan":
        x[rng.integers(m), rng.integers(n)] = np.nan
    if kind == "inf":
        x[rng.integers(m), rng.integers(n)] = rng.choice([np.inf, -np.inf])
    if kind == "huge":
        return x * 1e300
    if kind == "tiny":
        return x * 1e-300
    if kind == "spike":
        x[:] = 0.0
        x[rng.integers(m), rng.integers(n)] = 1.0
    return x


@st.composite
def stacks(draw, max_dim: int = 6):
    T = draw(st.integers(1, 4))
    m, n = draw(st.integers(1, max_dim)), draw(st.integers(1, max_dim))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    kinds = draw(st.lists(st.sampled_from(KINDS), min_size=T, max_size=T))
    return np.stack([_snapshot(k, m, n, rng) for k in kinds])


def _exact_moments(x: np.ndarray) -> tuple[float, float]:
    """Mean and population std by exact summation after a power-of-two rescale (which is exact)."""
    s = 2.0 ** math.ceil(math.log2(np.abs(x).max())) if np.abs(x).max() > 0 else 1.0
    y = (x / s).tolist()
    mean = math.fsum(y) / len(y)
    var = math.fsum((v - mean) ** 2 for v in y) / len(y)
    return mean * s, math.sqrt(var) * s


SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(stacks())
def test_moments_are_right_or_flagged(X):
    m = stats.moments(X)
    for t, x in enumerate(X.reshape(len(X), -1)):
        if not np.isfinite(x).all():
            assert m["status"][t] == "nonfinite" and m["nonfinite"][t] > 0
            assert np.isnan([m["mean"][t], m["std"][t], m["skew"][t], m["frobenius"][t]]).all()
            continue
        mean, std = _exact_moments(x)
        big = np.abs(x).max()
        assert m["mean"][t] == pytest.approx(mean, rel=1e-9, abs=1e-12 * big)
        assert m["std"][t] == pytest.approx(std, rel=1e-9, abs=1e-12 * big)
        assert m["min"][t] <= m["mean"][t] <= m["max"][t]
        assert np.isfinite(m["frobenius"][t])
        if x.min() == x.max():
            assert m["status"][t] in ("zero", "constant") and m["std"][t] == 0
            assert np.isnan(m["skew"][t]) and np.isnan(m["kurtosis"][t])
        else:
            # defined moments are finite; undefined ones (spread below rounding) are NaN, not noise
            assert np.isnan(m["skew"][t]) or abs(m["skew"][t]) <= math.sqrt(x.size) + 1e-9


@SETTINGS
@given(stacks())
def test_singular_values_are_right_or_flagged(X):
    s = spectra.singular_values(X)
    for t, x in enumerate(X):
        if not np.isfinite(x).all():
            assert np.isnan(s[t]).all()
            continue
        scale = np.abs(x).max() or 1.0
        ref = np.linalg.svd(x / scale, compute_uv=False) * scale
        np.testing.assert_allclose(s[t], ref, rtol=1e-7, atol=1e-9 * ref.max(initial=0.0))
    metrics = spectra.spectrum_metrics(s)
    er = metrics["effective_rank"]
    ok = np.isfinite(er)
    assert ((er[ok] >= 1 - 1e-12) & (er[ok] <= s.shape[1] + 1e-9)).all()
    zero_or_bad = ~np.isfinite(s).all(axis=1) | (np.nan_to_num(s).max(axis=1) == 0)
    np.testing.assert_array_equal(~ok, zero_or_bad)


@SETTINGS
@given(stacks(max_dim=5), st.floats(-4, 4).filter(lambda v: abs(v) > 1e-3))
def test_delta_w_spectrum_and_dynamics_are_right_or_flagged(X, scaling):
    A = X[:, :2, :]                          # (T, 2, n): rank 2 at most
    B = np.moveaxis(X, 1, 2)[:, :, :2]       # (T, n, 2)
    if A.shape[1] < 2 or B.shape[2] < 2:
        return
    s = spectra.delta_w_singular_values(A, B, scaling)
    d = stats.lowrank_dynamics(A, B, scaling)
    for t in range(len(X)):
        fin = np.isfinite(A[t]).all() and np.isfinite(B[t]).all()
        if not fin:
            assert np.isnan(s[t]).all() and np.isnan(d["frobenius"][t])
            continue
        sa, sb = np.abs(A[t]).max() or 1.0, np.abs(B[t]).max() or 1.0
        W = (B[t] / sb) @ (A[t] / sa)  # the product of the rescaled factors cannot overflow
        ref = np.linalg.svd(W, compute_uv=False)[:2] * abs(scaling) * sa * sb
        np.testing.assert_allclose(s[t], ref, rtol=1e-7, atol=1e-9 * ref.max(initial=0.0))
        assert d["frobenius"][t] == pytest.approx(np.linalg.norm(W) * abs(scaling) * sa * sb, rel=1e-9)


@SETTINGS
@given(stacks())
def test_fits_are_finite_or_named(X):
    r = fits.fit_snapshots(X, max_samples=None)
    for t, x in enumerate(X.reshape(len(X), -1)):
        if not np.isfinite(x).all():
            assert r.status[t] == "nonfinite"
        elif x.min() == x.max():
            assert r.status[t] == ("zero" if x.max() == 0 else "constant")
        elif x.size < fits.MIN_VALUES:
            assert r.status[t] == "too_few"
        if r.status[t] != "ok":
            assert r.best[t] == r.status[t]
            assert all(np.isnan(f["ks"][t]) for f in r.families.values())
            continue
        assert r.best[t] in fits.FAMILIES
        for name, f in r.families.items():
            assert 0.0 <= f["ks"][t] <= 1.0, name
            assert np.isfinite(f["scale"][t]) and f["scale"][t] > 0, name
            # a fitted likelihood is a number or -inf (a family that cannot produce the data)
            assert not np.isnan(f["loglik"][t]) and f["loglik"][t] < np.inf, name


@SETTINGS
@given(stacks())
def test_dynamics_are_right_or_flagged(X):
    d = stats.dynamics(X)
    flat = X.reshape(len(X), -1)
    fin = np.isfinite(flat).all(axis=1)
    for t in range(len(X)):
        if not (fin[t] and fin[0]):
            assert np.isnan(d["distance_from_first"][t])
        else:
            s = max(np.abs(flat[t]).max(), np.abs(flat[0]).max()) or 1.0
            ref = np.linalg.norm(flat[t] / s - flat[0] / s) * s
            assert d["distance_from_first"][t] == pytest.approx(ref, rel=1e-9, abs=1e-300)
    c = d["update_cosine"]
    assert (np.isnan(c) | ((c >= -1) & (c <= 1))).all()
