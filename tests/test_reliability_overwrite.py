"""The reading commands never write over their own inputs and meet a full disk with a sentence
(issue 18): `lorascope analyze run.csv -o run.csv` used to replace the recording with the table
and exit 0; `report` ended in `OSError: No space left on device`."""
from __future__ import annotations

import hashlib

import pytest
from typer.testing import CliRunner

from lorascope.cli import app
from tests.cli_process import run_cli
from tests.h5_fakes import write_recording


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _refused(result, recording, before) -> None:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert "writing there would destroy it" in result.stderr
    assert _digest(recording) == before


@pytest.mark.parametrize("tables, output", [("stats", "run.csv"), ("stats,similarity", "out.csv")],
                         ids=["one-table", "a-table-beside"])
def test_analyze_refuses_to_write_a_table_over_its_recording(tmp_path, tables, output):
    # a recording may be named anything, even like the table it would be replaced by
    recording = tmp_path / ("run.csv" if output == "run.csv" else "out.stats.csv")
    write_recording(recording)
    before = _digest(recording)
    result = CliRunner().invoke(app, ["analyze", str(recording), "-o", str(tmp_path / output), "--tables", tables])
    _refused(result, recording, before)


def test_analyze_refuses_the_same_file_by_another_name(tmp_path):
    recording = tmp_path / "run.h5"
    write_recording(recording)
    (tmp_path / "alias.csv").symlink_to(recording)
    before = _digest(recording)
    result = CliRunner().invoke(app, ["analyze", str(recording), "-o", str(tmp_path / "alias.csv")])
    _refused(result, recording, before)


def test_report_refuses_to_write_its_page_over_a_recording(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    recording = folder / "index.html"
    write_recording(recording)
    before = _digest(recording)
    result = CliRunner().invoke(app, ["report", str(recording), "-o", str(folder), "--figures", "heatmap"])
    _refused(result, recording, before)
    assert sorted(p.name for p in folder.iterdir()) == ["index.html"]  # refused before drawing


def test_report_on_a_full_disk_is_a_sentence(tmp_path):
    recording = tmp_path / "run.h5"
    write_recording(recording)
    # 4 KiB per file: the figures do not fit, as on a disk that filled up
    done = run_cli(["report", recording, "-o", tmp_path / "report", "--figures", "heatmap"], tmp_path,
                   file_size=4096)
    assert done.code == 2, done.output
    assert "Traceback" not in done.output
    (line,) = done.error_lines()
    assert line.startswith("error: could not write ") and "File too large" in line and "--output" in line
