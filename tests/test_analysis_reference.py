"""A second implementation of the analysis kernels, the slow obvious way: every metric computed
snapshot by snapshot with numpy/scipy on the dense matrices (ΔW formed out×in) of a small random
recording whose steps include the cases that break fast paths — B = 0 at init, a NaN in A, an Inf
in B, a rank-1 B, an A of all zeros — and compared with the batched kernels, to 1e-6 relative
(1e-5 for float32 moments; float64 recordings to 1e-9). The rule both follow for non-finite
input: a number that needs a snapshot holding NaN/Inf is NaN; the other factor's own numbers are
not touched. The kernels of the geometry the papers measure have their dense references in
test_analysis_intruders.py, test_analysis_pretrained.py and test_analysis_asymmetry.py, the
fits theirs against scipy in test_analysis_fits.py and test_analysis_mle.py."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as ss

from lorascope.analysis import geometry, lowrank, spectra, stats

T, R, IN, OUT, S = 8, 3, 20, 16, 0.75
NAN_A, INF_B, RANK1_B, ZERO_A = 3, 4, 5, 6


def _recording(dtype, compensated: bool):
    rng = np.random.default_rng(12)
    A = np.cumsum(np.concatenate([rng.uniform(-0.2, 0.2, (1, R, IN)), 0.01 * rng.normal(size=(T - 1, R, IN))]), 0)
    B = np.cumsum(np.concatenate([0.3 * rng.normal(size=(1, OUT, R)) if compensated else np.zeros((1, OUT, R)),
                                  0.01 * rng.normal(size=(T - 1, OUT, R))]), 0)
    A[NAN_A, 1, 2] = np.nan
    B[INF_B, 0, 1] = np.inf
    B[RANK1_B] = np.outer(rng.normal(size=OUT), rng.normal(size=R))
    A[ZERO_A] = 0.0
    return A.astype(dtype), B.astype(dtype)


def _finite(X: np.ndarray) -> np.ndarray:
    return np.isfinite(X).all(axis=(1, 2))


def _dense_dynamics(W: np.ndarray, ok: np.ndarray) -> dict[str, np.ndarray]:
    """distance from the first snapshot, update size and cosine of consecutive updates, NaN
    wherever a snapshot involved is not finite (or an update is zero, for the cosine)."""
    flat = np.where(ok[:, None], W.reshape(len(W), -1), np.nan)
    upd = np.diff(flat, axis=0)
    n = np.linalg.norm(upd, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = np.einsum("ij,ij->i", upd[1:], upd[:-1]) / (n[1:] * n[:-1])
    cos = np.where((n[1:] > 0) & (n[:-1] > 0), cos, np.nan)
    return {"distance_from_first": np.linalg.norm(flat - flat[0], axis=1), "update_size": np.r_[np.nan, n],
            "update_cosine": np.r_[np.nan, np.nan, cos]}


def _tol(dtype) -> float:
    return 1e-9 if dtype == np.float64 else 1e-6


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_moments_and_dynamics_of_a_and_b(dtype):
    A, B = _recording(dtype, compensated=False)
    for X in (A, B):
        x64 = X.astype(np.float64)
        ok = _finite(X)
        flat = x64.reshape(T, -1)
        got = stats.moments(X, quantile_samples=None)
        rtol = 1e-9 if dtype == np.float64 else 1e-5
        with np.errstate(invalid="ignore"):
            want = {"mean": flat.mean(1), "std": flat.std(1), "min": flat.min(1), "max": flat.max(1),
                    "skew": ss.skew(flat, axis=1), "kurtosis": ss.kurtosis(flat, axis=1),
                    "q5": np.quantile(flat, 0.05, axis=1), "frobenius": np.linalg.norm(flat, axis=1)}
        constant = flat.min(1) == flat.max(1)
        for k, v in want.items():
            v = np.where(ok, v, np.nan)
            if k in ("skew", "kurtosis"):
                v = np.where(constant, np.nan, v)  # undefined for a constant matrix, not 0/0 noise
            scale = np.nanmax(np.abs(flat[ok]))
            np.testing.assert_allclose(got[k], v, rtol=rtol, atol=rtol * scale if k == "mean" else 0, err_msg=k)
        assert list(got["status"][~ok]) == ["nonfinite"] * (~ok).sum()
        dyn = stats.dynamics(X)
        want = _dense_dynamics(x64, ok)
        for k in want:
            np.testing.assert_allclose(dyn[k], want[k], rtol=_tol(dtype), atol=1e-12, err_msg=k)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("compensated", [False, True])
def test_lora_matrices_against_the_dense_update(dtype, compensated):
    A, B = _recording(dtype, compensated)
    a, b = A.astype(np.float64), B.astype(np.float64)
    ok_a, ok_b = _finite(A), _finite(B)
    ok = ok_a & ok_b
    got = lowrank.lora_matrices(A, B, S, compensated=compensated)
    with np.errstate(invalid="ignore"):
        BA = S * b @ a
        dW = BA - BA[0] if compensated else BA
    tol = _tol(dtype)
    for name, X, fine in (("A", a, ok_a), ("B", b, ok_b)):
        want = np.full((T, R), np.nan)
        want[fine] = np.linalg.svd(X[fine], compute_uv=False)
        top = np.nanmax(want)
        np.testing.assert_allclose(got[name]["singular_values"], want, rtol=tol, atol=tol * top, err_msg=name)
    for name, W in (("dW", dW), ("BA", BA)) if compensated else (("dW", dW),):
        k = got[name]["singular_values"].shape[1]
        assert k == (2 * R if name == "dW" and compensated else R)
        want = np.full((T, k), np.nan)
        want[ok] = np.linalg.svd(W[ok], compute_uv=False)[:, :k]
        top = np.nanmax(want)
        np.testing.assert_allclose(got[name]["singular_values"], want, rtol=tol, atol=tol * top, err_msg=name)
        flat = np.where(ok[:, None], W.reshape(T, -1), np.nan)
        np.testing.assert_allclose(got[name]["frobenius"], np.linalg.norm(flat, axis=1), rtol=tol, err_msg=name)
        np.testing.assert_allclose(got[name]["mean"], flat.mean(1), rtol=tol, atol=tol * np.nanmax(np.abs(flat)) / 10,
                                   err_msg=name)
        want = _dense_dynamics(W, ok)
        for key in want:
            np.testing.assert_allclose(got[name][key], want[key], rtol=10 * tol, atol=1e-12, err_msg=f"{name} {key}")
    if compensated:
        assert np.all(got["dW"]["singular_values"][0] == 0) and got["dW"]["frobenius"][0] == 0


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_spectrum_metrics_against_dense_svd(dtype):
    A, B = _recording(dtype, compensated=False)
    sv = lowrank.lora_matrices(A, B, S)["B"]["singular_values"]
    got = spectra.spectrum_metrics(sv, top_k=2)
    for t in range(T):
        if not _finite(B[t:t + 1])[0]:
            assert np.isnan([got[k][t] for k in got]).all()
            continue
        s = np.linalg.svd(B[t].astype(np.float64), compute_uv=False)
        if not s.any():  # B = 0: no spectrum to summarise
            assert np.isnan([got[k][t] for k in ("effective_rank", "stable_rank", "energy_top1")]).all()
            continue
        p = s / s.sum()
        p = p[p > 0]
        want = {"spectral_norm": s[0], "sigma_min": s[-1], "effective_rank": np.exp(-(p * np.log(p)).sum()),
                "stable_rank": (s**2).sum() / s[0] ** 2, "energy_top1": s[0] ** 2 / (s**2).sum(),
                "energy_top2": (s[:2] ** 2).sum() / (s**2).sum()}
        for k, v in want.items():
            assert got[k][t] == pytest.approx(v, rel=1e-5 if k == "sigma_min" and t == RANK1_B else _tol(dtype),
                                              abs=_tol(dtype) * s[0] if k == "sigma_min" else 0), (k, t)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_subspace_similarity_against_dense_bases(dtype):
    A, B = _recording(dtype, compensated=False)
    fine = _finite(B) & B.any(axis=(1, 2))
    Bf = B[fine]
    S_ = geometry.subspaces(Bf, "B")
    U = np.linalg.svd(Bf.astype(np.float64))[0]
    s = np.linalg.svd(Bf.astype(np.float64), compute_uv=False)
    rank = (s > max(OUT, R) * np.finfo(dtype).eps * s[:, :1]).sum(axis=1)
    np.testing.assert_array_equal(S_.rank, rank)
    assert rank[list(np.flatnonzero(fine)).index(RANK1_B)] == 1
    for i in (1, R):
        phi, status = geometry.similarity(S_, S_[-1], i, i)
        want = (np.einsum("tdi,dj->tij", U[:, :, :i], U[-1][:, :i]) ** 2).sum(axis=(1, 2)) / i
        want = np.where((rank >= i) & (rank[-1] >= i), want, np.nan)
        np.testing.assert_allclose(phi, want, rtol=_tol(dtype), atol=1e-12)
        assert list(status == "ok") == list((rank >= i) & (rank[-1] >= i))


def test_histograms_against_numpy():
    A, _ = _recording(np.float32, compensated=False)
    edges = stats.shared_edges([stats.value_range(A)], 16)
    got = stats.histogram_counts(A, edges)
    for t in range(T):
        x = A[t].ravel()
        want, _ = np.histogram(x[np.isfinite(x)], bins=edges)
        np.testing.assert_array_equal(got.counts[t], want)
        assert got.outside[t] == (~np.isfinite(x)).sum()
