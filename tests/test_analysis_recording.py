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
