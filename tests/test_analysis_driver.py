"""`analyze` builds every registered table in one pass: the tables across runs and the derived
ones are library tables like the rest, only the snapshots the asked tables read are read, and a
read-time sample (`Options.read_steps`) gives the numbers of a recording holding only those
snapshots. Known answers come from numpy on the fakes' arrays."""
from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from lorascope import analysis
from lorascope.analysis import driver
from lorascope.analysis.selection import evenly
from lorascope.errors import UsageError

from analysis_fakes import lora_run
from report_fakes import FakeModule, FakeRecording


@pytest.fixture
def runs():
    return [lora_run("adamw", seed=0, T=9), lora_run("came", seed=1, T=9)]


def test_every_declared_table_is_implemented_and_described():
    analysis.TABLES.load()  # raises if a declared table has no implementation
    assert analysis.TABLES.names()[:5] == ["stats", "spectra", "singular_values", "fits", "geometry"]
    assert {"similarity", "histograms", "step_histograms", "family_changes", "findings"} <= set(analysis.TABLES)
    assert all(analysis.TABLES.description(n) for n in analysis.TABLES.names())


def test_unknown_table_and_module_are_refused_with_the_valid_names(runs):
    with pytest.raises(UsageError, match="unknown analysis table 'bogus'; choose one of: stats"):
        analysis.analyze(runs, ("bogus",))
    with pytest.raises(UsageError, match="no module matches '\\*.nothing'"):
        analysis.analyze(runs, ("stats",), modules="*.nothing")
    with pytest.raises(UsageError, match="no recording has module 'h.9.q'"):
        analysis.analyze(runs, ("stats",), modules=["h.9.q"])


def test_modules_by_glob_and_by_name(runs):
    stats = analysis.analyze(runs, ("stats",), modules="*.attn.*", health=False).tables["stats"]
    assert set(stats.module) == {"transformer.h.0.attn.c_attn"} and set(stats.run) == {"adamw", "came"}
    named = analysis.analyze(runs, ("stats",), modules=["transformer.h.1.mlp.c_fc"], health=False).tables["stats"]
    assert set(named.module) == {"transformer.h.1.mlp.c_fc"}


def test_one_call_builds_the_tables_across_runs_and_the_derived_ones(runs):
    """What `lorascope analyze --tables all` writes comes from one library call; each table is the
    one its own function builds, and only the tables asked for come back."""
    names = ("similarity", "histograms", "step_histograms", "family_changes", "findings")
    got = analysis.analyze(runs, names, analysis.Options(fit_samples=64))
    assert list(got.tables) == list(names)  # the fits behind family_changes are not returned
    pd.testing.assert_frame_equal(got.tables["similarity"], analysis.similarity_table(runs))
    pd.testing.assert_frame_equal(got.tables["histograms"], analysis.histogram_table(runs))
    fits = analysis.fits_table(runs, analysis.Options(fit_samples=64))
    pd.testing.assert_frame_equal(got.tables["family_changes"], analysis.best_family_changes(fits))
    assert [str(f) for f in got.findings] == [str(f) for f in analysis.health_findings(runs)]


def test_findings_table_has_a_row_per_finding():
    rec = lora_run("dead")
    rec.modules["transformer.h.0.attn.c_attn"].B[:] = 0.0
    rec.scalars.loc[2, "loss"] = np.nan
    got = analysis.analyze(rec, ("findings",), health=False)  # the table asks for the checks itself
    table = got.tables["findings"]
    assert len(table) == len(got.findings) >= 2
    assert list(table.columns) == ["run", "module", "matrix", "step", "severity", "message"]
    for row, f in zip(table.itertuples(index=False), got.findings):
        assert (row.run, row.severity, row.message) == (f.run, f.severity, f.message)
        empty = [None if pd.isna(v) else v for v in (row.module, row.matrix, row.step)]
        assert empty == [f.module, f.matrix, f.step]  # a run-level finding has none of the three
    loss = table[table.module.isna()].iloc[0]
    assert loss.step == 3 and "the loss is nan" in loss.message  # scalars row 2 is step 3


def test_step_histograms_share_bins_among_the_runs_at_each_step_only():
    a, b = lora_run("a", seed=0, T=8), lora_run("b", seed=1, T=6)  # b ends earlier: step 25
    table = analysis.step_histogram_table([a, b], steps=(5, 12, 35), bins=8)
    assert list(dict.fromkeys(table.at_step)) == [5, 12, 35]
    for (name, matrix, at), g in table.groupby(["module", "matrix", "at_step"]):
        # each run at its snapshot nearest the step asked for (b's last, 25, for 35)
        shown = {run: int(rows.step.iloc[0]) for run, rows in g.groupby("run")}
        assert shown == {"a": {5: 5, 12: 10, 35: 35}[at], "b": {5: 5, 12: 10, 35: 25}[at]}
        values = {run: getattr(rec.modules[name], matrix)[shown[run] // 5].astype(np.float64).reshape(-1)
                  for run, rec in (("a", a), ("b", b))}
        both = np.concatenate(list(values.values()))
        edges = np.linspace(both.min(), both.max(), 9)  # shared by the two runs at this step
        for run, rows in g.groupby("run"):
            np.testing.assert_allclose(np.r_[rows.left, rows.right.iloc[-1]], edges, rtol=1e-12)
            np.testing.assert_array_equal(rows["count"], np.histogram(values[run], edges)[0])
    default = analysis.step_histogram_table([a, b], bins=8)
    assert list(dict.fromkeys(default.at_step)) == [0, 35]  # the first run's first and last step


def test_tables_across_runs_cover_the_modules_every_run_has():
    a = lora_run("a", modules=("h.0.q", "h.0.v"))
    b = lora_run("b", modules=("h.0.v", "h.1.v"), seed=1)
    got = analysis.analyze([a, b], ("stats", "similarity"), health=False).tables
    assert set(got["stats"].module) == {"h.0.q", "h.0.v", "h.1.v"}
    assert set(got["similarity"].module) == {"h.0.v"}
    with pytest.raises(UsageError, match="no module in common"):
        analysis.analyze([a, lora_run("c", modules=("x.0.k",))], ("similarity",))


def test_rows_keep_the_order_of_runs_then_modules(runs):
    both = analysis.stats_table(runs)
    one_by_one = pd.concat([analysis.stats_table(r) for r in runs], ignore_index=True)
    pd.testing.assert_frame_equal(both, one_by_one)


def test_reading_only_what_the_tables_read_changes_no_number(runs, monkeypatch):
    """Asked only for tables that read a few snapshots (fits, geometry, similarity, histograms),
    analyze reads just those; the numbers equal those of reading every snapshot."""
    reads = []
    read = driver.read_series
    monkeypatch.setattr(driver, "read_series", lambda module, buffers=None, index=None:
                        reads.append(None if index is None else len(index)) or read(module, buffers, index))
    o = analysis.Options(fit_steps=3, max_steps=4, fit_samples=64)
    names = ("fits", "geometry", "similarity", "histograms")
    sampled = analysis.analyze(runs, names, o, health=False)
    assert reads and all(n is not None and n <= 7 for n in reads)  # of 9 snapshots
    reads.clear()
    whole = analysis.analyze(runs, (*names, "stats"), o, health=False)
    assert reads == [None] * len(reads)
    for name in names:
        pd.testing.assert_frame_equal(sampled.tables[name], whole.tables[name], check_exact=True)


def test_histograms_read_a_run_again_when_its_snapshots_are_not_kept(runs, monkeypatch):
    """Beyond `KEEP_BYTES` the histograms' second pass reads each run's snapshots again."""
    from lorascope.analysis import multirun

    kept = analysis.histogram_table(runs, bins=8)
    reads = []
    for rec in runs:
        for m in rec.modules.values():
            for name in ("A", "B"):
                setattr(m, name, _Counting(getattr(m, name), reads))
    monkeypatch.setattr(multirun, "KEEP_BYTES", 0)
    again = analysis.histogram_table(runs, bins=8)
    pd.testing.assert_frame_equal(again, kept, check_exact=True)
    assert reads.count("index") == 2 * 2 * 2  # every run's A and B of every module, once more


class _Counting(np.ndarray):
    """A series that notes each read of snapshots at indices (how the histograms read again)."""

    def __new__(cls, values, reads):
        out = np.asarray(values).view(cls)
        out.reads = reads
        return out

    def __array_finalize__(self, obj):
        self.reads = getattr(obj, "reads", None)

    def __getitem__(self, key):
        if isinstance(key, np.ndarray) and self.reads is not None:
            self.reads.append("index")
        return np.asarray(super().__getitem__(key))


def _holding(rec: FakeRecording, index: np.ndarray) -> FakeRecording:
    """The same run, had it recorded only the snapshots at `index`."""
    mods = {name: FakeModule(m.A[index], m.B[index], m.scaling, m.layer_index, m.W0)
            for name, m in rec.modules.items()}
    return FakeRecording(rec.run_name, rec.steps[index], mods, rec.scalars)


def test_a_read_time_sample_gives_the_numbers_of_a_recording_of_only_those_snapshots():
    rec = lora_run("long", T=40, seed=3)
    index = evenly(40, 9)
    o = analysis.Options(read_steps=9, fit_samples=64, max_steps=None)
    names = ("stats", "spectra", "singular_values", "fits", "geometry", "similarity", "histograms")
    got = analysis.analyze(rec, names, o)
    want = analysis.analyze(_holding(rec, index), names, dataclasses.replace(o, read_steps=None))
    for name in names:
        g, w = got.tables[name], want.tables[name]
        if name == "fits":  # the one column that says the recording held more
            assert (g.recorded_steps == 40).all() and (w.recorded_steps == 9).all()
            g, w = g.drop(columns="recorded_steps"), w.drop(columns="recorded_steps")
        pd.testing.assert_frame_equal(g, w, check_exact=True)
    assert [str(f) for f in got.findings] == [str(f) for f in want.findings]
    assert sorted(set(got.tables["stats"].step)) == [int(s) for s in rec.steps[index]]


def test_a_read_time_sample_keeps_the_histogram_steps():
    rec = lora_run("long", T=40)
    o = analysis.Options(read_steps=4, histogram_steps=(5, 15))
    stats = analysis.analyze(rec, ("stats", "step_histograms"), o, health=False).tables
    assert sorted(set(stats["stats"].step)) == [0, 5, 15, 65, 130, 195]
    assert set(stats["step_histograms"].step) == {5, 15}


def test_gradient_rows_follow_the_sample_and_can_be_left_out():
    rec = lora_run("g", T=12)
    rng = np.random.default_rng(0)
    for m in rec.modules.values():
        m.grad_A = rng.normal(size=m.A.shape).astype(np.float32)
    rec.grad_steps = rec.steps.copy()
    sampled = analysis.stats_table(rec, analysis.Options(read_steps=4))
    grads = sampled[sampled.matrix == "grad_A"]
    assert sorted(set(grads.step)) == [int(s) for s in rec.steps[evenly(12, 4)]]
    m = rec.modules["transformer.h.0.attn.c_attn"]
    row = grads[(grads.module == "transformer.h.0.attn.c_attn") & (grads.step == rec.steps[4])].iloc[0]
    assert row.frobenius == pytest.approx(np.linalg.norm(m.grad_A[4].astype(np.float64)), rel=1e-6)
    without = analysis.stats_table(rec, analysis.Options(other_series=False))
    assert set(without.matrix) == {"A", "B", "dW"}


def test_options_refuse_what_cannot_work():
    for bad in (dict(workers=0), dict(bins=0), dict(read_steps=1), dict(criterion="waic")):
        with pytest.raises(UsageError):
            analysis.Options(**bad)
