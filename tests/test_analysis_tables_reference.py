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
