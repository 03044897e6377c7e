"""`lorascope sweep`: the grid, readable run names, skipping complete runs, redoing interrupted
ones, the [sweep] table of a config file, and the comparison report at the end."""
from __future__ import annotations

import h5py
import pytest
from typer.testing import CliRunner

import lorascope
from lorascope.cli import app
from lorascope.config import RunConfig
from lorascope.errors import UsageError
from lorascope.runs.sweep import expand

QUICK = ["--model", "tiny-gpt2", "--steps", "2", "--set", "data.max_examples=32", "--set", "eval_batches=1",
         "--set", "generate_samples=0", "--set", "data.batch_size=2"]


def sweep(tmp_path, *args):
    result = CliRunner().invoke(app, ["sweep", "--recordings", str(tmp_path / "rec"), *QUICK, *args])
    return result


def test_grid_names_and_overrides(tmp_path):
    runs = expand(RunConfig(), {"optimizer": ["adamw", "came"], "rank": [4, 8]}, tmp_path, "s")
    assert [r.name for r in runs] == ["s-adamw-r4", "s-adamw-r8", "s-came-r4", "s-came-r8"]
    assert [(r.config.optim.optimizer, r.config.lora.rank) for r in runs][1] == ("adamw", 8)
    assert all(r.config.output_path() == r.path for r in runs)


def test_repeated_values_and_empty_axes_are_refused(tmp_path):
    with pytest.raises(UsageError, match="repeats"):
        expand(RunConfig(), {"rank": [4, 4]}, tmp_path, "s")
    with pytest.raises(UsageError, match="no values"):
        expand(RunConfig(), {"rank": []}, tmp_path, "s")


def test_sweep_runs_skips_and_redoes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    first = sweep(tmp_path, "--optimizer", "adamw,sgd", "--name", "grid", "--no-report")
    assert first.exit_code == 0, first.output
    paths = sorted((tmp_path / "rec" / "grid").glob("*.h5"))
    assert [p.name for p in paths] == ["grid-adamw.h5", "grid-sgd.h5"]
    for p in paths:
        with lorascope.open(p) as rec:
            assert rec.status == "complete" and list(rec.steps) == [0, 1, 2]

    # mark one run as interrupted: the next sweep redoes it and skips the other
    with h5py.File(paths[1], "r+", locking=False) as f:
        f.attrs["status"] = "interrupted"
    second = sweep(tmp_path, "--optimizer", "adamw,sgd", "--name", "grid", "--no-report")
    assert second.exit_code == 0, second.output
    assert "grid-adamw: complete, skipped" in second.output
    assert "grid-sgd: complete, skipped" not in second.output
    with lorascope.open(paths[1]) as rec:
        assert rec.status == "complete"


def test_sweep_table_in_config_and_report(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "s.toml"
    config.write_text('[lora]\nrank = 4\n[sweep]\ninit = ["kaiming_uniform", "gaussian_b"]\n')
    result = sweep(tmp_path, "-c", str(config), "--name", "inits")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "reports" / "inits" / "index.html").exists()
    page = (tmp_path / "reports" / "inits" / "index.html").read_text()
    assert "inits-kaiming_uniform" in page and "inits-gaussian_b" in page


def test_bad_sweep_table_is_one_sentence(tmp_path):
    config = tmp_path / "s.toml"
    config.write_text('[sweep]\ninit = "svd"\n')
    result = sweep(tmp_path, "-c", str(config))
    assert result.exit_code == 2 and "must map axis names to lists" in result.output
