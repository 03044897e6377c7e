"""`lorascope info` on real recordings: what it prints for a complete run, an interrupted one,
one with a health problem (B never leaves zero), and the one-line errors for bad files."""
from __future__ import annotations

import re

import pytest
from typer.testing import CliRunner

from lorascope.cli import app
from report_recordings import record_tiny_run


def _info(*args: str):
    return CliRunner().invoke(app, ["info", *map(str, args)])


@pytest.fixture(scope="module")
def complete(tmp_path_factory):
    return record_tiny_run(tmp_path_factory.mktemp("info") / "run.h5", "adamw-r4", steps=3)


def test_info_summarises_a_complete_recording(complete):
    result = _info(complete)
    assert result.exit_code == 0, result.output
    out = result.output
    assert "run        adamw-r4" in out
    assert "status     complete" in out
    assert "snapshots  4, optimizer steps 0 … 3" in out
    assert re.search(r"file       .*run\.h5 \(\d+\.\d KiB\)", out)
    assert "optim.optimizer          adamw" in out and "lora.rank                4" in out
    # 2 blocks × (c_attn, attn c_proj, c_fc, mlp c_proj), rank 4: 4·(32+96) + 4·(32+32) + 4·(32+128) + 4·(128+32)
    assert "modules    8 (4,096 LoRA values)" in out
    assert re.search(r"transformer\.h\.0\.attn\.c_attn\s+layer\s+0\s+A 4×32\s+B 96×4\s+scaling 2", out)
    assert "health\n  no findings" in out


def test_info_without_health(complete):
    result = _info(complete, "--no-health")
    assert result.exit_code == 0 and "health" not in result.output


def test_info_reports_an_interrupted_run(tmp_path):
    rec = record_tiny_run(tmp_path / "cut.h5", "cut", steps=2, close=False)
    rec.close("interrupted")
    result = _info(tmp_path / "cut.h5", "--no-health")
    assert result.exit_code == 0 and "status     interrupted" in result.output


def test_info_shows_health_findings(tmp_path):
    # lr = 0: B stays exactly zero past the check's 10 steps, which the health check names.
    path = record_tiny_run(tmp_path / "stuck.h5", "stuck", optimizer="sgd", lr=0.0, steps=11)
    result = _info(path)
    assert result.exit_code == 0, result.output
    assert "B is still exactly zero" in result.output


def test_missing_file_is_one_line(tmp_path):
    result = _info(tmp_path / "nothing.h5")
    assert result.exit_code == 2
    assert result.output.strip().startswith("error: no recording at")


def test_not_hdf5_is_one_line(tmp_path):
    bad = tmp_path / "notes.h5"
    bad.write_text("not a recording")
    result = _info(bad)
    assert result.exit_code == 2
    assert "is not an HDF5 file" in result.output and "Traceback" not in result.output
