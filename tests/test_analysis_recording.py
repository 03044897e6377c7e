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

from analysis_fakes import lora_run
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
    from lorascope.analysis import batch, driver
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
        got = analysis.analyze(rec, ("stats", "spectra", "fits"), analysis.Options(fit_samples=64))
        read = driver.read_series
        monkeypatch.setattr(driver, "read_series", lambda module, *buffers: read(module))
        want = analysis.analyze(rec, ("stats", "spectra", "fits"), analysis.Options(fit_samples=64))
        first = next(iter(rec.modules.values()))
        buffers = batch.Scratch()
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


@pytest.fixture(scope="module")
def accumulated(tmp_path_factory):
    """Gradients per micro-step (accumulation 2: two rows per optimizer step) and AdamW's state."""
    from lorascope.record.recorder import Recorder

    path = tmp_path_factory.mktemp("rec") / "accum.h5"
    model = tiny_lora_gpt2(init="gaussian", seed=1)
    opt = torch.optim.AdamW(lora_params(model), lr=1e-2)
    with Recorder(path, model, RecordConfig(grads=True, optimizer_state=True)) as rec:
        rec.start(opt)
        train(model, opt, rec, steps=3, accum=2)
    with lorascope.open(path) as rec:
        return path, analysis.stats_table(rec)


@pytest.mark.parametrize("m,key", [("A", "exp_avg"), ("B", "exp_avg_sq")])
def test_state_rows_equal_numpy_on_the_recorded_state(accumulated, m, key):
    path, stats = accumulated
    with lorascope.open(path) as rec:
        name = list(rec.modules)[1]
        state = np.asarray(getattr(rec.modules[name], f"state_{m}")[key][:], dtype=np.float64)
        state_steps = rec.state_steps
    rows = stats[(stats.module == name) & (stats.matrix == f"state_{m}.{key}")]
    assert len(rows) == len(state) == len(state_steps) > 1
    np.testing.assert_array_equal(rows.step, state_steps)
    assert rows.micro_step.isna().all()  # state is per optimizer step: step alone is the key
    # B starts at zero, so A's first gradient, and with it A's state after step 1, is exactly zero
    first = 1 if m == "A" else 0
    if m == "A":
        assert not state[0].any() and rows.iloc[0].status == "zero" and rows.iloc[0].frobenius == 0
    for i in range(first, len(state)):
        x, row = state[i], rows.iloc[i]
        assert np.abs(x).max() > 0
        assert row["mean"] == pytest.approx(x.mean(), abs=1e-6 * x.std())
        assert row["std"] == pytest.approx(x.std(), rel=1e-6)
        assert row.frobenius == pytest.approx(np.linalg.norm(x), rel=1e-6)
        assert row.spectral_norm == pytest.approx(np.linalg.norm(x, 2), rel=1e-6)
        assert row.status == "ok" and row.nonfinite == 0


def test_every_recorded_state_entry_has_rows(accumulated):
    path, stats = accumulated
    with lorascope.open(path) as rec:
        want = {f"state_{m}.{k}" for mod in rec.modules.values() for m in "AB"
                for k in getattr(mod, f"state_{m}")}
    assert want == {"state_A.exp_avg", "state_A.exp_avg_sq", "state_B.exp_avg", "state_B.exp_avg_sq"}
    assert want <= set(stats.matrix)


def test_gradient_rows_are_keyed_by_micro_step(accumulated):
    path, stats = accumulated
    with lorascope.open(path) as rec:
        micro, grad_steps, modules = rec.grad_micro_steps, rec.grad_steps, list(rec.modules)
    assert len(np.unique(grad_steps)) < len(grad_steps)  # accumulation: steps repeat
    grads = stats[stats.matrix.isin(["grad_A", "grad_B"])]
    assert not grads.duplicated(["module", "matrix", "step", "micro_step"]).any()
    for name in modules:
        for g in ("grad_A", "grad_B"):
            rows = grads[(grads.module == name) & (grads.matrix == g)]
            np.testing.assert_array_equal(rows.micro_step.to_numpy(dtype=np.int64), micro)
            np.testing.assert_array_equal(rows.step, grad_steps)
    # every other row is per optimizer step and unique without a micro-step
    rest = stats[~stats.matrix.isin(["grad_A", "grad_B"])]
    assert rest.micro_step.isna().all() and not rest.duplicated(["module", "matrix", "step"]).any()
    assert list(stats.columns[:7]) == [*analysis.KEYS, "micro_step"]


def test_vector_state_gets_moments_but_no_spectral_norm():
    """Adafactor-style factored state (1-D per snapshot) next to a full-shaped entry and one of
    an unrelated shape, which is skipped."""
    run = lora_run(T=3, rank=2, shape=(6, 5), modules=("h.0.attn",))
    module = run.modules["h.0.attn"]
    rng = np.random.default_rng(0)
    row = rng.random((2, 2)).astype(np.float32)
    module.state_A = {"exp_avg": rng.normal(size=(2, 2, 5)).astype(np.float32), "exp_avg_sq_row": row,
                      "odd": np.ones((2, 3, 3), np.float32)}
    module.state_B = {}
    run.state_steps = np.array([1, 2])  # the recording's state axis, as Recording.state_steps
    stats = analysis.stats_table(run)
    vec = stats[stats.matrix == "state_A.exp_avg_sq_row"]
    np.testing.assert_array_equal(vec.step, [1, 2])
    np.testing.assert_allclose(vec["mean"], row.mean(axis=1), rtol=1e-6)
    np.testing.assert_allclose(vec.frobenius, np.linalg.norm(row, axis=1), rtol=1e-6)
    assert vec.spectral_norm.isna().all()
    full = stats[stats.matrix == "state_A.exp_avg"]
    assert full.spectral_norm.notna().all() and len(full) == 2
    assert "state_A.odd" not in set(stats.matrix)
    assert analysis.KEYS == list(stats.columns[:6])
