"""The one-pass LoRA kernel (`lowrank.lora_series`) against the dense out×in product and against
the two functions it replaces, including across chunk boundaries (carried products)."""
from __future__ import annotations

import numpy as np
import pytest

from lorascope.analysis import lowrank, spectra, stats


def _walk(T: int, shape: tuple[int, int], rng, start: float, step: float, dtype=np.float64) -> np.ndarray:
    X = step * rng.standard_normal((T, *shape))
    X[0] = start * rng.standard_normal(shape)
    return np.cumsum(X, axis=0).astype(dtype)


def _pair(T: int, rng, b0: float = 0.0, dtype=np.float64, r: int = 4, n_out: int = 30, n_in: int = 40):
    return _walk(T, (r, n_in), rng, 0.1, 1e-3, dtype), _walk(T, (n_out, r), rng, b0, 1e-3, dtype)


def _dense(W: np.ndarray) -> dict[str, np.ndarray]:
    flat = W.reshape(len(W), -1)
    upd = np.diff(flat, axis=0)
    n = np.linalg.norm(upd, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = np.einsum("ij,ij->i", upd[1:], upd[:-1]) / (n[1:] * n[:-1])
    return {"frobenius": np.linalg.norm(flat, axis=1), "mean": flat.mean(axis=1),
            "distance_from_first": np.linalg.norm(flat - flat[0], axis=1),
            "update_size": np.r_[np.nan, n], "update_cosine": np.r_[np.nan, np.nan, cos]}


@pytest.mark.parametrize("per_chunk", [1, 2, 3, 1000])
@pytest.mark.parametrize("b0", [0.0, 0.05])
def test_matches_the_dense_product_across_chunk_boundaries(monkeypatch, per_chunk, b0):
    rng = np.random.default_rng(1)
    A, B = _pair(11, rng, b0)
    r, n_in, n_out = A.shape[1], A.shape[2], B.shape[1]
    monkeypatch.setattr(lowrank, "CACHE_VALUES", per_chunk * r * (n_in + n_out))
    sv, dyn = lowrank.lora_series(A, B, -0.5)
    W = -0.5 * B @ A
    want = _dense(W)
    for k in want:
        np.testing.assert_allclose(dyn[k], want[k], rtol=1e-9, atol=1e-13, err_msg=k)
    np.testing.assert_allclose(sv["dW"], np.linalg.svd(W, compute_uv=False)[:, :r], rtol=1e-9, atol=1e-13)
    np.testing.assert_allclose(sv["A"], np.linalg.svd(A, compute_uv=False), rtol=1e-9)
    nz = B.any(axis=(1, 2))
    np.testing.assert_allclose(sv["B"][nz], np.linalg.svd(B[nz], compute_uv=False), rtol=1e-9)
    assert np.all(sv["B"][~nz] == 0)


@pytest.mark.parametrize("b0", [0.0, 0.05])
def test_float32_equals_the_separate_functions(monkeypatch, b0):
    rng = np.random.default_rng(2)
    A, B = _pair(9, rng, b0, np.float32)
    monkeypatch.setattr(lowrank, "CACHE_VALUES", 2 * A.shape[1] * (A.shape[2] + B.shape[1]))
    sv, dyn = lowrank.lora_series(A, B, 2.0)
    sv0, dyn0 = spectra.lora_singular_values(A, B, 2.0), stats.lowrank_dynamics(A, B, 2.0)
    for k in sv0:
        np.testing.assert_allclose(sv[k], sv0[k], rtol=1e-6, atol=1e-12, err_msg=k)
    for k in dyn0:
        np.testing.assert_allclose(dyn[k], dyn0[k], rtol=2e-5, atol=1e-6, err_msg=k)


def test_rank_deficient_a_takes_the_eigendecomposition_path():
    # two equal rows make A Aᵀ singular: Cholesky fails and B's eigendecomposition gives the core
    rng = np.random.default_rng(3)
    A, B = _pair(5, rng, 0.05)
    A[:, 1] = A[:, 0]
    sv, _ = lowrank.lora_series(A, B, 1.0)
    want = np.linalg.svd(B @ A, compute_uv=False)[:, :A.shape[1]]
    np.testing.assert_allclose(sv["dW"], want, rtol=1e-6, atol=1e-10 * want.max())


def test_nonfinite_and_wide_rank_fall_back_to_the_separate_functions():
    rng = np.random.default_rng(4)
    A, B = _pair(6, rng, 0.05)
    A[3, 0, 0] = np.nan
    sv, dyn = lowrank.lora_series(A, B, 1.0)
    assert np.isnan(sv["dW"][3]).all() and np.isnan(dyn["frobenius"][3])
    np.testing.assert_allclose(dyn["frobenius"][:3], np.linalg.norm(B[:3] @ A[:3], axis=(1, 2)), rtol=1e-9)
    A, B = _pair(4, rng, 0.05, r=8, n_out=5, n_in=6)  # rank above both sides: the Grams are not r×r
    sv, dyn = lowrank.lora_series(A, B, 1.0)
    np.testing.assert_allclose(sv["dW"], np.linalg.svd(B @ A, compute_uv=False)[:, :5], rtol=1e-9, atol=1e-14)
    np.testing.assert_allclose(dyn["frobenius"], np.linalg.norm(B @ A, axis=(1, 2)), rtol=1e-9)


def test_float16_series_equal_their_float64_upcast():
    # half precision is upcast on the way in: the numbers are those of the same values in float64,
    # to float32's tolerance (the float32 fast path), for the kernel and for both spectra routes
    rng = np.random.default_rng(6)
    A16, B16 = _pair(7, rng, 0.05, np.float16)
    A64, B64 = A16.astype(np.float64), B16.astype(np.float64)
    sv, dyn = lowrank.lora_series(A16, B16, 0.5)
    sv64, dyn64 = lowrank.lora_series(A64, B64, 0.5)
    W = 0.5 * B64 @ A64
    np.testing.assert_allclose(sv64["dW"], np.linalg.svd(W, compute_uv=False)[:, :4], rtol=1e-9)
    for k in sv64:
        np.testing.assert_allclose(sv[k], sv64[k], rtol=1e-6, err_msg=k)
    for k in dyn64:
        np.testing.assert_allclose(dyn[k], dyn64[k], rtol=2e-5, atol=1e-7 * dyn64["frobenius"].max(), err_msg=k)
    s16 = spectra.lora_singular_values(A16, B16, 0.5)
    for k in sv64:
        np.testing.assert_allclose(s16[k], sv64[k], rtol=1e-6, err_msg=k)


@pytest.mark.parametrize("where, bad", [("A", np.nan), ("B", np.inf)])
def test_a_nonfinite_factor_leaves_the_other_factors_spectrum(where, bad):
    # issue 12, item 1: only ΔW, which needs both factors, is masked
    rng = np.random.default_rng(8)
    A, B = _pair(5, rng, 0.05, np.float32)
    (A if where == "A" else B)[1, 0, 2] = bad
    sv, dyn = lowrank.lora_series(A, B, 1.0)
    other = {"A": B, "B": A}[where]
    want = np.linalg.svd(other.astype(np.float64), compute_uv=False)
    np.testing.assert_allclose(sv["B" if where == "A" else "A"], want, rtol=1e-6)
    assert np.isnan(sv[where][1]).all() and np.isnan(sv["dW"][1]).all() and np.isnan(dyn["frobenius"][1])
    assert np.isfinite(sv[where][[0, 2, 3, 4]]).all()


def _pissa(T: int, rng, dtype=np.float32, r: int = 4, n_out: int = 30, n_in: int = 20, scaling: float = 2.0):
    """A PiSSA-initialised series: scaling·B_0·A_0 is W's top-r SVD part, the base holds the rest;
    then small random steps of both factors. Returns W_pretrained, the base, A, B."""
    W = rng.normal(size=(n_out, n_in))
    U, S, Vt = np.linalg.svd(W, full_matrices=False)
    B0 = (U[:, :r] * np.sqrt(S[:r])) / np.sqrt(scaling)
    A0 = (np.sqrt(S[:r])[:, None] * Vt[:r]) / np.sqrt(scaling)
    A = np.cumsum(np.concatenate([A0[None], 1e-3 * rng.normal(size=(T - 1, r, n_in))]), axis=0).astype(dtype)
    B = np.cumsum(np.concatenate([B0[None], 1e-3 * rng.normal(size=(T - 1, n_out, r))]), axis=0).astype(dtype)
    base = W - scaling * B[0].astype(np.float64) @ A[0].astype(np.float64)
    return W, base, A, B


def test_pissa_update_from_the_pretrained_weight_is_zero_at_step_0_and_dense_after():
    # issue 12, item 4: ΔW = W_eff(t) − W_pretrained, not the adapter's product (the init's top SVD part)
    rng = np.random.default_rng(12)
    W, base, A, B = _pissa(6, rng)
    got = lowrank.lora_matrices(A, B, 2.0, compensated=True)
    Weff = base + 2.0 * B.astype(np.float64) @ A.astype(np.float64)
    dW, BA = Weff - W, 2.0 * B.astype(np.float64) @ A.astype(np.float64)
    assert np.all(got["dW"]["singular_values"][0] == 0) and got["dW"]["frobenius"][0] == 0
    assert got["dW"]["mean"][0] == 0
    want = np.linalg.svd(dW, compute_uv=False)[:, :8]
    top = want[:, :1]
    np.testing.assert_allclose(got["dW"]["singular_values"], want, rtol=1e-6, atol=1e-9 * top.max())
    noise = 1e-12 * np.abs(W).max()  # the dense reference's own cancellation in W_eff − W
    np.testing.assert_allclose(got["dW"]["frobenius"], np.linalg.norm(dW, axis=(1, 2)), rtol=1e-6, atol=noise)
    np.testing.assert_allclose(got["dW"]["mean"], dW.mean(axis=(1, 2)), rtol=1e-8, atol=noise / W.size)
    np.testing.assert_allclose(got["BA"]["singular_values"], np.linalg.svd(BA, compute_uv=False)[:, :4], rtol=1e-6)
    np.testing.assert_allclose(got["BA"]["frobenius"], np.linalg.norm(BA, axis=(1, 2)), rtol=1e-9)
    upd = np.linalg.norm(np.diff(dW, axis=0), axis=(1, 2))
    for m in ("dW", "BA"):
        np.testing.assert_allclose(got[m]["update_size"][1:], upd, rtol=1e-6)
        np.testing.assert_allclose(got[m]["distance_from_first"], np.linalg.norm(dW, axis=(1, 2)), rtol=1e-6,
                                   atol=1e-12)


def test_uncompensated_update_is_the_adapters_product():
    rng = np.random.default_rng(13)
    A, B = _pair(5, rng, 0.0, np.float32)
    got = lowrank.lora_matrices(A, B, 0.5)
    sv, dyn = lowrank.lora_series(A, B, 0.5)
    assert set(got) == {"A", "B", "dW"}
    np.testing.assert_array_equal(got["dW"]["singular_values"], sv["dW"])
    for k in dyn:
        np.testing.assert_array_equal(got["dW"][k], dyn[k])
    P, Q = lowrank.update_factors(A, B, 0.5)
    np.testing.assert_allclose(P @ Q, 0.5 * B.astype(np.float64) @ A.astype(np.float64), rtol=1e-12)


def test_update_factors_of_a_compensated_series_multiply_to_the_dense_update():
    rng = np.random.default_rng(14)
    W, base, A, B = _pissa(4, rng, np.float64)
    P, Q = lowrank.update_factors(A, B, 2.0, compensated=True)
    assert P.shape == (4, 30, 8) and Q.shape == (4, 8, 20)
    np.testing.assert_allclose(P @ Q, base + 2.0 * B @ A - W, atol=1e-12)
    assert not (P[0] @ Q[0]).any()


def test_compensated_update_with_nonfinite_and_frozen_factors():
    rng = np.random.default_rng(15)
    W, base, A, B = _pissa(5, rng, np.float64)
    A[:] = A[0]  # LoRA-FA: A frozen, ΔW = (B_t − B_0) A_0 has rank ≤ r
    B[3, 0, 0] = np.nan
    got = lowrank.lora_matrices(A, B, 2.0, compensated=True)
    dW = base + 2.0 * B @ A - W
    assert np.isnan(got["dW"]["singular_values"][3]).all() and np.isnan(got["dW"]["mean"][3])
    assert np.isfinite(got["A"]["singular_values"][3]).all()
    fine = [0, 1, 2, 4]
    want = np.linalg.svd(dW[fine], compute_uv=False)[:, :8]
    np.testing.assert_allclose(got["dW"]["singular_values"][fine], want, rtol=1e-6, atol=1e-12 * want.max())
    assert np.all(got["dW"]["singular_values"][fine][:, 4:] <= 1e-12 * want.max())
