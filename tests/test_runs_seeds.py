"""Seeds of variance: `run_sweep(seeds=N)`, `lorascope sweep --seeds N` and `seeds = N` in a
sweep file run each grid point N times with seeds base, base+1, ...; the comparison report
takes the runs that differ only by seed together, and what it draws is numpy's mean and spread
of the runs' own curves."""
from __future__ import annotations

import signal

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

import lorascope
from lorascope.cli import app
from lorascope.config import RunConfig, apply_overrides
from lorascope.errors import UsageError
from lorascope.runs import session
from lorascope.runs.sweep import load_sweep_file, run_sweep, seed_values, with_seeds


@pytest.fixture
def started(monkeypatch):
    """session.run replaced by a stand-in that notes each run's name and seed."""
    seen: list[tuple[str, int]] = []

    def fake(cfg: RunConfig, log=print, **kwargs) -> session.RunSummary:
        seen.append((cfg.name, cfg.seed))
        path = cfg.output_path()
        path.write_bytes(b"")
        return session.RunSummary(path, path.with_suffix(".adapters.safetensors"), 1, False, 0.5)

    monkeypatch.setattr(session, "run", fake)
    monkeypatch.setattr("lorascope.runs.sweep.is_complete", lambda *args: False)
    return seen


def test_each_grid_point_runs_once_per_seed_from_the_base_seed(tmp_path, started):
    result = run_sweep(apply_overrides(RunConfig(), {"seed": 5}), {"optimizer": ["adamw", "sgd"]},
                       name="g", folder=tmp_path, log=lambda line: None, seeds=2)
    assert started == [("g-adamw-s5", 5), ("g-adamw-s6", 6), ("g-sgd-s5", 5), ("g-sgd-s6", 6)]
    assert len(result.paths) == 4


def test_one_seed_leaves_the_grid_and_its_names_as_they_were(tmp_path, started):
    run_sweep(RunConfig(), {"optimizer": ["adamw"]}, name="g", folder=tmp_path, log=lambda line: None, seeds=1)
    assert started == [("g-adamw", 0)]


def test_seed_counts_and_seed_axes_are_checked():
    assert seed_values(3, 3) == [3, 4, 5]
    with pytest.raises(UsageError, match="at least 1"):
        seed_values(0, 0)
    with pytest.raises(UsageError, match="either a seed axis"):
        with_seeds({"seed": [1, 2]}, 0, 2)
    assert with_seeds({"seed": [1, 2]}, 0, 1) == {"seed": [1, 2]}


def test_a_sweep_file_says_seeds(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text('seed = 10\n[sweep]\ninit = ["kaiming_uniform", "svd"]\nseeds = 3\n')
    base, axes = load_sweep_file(path)
    assert base.seed == 10 and axes == {"init": ["kaiming_uniform", "svd"], "seed": [10, 11, 12]}
    path.write_text('[sweep]\nseeds = "three"\n')
    with pytest.raises(UsageError, match="whole number"):
        load_sweep_file(path)


def _cli(tmp_path, *args):
    return CliRunner().invoke(app, ["sweep", "--recordings", str(tmp_path / "rec"), "--no-report", *args])


def test_the_cli_flag_runs_each_point_n_times_and_wins_over_the_file(tmp_path, started):
    result = _cli(tmp_path, "--optimizer", "adamw,sgd", "--seeds", "2", "--name", "c")
    assert result.exit_code == 0, result.output
    assert [name for name, _ in started] == ["c-adamw-s0", "c-adamw-s1", "c-sgd-s0", "c-sgd-s1"]
    started.clear()
    config = tmp_path / "s.toml"
    config.write_text('[sweep]\noptimizer = ["adamw"]\nseeds = 3\n')
    result = _cli(tmp_path, "-c", str(config), "--seeds", "2", "--name", "f")
    assert result.exit_code == 0, result.output
    assert started == [("f-adamw-s0", 0), ("f-adamw-s1", 1)]


def test_the_cli_refuses_a_seed_list_with_a_seed_count(tmp_path, started):
    result = _cli(tmp_path, "--seed", "1,2", "--seeds", "2")
    assert result.exit_code == 2 and "either a seed axis" in result.output and started == []


def test_help_says_what_seeds_do():
    result = CliRunner().invoke(app, ["sweep", "--help"], terminal_width=200)
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    assert "--seeds" in text and "seed+1" in text and "min-max band" in text


# --- a real sweep on a tiny model, and its report ---------------------------------------------

@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("seeds")
    base = apply_overrides(RunConfig(), {
        "model.name": "tiny-gpt2", "data.max_examples": 32, "data.batch_size": 2, "optim.steps": 3,
        "eval_every": 1, "eval_batches": 1, "generate_samples": 0, "device": "cpu",
    })
    result = run_sweep(base, {"optimizer": ["adamw", "sgd"]}, name="n2", folder=tmp, log=lambda line: None,
                       seeds=2)
    # the sweep's report is build_report of its runs; one cheap module figure keeps this quick
    from lorascope.report.build import build_report

    result.report = build_report(result.paths, tmp / "report", max_modules=1, max_steps=2, figure_kinds=["moments"])
    return result


def test_a_two_seed_sweep_makes_twice_the_runs_with_distinct_seeds(swept):
    assert [p.name for p in swept.paths] == ["n2-adamw-s0.h5", "n2-adamw-s1.h5", "n2-sgd-s0.h5", "n2-sgd-s1.h5"]
    seeds, losses = [], []
    for path in swept.paths:
        with lorascope.open(path) as rec:
            assert rec.status == "complete"
            seeds.append(rec.config["seed"])
            losses.append(tuple(rec.scalar_columns["loss"][1:]))
    assert seeds == [0, 1, 0, 1]
    assert losses[0] != losses[1] and losses[2] != losses[3]  # the seed changed what was trained


def test_the_reports_seed_curves_are_numpys_mean_and_std_of_the_runs(swept):
    curves = pd.read_csv(swept.report.parent / "training_seeds.csv")
    assert set(curves["column"]) == {"loss", "eval_loss", "eval_perplexity"}
    for optimizer, paths in (("adamw", swept.paths[:2]), ("sgd", swept.paths[2:])):
        for column in ("loss", "eval_loss"):
            runs = []
            for path in paths:
                with lorascope.open(path) as rec:
                    scalars = rec.scalar_columns
                    keep = np.isfinite(scalars[column])
                    runs.append((scalars["step"][keep], scalars[column][keep]))
            steps = runs[0][0]
            assert all(np.array_equal(s, steps) for s, _ in runs)
            values = np.stack([v for _, v in runs])
            rows = curves[(curves["group"] == f"n2-{optimizer}") & (curves["column"] == column)]
            np.testing.assert_array_equal(rows["step"], steps)
            np.testing.assert_allclose(rows["mean"], values.mean(axis=0), rtol=1e-12)
            np.testing.assert_allclose(rows["std"], values.std(axis=0, ddof=1), rtol=1e-12)
            np.testing.assert_allclose(rows["min"], values.min(axis=0), rtol=1e-12)
            np.testing.assert_allclose(rows["max"], values.max(axis=0), rtol=1e-12)


def test_the_report_page_shows_the_groups_with_mean_and_spread(swept):
    page = swept.report.read_text()
    assert "Across seeds" in page and "training_seeds.png" in page
    assert (swept.report.parent / "training_seeds.png").stat().st_size > 0
    assert "n2-adamw (2 seeds)" in page and "n2-sgd (2 seeds)" in page
    assert " ± " in page and "min–max band" in page


def test_a_report_without_seed_groups_has_no_seed_section(tmp_path, swept):
    from lorascope.report.build import build_report

    index = build_report([swept.paths[0], swept.paths[2]], tmp_path / "r", max_modules=1, max_steps=2,
                         figure_kinds=["moments"])
    assert "Across seeds" not in index.read_text()
    assert not (tmp_path / "r" / "training_seeds.csv").exists()
