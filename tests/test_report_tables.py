"""The report, `info` and `analyze` agree by construction: every number the report draws or lists
is a row of an analysis table (read back from the drawn axes and the summary table and compared
with `analysis.analyze` run on its own, and with numpy), and `info`'s health section is
`analyze`'s findings."""
from __future__ import annotations

from dataclasses import replace

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest

from lorascope import analysis
from lorascope.analysis.overview import describe
from lorascope.report import MODULE_FIGURES, figures
from lorascope.report.canvas import Canvas
from lorascope.report.module_figures import FigureContext
from lorascope.report.summary import summary_rows
from lorascope.report.view import SUMMARY_TABLES, module_view, panel_steps, report_options
from report_fakes import fake_recording

NAME = "h.0.attn.c_attn"


class _KeepingCanvas(Canvas):
    """A canvas that keeps every figure it saved, by file name, to read the drawn data back."""

    def __init__(self) -> None:
        super().__init__()
        self.saved: dict[str, object] = {}

    def grid(self, *args, **kwargs):
        self._layouts.clear()  # a fresh figure each time, so a saved one is never redrawn
        return super().grid(*args, **kwargs)

    def save(self, panels, path):
        self.saved[path.name] = panels
        return super().save(panels, path)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """Two runs, one module, every figure kind drawn; and the analysis the report ran, run again
    on its own with the same options."""
    recs = [fake_recording("a", steps=30), fake_recording("b", seed=1, steps=30)]
    options = report_options(12, 16, panel_steps(recs))
    tables = sorted({t for k in MODULE_FIGURES.names() for t in MODULE_FIGURES.get(k).tables} | set(SUMMARY_TABLES))
    view = module_view(recs, NAME, tables, options)
    canvas = _KeepingCanvas()
    out = tmp_path_factory.mktemp("report")
    ctx = FigureContext(out, canvas, figures.run_colors(view.runs))
    for kind in MODULE_FIGURES.names():
        MODULE_FIGURES.get(kind).draw(view, "m", ctx)
    alone = analysis.analyze(recs, tables, options, modules=[NAME])
    return recs, view, canvas.saved, alone


def _lines(ax) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return {line.get_label(): (np.asarray(line.get_xdata(), float), np.asarray(line.get_ydata(), float))
            for line in ax.get_lines() if not line.get_label().startswith("_")}


def test_the_report_reads_the_tables_analyze_builds(report):
    _, view, _, alone = report
    for name, table in view.tables.items():
        pd.testing.assert_frame_equal(table, alone.tables[name], check_exact=True)
    assert view.health == [f for f in alone.findings if f.module is not None]


def test_moments_figure_draws_the_stats_table(report):
    _, view, saved, alone = report
    stats = alone.tables["stats"]
    panels = saved["m-moments.png"]
    for i, matrix in enumerate(("A", "B")):
        for j, column in enumerate(("mean", "std", "frobenius")):
            drawn = _lines(panels.axes[i, j])
            for run in view.runs:
                rows = stats[(stats.run == run) & (stats.matrix == matrix)]
                np.testing.assert_array_equal(drawn[run][0], rows.step)
                np.testing.assert_array_equal(drawn[run][1], rows[column])


def test_spectrum_figure_draws_the_singular_values_spectra_and_stats_tables(report):
    recs, view, saved, alone = report
    panels = saved["m-spectrum.png"]
    axes = list(panels.axes.flat)
    sv = alone.tables["singular_values"]
    for k, run in enumerate(view.runs):
        rows = sv[(sv.run == run) & (sv.matrix == "dW")]
        drawn = [line.get_ydata() for line in axes[k].get_lines()]
        for i, y in enumerate(drawn, start=1):
            np.testing.assert_array_equal(y, rows[rows["index"] == i].value)
    spectra, stats = alone.tables["spectra"], alone.tables["stats"]
    for ax, table, column in ((axes[2], spectra, "effective_rank"), (axes[3], stats, "frobenius")):
        for run, (x, y) in _lines(ax).items():
            rows = table[(table.run == run) & (table.matrix == "dW")]
            np.testing.assert_array_equal(x, rows.step)
            np.testing.assert_array_equal(y, rows[column])


def test_fits_figure_draws_the_fits_table(report):
    _, view, saved, alone = report
    fits = alone.tables["fits"]
    panels = saved["m-fits.png"]
    for i, matrix in enumerate(("A", "B")):
        for run, (x, y) in _lines(panels.axes[i, 1]).items():
            rows = fits[(fits.run == run) & (fits.matrix == matrix) & (fits.family == "gennorm")]
            np.testing.assert_array_equal(x, rows.step)
            # the line is the maximum-likelihood fits' finite β; the others are marks
            exact = (rows["method"] == "mle") & np.isfinite(rows["shape"])
            np.testing.assert_array_equal(y, np.where(exact, rows["shape"], np.nan))


def test_fits_figure_marks_infinite_beta_and_fits_that_are_not_maxima():
    from lorascope.report.module_figures import _beta_marks

    x = np.array([0, 5, 10, 15])
    beta = {"a": (x, np.array([np.inf, 3.0, 1e4, 2.0]), np.array(["mle", "mle", "bounded", "not_converged"], object))}
    line, infinite, inexact = _beta_marks(beta)
    np.testing.assert_array_equal(line["a"][1], [np.nan, 3.0, np.nan, np.nan])
    np.testing.assert_array_equal(infinite["a"][0], [0])
    assert infinite["a"][1][0] > 1e4  # above every finite β drawn
    np.testing.assert_array_equal(inexact["a"][0], [10, 15])
    np.testing.assert_array_equal(inexact["a"][1], [1e4, 2.0])


def test_histogram_figures_draw_the_histogram_tables(report):
    _, view, saved, alone = report
    step_hist = alone.tables["step_histograms"]
    panels = saved["m-hist-A.png"]
    for ax, at in zip(panels.axes.flat, dict.fromkeys(step_hist.at_step)):
        for run, (x, y) in _lines(ax).items():
            rows = step_hist[(step_hist.run == run) & (step_hist.matrix == "A") & (step_hist.at_step == at)]
            np.testing.assert_array_equal(x, np.r_[rows.left, rows.right.iloc[-1]])
            np.testing.assert_array_equal(y[:-1], rows["count"])
    hist = alone.tables["histograms"]
    mesh = saved["m-heatmap-B.png"].axes.flat[0].collections[0]
    rows = hist[(hist.run == "a") & (hist.matrix == "B")]
    counts = rows["count"].to_numpy().reshape(rows.step.nunique(), -1)
    np.testing.assert_array_equal(np.ma.filled(mesh.get_array(), 0).reshape(counts.T.shape), counts.T)


def test_similarity_figure_shows_the_similarity_table(report):
    _, view, saved, alone = report
    sim = alone.tables["similarity"]
    ax = saved["m-similarity.png"].axes.flat[0]  # A
    between = sim[(sim.reference == "run") & (sim.matrix == "A") & (sim.i == 4) & (sim.j == 4)].iloc[0]
    grid = ax.get_images()[0].get_array()
    assert grid[0, 1] == grid[1, 0] == between.phi
    assert grid[0, 0] == pytest.approx(1.0) and grid[1, 1] == pytest.approx(1.0)


def test_summary_rows_are_table_rows_and_equal_numpy(report):
    recs, view, _, alone = report
    t = alone.tables
    for row, rec in zip(summary_rows(view), recs):
        run, m = rec.run_name, rec.modules[NAME]
        last = int(rec.steps[-1])
        assert row["final step"] == last
        dw = lambda table: t[table][(t[table].run == run) & (t[table].matrix == "dW") & (t[table].step == last)]  # noqa: E731
        assert row["final ‖ΔW‖_F"] == dw("stats").frobenius.iloc[0]
        assert row["final effective rank of ΔW"] == dw("spectra").effective_rank.iloc[0]
        assert row["amplification (needs W0)"] == dw("amplification").amplification.iloc[0]
        W = m.delta_w(-1).astype(np.float64)  # the independent reference
        assert row["final ‖ΔW‖_F"] == pytest.approx(np.linalg.norm(W), rel=1e-6)
        U, _, Vt = np.linalg.svd(W)
        proj = np.linalg.norm(U[:, :m.rank].T @ m.W0.astype(np.float64) @ Vt[:m.rank].T)
        assert row["amplification (needs W0)"] == pytest.approx(np.linalg.norm(W) / proj, rel=1e-6)
        s = np.linalg.svd(W, compute_uv=False)[:m.rank]
        p = s / s.sum()  # Roy & Vetterli: the entropy of the normalised singular values
        assert row["final effective rank of ΔW"] == pytest.approx(np.exp(-(p * np.log(p)).sum()), rel=1e-5)
        fits = t["fits"][(t["fits"].run == run) & (t["fits"].matrix == "A")].drop_duplicates("step")
        normal = fits[fits.best_family == "normal"].step
        assert (row["A normal from step"] == normal.iloc[0]) if len(normal) else np.isnan(row["A normal from step"])


def test_info_health_is_analyze_findings():
    rec = fake_recording("stuck", steps=40)
    rec.modules[NAME].B[:] = 0.0  # B never leaves zero: an error the checks name
    text = describe(rec, health=True, max_steps=10)
    shown = text.split("\nhealth\n", 1)[1].splitlines()
    want = analysis.health_findings(rec, analysis.Options(read_steps=10))
    assert shown == [f"  {replace(f, run=None)}" for f in want] and any("B is still exactly zero" in s for s in shown)
    # on a recording shorter than the bound, exactly what `lorascope analyze` prints
    full = describe(rec, health=True, max_steps=50).split("\nhealth\n", 1)[1].splitlines()
    assert full == [f"  {replace(f, run=None)}" for f in analysis.health_findings(rec)]
