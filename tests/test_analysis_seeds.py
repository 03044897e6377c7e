"""`lorascope.analysis.seeds`: runs that differ only by seed form a group, and a group's curves
and summary numbers are numpy's mean, std (ddof=1), min and max across its runs."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from lorascope.analysis.seeds import has_seed_groups, seed_curves, seed_groups, seed_summary


def _rec(name: str, seed: int, optimizer: str, loss, steps=None, evals=None, times=(0.0, 2.0)):
    steps = np.arange(len(loss)) if steps is None else np.asarray(steps)
    scalars = {"step": steps, "loss": np.asarray(loss, dtype=float)}
    if evals is not None:
        scalars["eval_accuracy"] = np.asarray(evals, dtype=float)
    config = {"seed": seed, "name": name, "output": f"/x/{name}.h5",
              "optim": {"optimizer": optimizer, "lr": 1e-3}}
    return SimpleNamespace(run_name=name, config=config, scalar_columns=scalars, times=np.asarray(times))


RNG = np.random.default_rng(0)
LOSSES = {(opt, s): 2.0 - np.linspace(0, 1, 6) + 0.1 * RNG.standard_normal(6)
          for opt in ("adamw", "sgd") for s in (0, 1, 2)}
RECS = [_rec(f"g-{opt}-s{s}", s, opt, LOSSES[opt, s]) for opt in ("adamw", "sgd") for s in (0, 1, 2)]


def test_runs_that_differ_only_by_seed_form_a_group():
    groups = seed_groups(RECS)
    assert [(g.label, g.runs, g.seeds) for g in groups] == [
        ("g-adamw", ("g-adamw-s0", "g-adamw-s1", "g-adamw-s2"), (0, 1, 2)),
        ("g-sgd", ("g-sgd-s0", "g-sgd-s1", "g-sgd-s2"), (0, 1, 2)),
    ]
    assert has_seed_groups(groups)
    alone = seed_groups([RECS[0], RECS[3]])
    assert [g.label for g in alone] == ["g-adamw-s0", "g-sgd-s0"] and not has_seed_groups(alone)


def test_a_name_without_the_seed_fragment_still_gets_a_label():
    recs = [_rec("first", 0, "adamw", [1.0]), _rec("second", 1, "adamw", [2.0])]
    (group,) = seed_groups(recs)
    assert group.label == "first (+ seeds)" and group.runs == ("first", "second")


def test_curves_are_numpys_mean_and_spread_across_seeds():
    curves = seed_curves(RECS, "loss")
    for opt in ("adamw", "sgd"):
        rows = curves[curves["group"] == f"g-{opt}"]
        stacked = np.stack([LOSSES[opt, s] for s in (0, 1, 2)])
        np.testing.assert_array_equal(rows["step"], np.arange(6))
        np.testing.assert_allclose(rows["mean"], stacked.mean(axis=0), rtol=1e-12)
        np.testing.assert_allclose(rows["std"], stacked.std(axis=0, ddof=1), rtol=1e-12)
        np.testing.assert_allclose(rows["min"], stacked.min(axis=0))
        np.testing.assert_allclose(rows["max"], stacked.max(axis=0))
        assert (rows["n"] == 3).all()


def test_curves_use_the_steps_every_seed_logged():
    recs = [_rec("e-s0", 0, "adamw", [1.0, 0.9, 0.8], evals=[0.5, np.nan, 0.7]),
            _rec("e-s1", 1, "adamw", [1.1, 1.0, 0.7], evals=[0.6, 0.65, 0.9])]
    curves = seed_curves(recs, "eval_accuracy")
    np.testing.assert_array_equal(curves["step"], [0, 2])  # step 1 has no value in e-s0
    np.testing.assert_allclose(curves["mean"], [0.55, 0.8])
    np.testing.assert_allclose(curves["std"], np.std([[0.5, 0.7], [0.6, 0.9]], axis=0, ddof=1))


def test_summary_numbers_are_numpys_mean_and_std():
    summary = seed_summary(RECS)
    final = summary[(summary["quantity"] == "final loss") & (summary["group"] == "g-sgd")].iloc[0]
    values = np.array([LOSSES["sgd", s][-1] for s in (0, 1, 2)])
    assert final["n"] == 3
    assert final["mean"] == pytest.approx(values.mean(), rel=1e-12)
    assert final["std"] == pytest.approx(values.std(ddof=1), rel=1e-12)
    best = summary[(summary["quantity"] == "best loss") & (summary["group"] == "g-adamw")].iloc[0]
    assert best["min"] == pytest.approx(min(LOSSES["adamw", s].min() for s in (0, 1, 2)))
    wall = summary[summary["quantity"] == "wall time (s)"]
    assert (wall["mean"] == 2.0).all() and (wall["std"] == 0.0).all()


def test_a_single_seed_has_no_std():
    summary = seed_summary([RECS[0]])
    assert summary["n"].eq(1).all() and summary["std"].isna().all()


def test_the_pages_cells_say_mean_std_and_a_smaller_n():
    from lorascope.report.seed_figures import summary_cells

    recs = [_rec("e-s0", 0, "adamw", [1.0, 0.8], evals=[np.nan, np.nan]),
            _rec("e-s1", 1, "adamw", [1.0, 0.6], evals=[np.nan, 0.75])]
    groups = seed_groups(recs)
    table = summary_cells(seed_summary(recs, groups), groups)
    assert list(table.columns) == ["e (2 seeds)"]
    assert table.loc["final loss", "e (2 seeds)"] == f"0.7 ± {np.std([0.8, 0.6], ddof=1):.4g}"
    assert table.loc["final eval_accuracy", "e (2 seeds)"] == "0.75 (n=1)"
