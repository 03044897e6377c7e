"""Every table path of `analyze` against a second, slow implementation: numpy/scipy on the dense
matrices of a small random recording, including snapshots with NaN/Inf, zero and
rank-deficient factors."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import linalg as sla

from lorascope import analysis

from report_fakes import FakeModule, FakeRecording

NAME = "model.layers.0.self_attn.q_proj"
OUT, IN, R = 14, 10, 3


def _run(name="run", seed=0, T=7, init="kaiming_uniform", w0=True, B_rank1_from=None, nan_at=None,
         inf_at=None, zero_a_at=None) -> FakeRecording:
    """A random run with chosen defects: B of rank 1 from a step, a NaN in A, an Inf in B, A zero."""
    rng = np.random.default_rng(seed)
    A = np.cumsum(rng.normal(scale=0.3, size=(T, R, IN)), axis=0).astype(np.float32)
    B = np.cumsum(rng.normal(scale=0.2, size=(T, OUT, R)), axis=0).astype(np.float32)
    if init == "kaiming_uniform":
        B[0] = 0.0
    if B_rank1_from is not None:
        u, v = rng.normal(size=(OUT, 1)), rng.normal(size=(1, R))
        B[B_rank1_from:] = (u @ v).astype(np.float32)
    if nan_at is not None:
        A[nan_at, 0, 0] = np.nan
    if inf_at is not None:
        B[inf_at, 1, 1] = np.inf
    if zero_a_at is not None:
        A[zero_a_at] = 0.0
    W0 = rng.normal(size=(OUT, IN)).astype(np.float32) if w0 else None
    module = FakeModule(A=A, B=B, scaling=1.5, layer_index=0, W0=W0, init=init)
    steps = np.arange(T, dtype=np.int64) * 2
    scalars = pd.DataFrame({"step": np.arange(1, steps[-1] + 1), "loss": np.linspace(3, 2, steps[-1])})
    return FakeRecording(name, steps, {NAME: module}, scalars)


def _phi(X: np.ndarray, Y: np.ndarray, matrix: str, i: int, j: int) -> float:
    """φ from scipy's SVD of the two dense matrices."""
    def basis(M):
        U, s, Vt = sla.svd(M.astype(np.float64), full_matrices=False)
        return Vt.T if matrix == "A" else U
    M = basis(X)[:, :i].T @ basis(Y)[:, :j]
    return float((M**2).sum() / min(i, j))


def test_similarity_uses_only_the_numerically_non_null_directions():
    rec = _run(B_rank1_from=4)
    sim = analysis.similarity_table(rec, analysis.Options(max_steps=None))
    B = rec.modules[NAME].B
    rows = sim[(sim.matrix == "B") & (sim.reference == "final")]
    full, one = rows[rows.i == R], rows[rows.i == 1]
    # B is rank 1 from step 8 (snapshot 4) on, the final snapshot too: i = j = r is undefined
    # there (step 0, all zero, is 'zero')
    assert list(full.status) == ["zero"] + ["rank_deficient"] * (len(B) - 1) and full.phi.isna().all()
    # step 0 is all zero
    assert one.status.iloc[0] == "zero"
    for t, (_, row) in enumerate(one.iterrows()):
        if t == 0:
            continue
        assert row.status == "ok"
        assert row.phi == pytest.approx(_phi(B[t], B[-1], "B", 1, 1), rel=1e-6)
    A = rec.modules[NAME].A
    a_full = sim[(sim.matrix == "A") & (sim.reference == "final") & (sim.i == R)]
    assert (a_full.status == "ok").all()
    np.testing.assert_allclose(a_full.phi, [_phi(A[t], A[-1], "A", R, R) for t in range(len(A))], rtol=1e-6)


def test_similarity_between_runs_says_rank_deficient():
    runs = [_run("a", B_rank1_from=4), _run("b", seed=1)]
    sim = analysis.similarity_table(runs, analysis.Options(max_steps=None))
    between = sim[sim.reference == "run"]
    b = between[(between.matrix == "B")]
    assert b[b.i == R].status.item() == "rank_deficient" and np.isnan(b[b.i == R].phi.item())
    one = b[b.i == 1]
    assert one.status.item() == "ok"
    assert one.phi.item() == pytest.approx(_phi(runs[0].modules[NAME].B[-1], runs[1].modules[NAME].B[-1], "B", 1, 1),
                                           rel=1e-6)


# --- the tables against W0 and between the factors, from the dense matrices ---

def _dense_update(m, compensated: bool) -> np.ndarray:
    A, B = m.A.astype(np.float64), m.B.astype(np.float64)
    BA = m.scaling * (B @ A)
    return BA - BA[0] if compensated else BA


def _left(W: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    U, s, _ = sla.svd(W, full_matrices=False)
    return U, s


DEFECTS = [dict(), dict(nan_at=3), dict(inf_at=2), dict(zero_a_at=4), dict(B_rank1_from=5)]


@pytest.mark.parametrize("init", ["kaiming_uniform", "svd"])
@pytest.mark.parametrize("defect", DEFECTS, ids=["clean", "nan_A", "inf_B", "zero_A", "rank1_B"])
def test_intruders_amplification_magnitude_direction_against_dense(init, defect):
    rec = _run(init=init, **defect)
    m = rec.modules[NAME]
    o = analysis.Options(max_steps=None, intruder_k=4, intruder_epsilon=0.6)
    got = analysis.analyze(rec, ("intruders", "amplification", "magnitude_direction"), o, health=False).tables
    W0 = m.W0.astype(np.float64)  # lorascope's layer records the pretrained weight itself
    dW = _dense_update(m, compensated=init == "svd")
    fin = np.isfinite(dW).all(axis=(1, 2))
    U0, _ = _left(W0)
    intr, amp, md = got["intruders"], got["amplification"], got["magnitude_direction"]
    assert len(intr) == len(amp) == len(md) == len(dW)
    dm, dd = np.full(len(dW), np.nan), np.full(len(dW), np.nan)
    for t in range(len(dW)):
        if not fin[t]:
            assert intr.status.iloc[t] == "nonfinite" and intr["count"].iloc[t] == 0
            assert np.isnan(intr.worst_similarity.iloc[t]) and amp.status.iloc[t] == "nonfinite"
            assert np.isnan(md.magnitude_change.iloc[t]) and np.isnan(md.direction_change.iloc[t])
            continue
        W = W0 + dW[t]
        U, _ = _left(W)
        sim = np.abs(U[:, :4].T @ U0).max(axis=1)
        assert intr["count"].iloc[t] == (sim < 0.6).sum()
        assert intr.worst_similarity.iloc[t] == pytest.approx(sim.min(), rel=1e-6)
        # amplification: ΔW's top-r directions
        Ud, sd, Vdt = sla.svd(dW[t], full_matrices=False)
        rank = int((sd > max(OUT, IN) * np.finfo(np.float32).eps * sd[0]).sum()) if sd[0] > 0 else 0
        if rank == 0:
            assert amp.status.iloc[t] == "zero" and np.isnan(amp.amplification.iloc[t])
        elif rank < R:
            assert amp.status.iloc[t] == "rank_deficient" and np.isnan(amp.amplification.iloc[t])
        else:
            proj = np.linalg.norm(Ud[:, :R].T @ W0 @ Vdt[:R].T)
            assert amp.status.iloc[t] == "ok"
            assert amp.projection.iloc[t] == pytest.approx(proj, rel=1e-6)
            assert amp.amplification.iloc[t] == pytest.approx(np.linalg.norm(dW[t]) / proj, rel=1e-6)
            base = R * np.linalg.norm(W0) / np.sqrt(OUT * IN)
            assert amp.random_amplification.iloc[t] == pytest.approx(np.linalg.norm(dW[t]) / base, rel=1e-6)
        assert amp.frobenius.iloc[t] == pytest.approx(np.linalg.norm(dW[t]), rel=1e-6, abs=1e-12)
        # DoRA's magnitude and direction change, per output row
        n0, n1 = np.linalg.norm(W0, axis=1), np.linalg.norm(W, axis=1)
        dm[t] = np.abs(n1 - n0).mean()
        dd[t] = (1 - (W * W0).sum(axis=1) / (n0 * n1)).mean()
    np.testing.assert_allclose(md.magnitude_change, dm, rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(md.direction_change, dd, rtol=1e-6, atol=1e-12)
    # ΔW = 0 (step 0) is the origin of both series, not an observation
    with np.errstate(invalid="ignore"):
        moved = np.abs(dW).max(axis=(1, 2)) > 0
    keep = np.isfinite(dm) & np.isfinite(dd) & moved
    assert md.correlation.iloc[0] == pytest.approx(np.corrcoef(dm[keep], dd[keep])[0, 1], rel=1e-6)
    assert (md.correlation == md.correlation.iloc[0]).all()


@pytest.mark.parametrize("defect", DEFECTS, ids=["clean", "nan_A", "inf_B", "zero_A", "rank1_B"])
def test_asymmetry_against_dense(defect):
    rec = _run(init="svd", **defect)
    m = rec.modules[NAME]
    got = analysis.asymmetry_table(rec)
    for matrix, X in (("A", m.A), ("B", m.B)):
        rows = got[got.matrix == matrix]
        X = X.astype(np.float64)
        with np.errstate(invalid="ignore"):
            dist = np.linalg.norm(X - X[0], axis=(1, 2))
        dist = np.where(np.isfinite(dist), dist, np.nan)  # NaN/Inf has no distance
        np.testing.assert_allclose(rows.distance, dist, rtol=1e-6, atol=1e-12)
        np.testing.assert_allclose(rows.relative, dist / np.linalg.norm(X[0]), rtol=1e-6, atol=1e-12)
        assert list(rows.status) == ["ok" if np.isfinite(d) else "nonfinite" for d in dist]
    rows = got[got.matrix == "A"]
    A = m.A.astype(np.float64)
    for t in range(len(A)):
        if not np.isfinite(A[t]).all():
            assert rows.phi_status.iloc[t] == "nonfinite" and np.isnan(rows.phi.iloc[t])
        elif not A[t].any():
            assert rows.phi_status.iloc[t] == "zero" and np.isnan(rows.phi.iloc[t])
        else:
            assert rows.phi_status.iloc[t] == "ok"
            assert rows.phi.iloc[t] == pytest.approx(_phi(A[t], A[0], "A", R, R), rel=1e-6)


def test_b_starting_at_zero_has_no_relative_distance():
    got = analysis.asymmetry_table(_run())
    b = got[got.matrix == "B"]
    assert (b.status == "zero_init").all() and b.relative.isna().all() and (b.init_norm == 0).all()


def test_a_nonfinite_factor_leaves_the_other_factors_numbers_in_the_tables():
    rec = _run(nan_at=3, inf_at=5)
    m = rec.modules[NAME]
    got = analysis.analyze(rec, ("stats", "spectra"), health=False).tables
    stats, spectra = got["stats"], got["spectra"]
    for matrix, X, bad in (("A", m.A, 3), ("B", m.B, 5)):
        rows = stats[stats.matrix == matrix].reset_index(drop=True)
        ok = [t for t in range(len(X)) if t != bad]
        np.testing.assert_allclose(rows.spectral_norm[ok], [np.linalg.norm(X[t].astype(np.float64), 2) for t in ok],
                                   rtol=1e-6, atol=1e-12)
        assert np.isnan(rows.spectral_norm[bad])
    dw = stats[stats.matrix == "dW"].reset_index(drop=True)
    assert np.isnan(dw.frobenius[3]) and np.isnan(dw.frobenius[5]) and dw.status[3] == "nonfinite"
    sp = spectra[spectra.matrix == "B"].reset_index(drop=True)
    assert np.isfinite(sp.spectral_norm[3])  # A's NaN does not blank B


@pytest.mark.parametrize("norm", ["row", "column"])
def test_dora_delta_w_is_the_change_of_the_effective_weight(norm):
    rec = _run(nan_at=3)
    m = rec.modules[NAME]
    rng = np.random.default_rng(7)
    W0 = m.W0.astype(np.float64)
    base = np.linalg.norm(W0, axis=1 if norm == "row" else 0)
    m.magnitude = (base * (1 + 0.05 * rng.normal(size=(len(m.A), len(base))))).astype(np.float32)
    m.magnitude_norm = norm
    got = analysis.analyze(rec, ("stats", "singular_values", "magnitude_direction"), health=False).tables
    stats, sv = got["stats"], got["singular_values"]
    dW, BA = [], m.scaling * (m.B.astype(np.float64) @ m.A.astype(np.float64))
    for t in range(len(m.A)):  # the reader's delta_w, in float64
        V = W0 + BA[t]
        mag = m.magnitude[t].astype(np.float64)
        with np.errstate(invalid="ignore"):
            W = V * (mag / np.linalg.norm(V, axis=1))[:, None] if norm == "row" else V * (mag / np.linalg.norm(V, axis=0))
        dW.append(W - W0)
    dW = np.array(dW)
    rows = stats[stats.matrix == "dW"].reset_index(drop=True)
    ok = [t for t in range(len(dW)) if t != 3]
    np.testing.assert_allclose(rows.frobenius[ok], np.linalg.norm(dW[ok], axis=(1, 2)), rtol=1e-6)
    np.testing.assert_allclose(rows["mean"][ok], dW[ok].mean(axis=(1, 2)), rtol=1e-6)
    np.testing.assert_allclose(rows.distance_from_first[ok], np.linalg.norm(dW[ok] - dW[0], axis=(1, 2)), rtol=1e-6,
                               atol=1e-12)
    np.testing.assert_allclose(rows.update_size[[1, 2, 5, 6]],
                               [np.linalg.norm(dW[t] - dW[t - 1]) for t in (1, 2, 5, 6)], rtol=1e-6)
    assert rows.status[3] == "nonfinite" and np.isnan(rows.update_size[4])
    last = sv[(sv.matrix == "dW") & (sv.step == sv.step.max())].sort_values("index")
    np.testing.assert_allclose(last.value, sla.svd(dW[-1], compute_uv=False), rtol=1e-6, atol=1e-12)
    ba = stats[stats.matrix == "BA"].reset_index(drop=True)
    np.testing.assert_allclose(ba.frobenius[ok], np.linalg.norm(BA[ok], axis=(1, 2)), rtol=1e-6)
    # DoRA's magnitude and direction change reads the recorded magnitude
    md = got["magnitude_direction"].reset_index(drop=True)
    axis = 1 if norm == "row" else 0
    W = W0 + dW[-1]
    n0, n1 = np.linalg.norm(W0, axis=axis), np.linalg.norm(W, axis=axis)
    cos = (W * W0).sum(axis=axis) / (n0 * n1)
    assert md.magnitude_change.iloc[-1] == pytest.approx(np.abs(n1 - n0).mean(), rel=1e-6)
    assert md.direction_change.iloc[-1] == pytest.approx((1 - cos).mean(), rel=1e-6)
