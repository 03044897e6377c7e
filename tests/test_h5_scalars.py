"""A scalar a run never logged is absent from ``rec.scalars`` (not a column of NaN that the health
checks would call a diverged loss), while a loss that was logged as NaN stays and is reported."""
from __future__ import annotations

import math

import h5py
import pytest
import torch

import lorascope
from lorascope.config import RecordConfig
from lorascope.record import Recorder
from lorascope.analysis.health import check_scalars
from tests.record_helpers import batch, tiny_lora_gpt2


def _attached_run(path, losses=None):
    """A plain loop that only attaches the Recorder to its optimizer (no scalars passed), or
    logs ``losses[step]`` through log_scalars."""
    model = tiny_lora_gpt2()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    with Recorder(path, model, RecordConfig(every=1)) as rec:
        rec.attach(optimizer)
        for step in range(1, 4):
            x = batch(step)
            model(input_ids=x, labels=x).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            if losses is not None:
                rec.log_scalars(step, {"loss": losses[step]})


def test_a_scalar_never_logged_is_absent_and_raises_no_finding(tmp_path):
    path = tmp_path / "attached.h5"
    _attached_run(path)
    with lorascope.open(path) as rec:
        assert list(rec.scalars.columns) == ["step", "lr"]  # the lr the Recorder read itself
        assert rec.scalars["step"].tolist() == [1, 2, 3]
        assert check_scalars(rec.scalar_columns) == []


def test_a_loss_logged_as_nan_stays_and_is_reported(tmp_path):
    path = tmp_path / "nan.h5"
    _attached_run(path, losses={1: math.nan, 2: math.nan, 3: math.nan})
    with lorascope.open(path) as rec:
        assert "loss" in rec.scalars and rec.scalars["loss"].isna().all()
        (finding,) = check_scalars(rec.scalar_columns)
        assert "the loss is nan at step 1" in finding.message


def test_files_without_the_logged_attribute_drop_columns_that_are_nan_throughout(tmp_path):
    path = tmp_path / "old.h5"
    _attached_run(path, losses={1: 2.0, 2: 1.5, 3: 1.0})
    with h5py.File(path, "r+") as f:  # as written before the attribute existed
        for ds in f["scalars"].values():
            if "logged" in ds.attrs:
                del ds.attrs["logged"]
    with lorascope.open(path) as rec:
        assert list(rec.scalars.columns) == ["step", "loss", "lr"]
        assert rec.scalars["loss"].tolist() == pytest.approx([2.0, 1.5, 1.0])
