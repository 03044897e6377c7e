"""The analysis on a real recording: a tiny GPT-2 trained a few steps through the Recorder, read
back with lorascope.open, analysed by the tables layer and by `lorascope analyze`."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

import lorascope
from lorascope import analysis
from lorascope.cli import app
from lorascope.config import RecordConfig

from record_helpers import lora_params, tiny_lora_gpt2, train


@pytest.fixture(scope="module")
def recording(tmp_path_factory):
    from lorascope.record.recorder import Recorder

    path = tmp_path_factory.mktemp("rec") / "run.h5"
    model = tiny_lora_gpt2(init="gaussian")
    opt = torch.optim.AdamW(lora_params(model), lr=1e-2)
    with Recorder(path, model, RecordConfig(grads=True, base_weights=True)) as rec:
        rec.start(opt)
        train(model, opt, rec, steps=4)
    return path


def test_tables_from_a_real_recording(recording):
    with lorascope.open(recording) as rec:
        result = analysis.analyze(rec, ("stats", "spectra", "geometry"))
        name = next(iter(rec.modules))
        m = rec.modules[name]
        W_last = m.delta_w(-1).astype(np.float64)
        steps = rec.steps
    stats = result.tables["stats"]
    assert set(stats.matrix) >= {"A", "B", "dW", "grad_A", "grad_B"}
    row = stats[(stats.module == name) & (stats.matrix == "dW") & (stats.step == steps[-1])].iloc[0]
    assert row.frobenius == pytest.approx(np.linalg.norm(W_last), rel=1e-5)
    assert row.spectral_norm == pytest.approx(np.linalg.norm(W_last, 2), rel=1e-5)
    assert len(result.tables["geometry"]) == len(steps) * stats.module.nunique()
    assert result.findings == []  # B moves, A moves, nothing blows up in 4 steps


def test_cli_on_a_real_recording(recording, tmp_path):
    out = tmp_path / "a.csv"
    r = CliRunner().invoke(app, ["analyze", str(recording), "-o", str(out), "--tables", "all", "--fit-samples", "256"])
    assert r.exit_code == 0, r.output
    for name in [*analysis.TABLES.names(), "similarity", "histograms"]:
        assert (tmp_path / f"a.{name}.csv").exists(), name
    fits = pd.read_csv(tmp_path / "a.fits.csv")
    assert set(fits.family) == set(analysis.fits.FAMILIES.names())


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_series_read_into_reused_buffers_change_no_number(tmp_path, monkeypatch, dtype):
    """`analyze` reads every module into the same buffers (c_attn's B is 3x c_proj's, so the
    views change shape and overwrite each other); the tables must equal those of fresh arrays."""
    from lorascope.analysis import tables
    from lorascope.record.recorder import Recorder

    path = tmp_path / f"{dtype}.h5"
    model = tiny_lora_gpt2(init="gaussian", seed=3)
    opt = torch.optim.AdamW(lora_params(model), lr=1e-2)
    with Recorder(path, model, RecordConfig(dtype=dtype)) as rec:
        rec.start(opt)
        train(model, opt, rec, steps=5)
    with lorascope.open(path) as rec:
        shapes = {m.B.shape for m in rec.modules.values()}
        assert len(shapes) > 1  # the reuse is exercised across differently shaped modules
        got = analysis.analyze(rec, ("stats", "spectra", "fits"), tables.Options(fit_samples=64))
        read = tables.read_series
        monkeypatch.setattr(tables, "read_series", lambda module, *buffers: read(module))
        want = analysis.analyze(rec, ("stats", "spectra", "fits"), tables.Options(fit_samples=64))
        first = next(iter(rec.modules.values()))
        buffers = tables.Scratch()
        A, B = read(first, buffers)
        assert A.dtype == np.float32 and np.array_equal(A, first.A[:]) and np.array_equal(B, first.B[:])
    for name in ("stats", "spectra", "fits"):
        pd.testing.assert_frame_equal(got.tables[name], want.tables[name])


@pytest.mark.parametrize("g", ["grad_A", "grad_B"])
def test_gradient_rows_equal_numpy_on_the_recorded_gradients(recording, g):
    with lorascope.open(recording) as rec:
        stats = analysis.stats_table(rec)
        name = list(rec.modules)[1]
        grads = np.asarray(getattr(rec.modules[name], g)[:], dtype=np.float64)
        grad_steps = rec.grad_steps
    rows = stats[(stats.module == name) & (stats.matrix == g)]
    assert len(rows) == len(grads) == len(grad_steps) > 1
    np.testing.assert_array_equal(rows.step, grad_steps)
    # B starts at zero, so A's first gradient is exactly zero: a known answer of its own
    if g == "grad_A":
        assert not grads[0].any() and rows.iloc[0].status == "zero" and rows.iloc[0].frobenius == 0
    for i in (1, len(grads) - 1):
        x, row = grads[i], rows.iloc[i]
        assert np.abs(x).max() > 0  # a real gradient, not an untouched buffer
        assert row["mean"] == pytest.approx(x.mean(), abs=1e-6 * x.std())
        assert row["std"] == pytest.approx(x.std(), rel=1e-6)
        assert row.frobenius == pytest.approx(np.linalg.norm(x), rel=1e-6)
        assert row.spectral_norm == pytest.approx(np.linalg.norm(x, 2), rel=1e-6)
        assert row.status == "ok" and row.nonfinite == 0
