"""The report's pieces with known answers: step selection, safe names, config differences, the
runs table, figure functions (what they draw, read back from the axes), and the HTML escaping."""
from __future__ import annotations

from html.parser import HTMLParser

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from lorascope.analysis import Options
from lorascope.analysis.health import Finding
from lorascope.analysis.overview import config_differences, runs_table, scalar_series
from lorascope.analysis.selection import common_modules, evenly, role
from lorascope.errors import UsageError
from lorascope.report import MODULE_FIGURES, figures
from lorascope.report.canvas import Canvas
from lorascope.report.html import FigureRef, ModuleBlock, ModuleGroup, Page, render_page, render_table
from lorascope.report.paths import default_report_name, inside, safe_name
from lorascope.report.spectral_figures import final_similarity
from lorascope.report.summary import normal_from, summary_rows
from lorascope.report.view import SUMMARY_TABLES, histogram_steps, module_view, panel_steps, report_options
from report_fakes import fake_recording


def _view(recs, name, max_steps=8, kinds=None):
    """A module as the report sees it: the analysis tables its figures and summary read."""
    tables = {t for k in (kinds or MODULE_FIGURES.names()) for t in MODULE_FIGURES.get(k).tables}
    tables |= set(SUMMARY_TABLES)
    return module_view(recs, name, sorted(tables), report_options(max_steps, 16, panel_steps(recs)))


def test_snapshots_read_are_bounded_and_keep_both_ends():
    assert evenly(10, 4).tolist() == [0, 3, 6, 9]
    assert evenly(5, 10).tolist() == [0, 1, 2, 3, 4]
    idx = evenly(2001, 120)
    assert len(idx) <= 120 and idx[0] == 0 and idx[-1] == 2000
    with pytest.raises(UsageError):
        Options(read_steps=1)


def test_histogram_steps_first_early_last():
    # 101 snapshots: early picks are geometric within the first 20 %: indices 1, 4, 20.
    assert histogram_steps(np.arange(101) * 10) == [0, 10, 40, 200, 1000]
    assert histogram_steps(np.array([0, 5, 9])) == [0, 5, 9]
    assert histogram_steps(np.array([], dtype=int)) == []


@pytest.mark.parametrize("raw, expected", [
    ("../../x", "x"),
    ("<script>alert(1)</script>", "script-alert-1-script"),
    ("/etc/passwd", "etc-passwd"),
    ("..", "run"),
    ("adamw-r8.s0", "adamw-r8.s0"),
    (".hidden", "hidden"),
])
def test_safe_name(raw, expected):
    assert safe_name(raw) == expected


def test_inside_refuses_escape(tmp_path):
    assert inside(tmp_path, "a.png") == tmp_path / "a.png"
    for bad in ("../a.png", "/tmp/a.png", "."):
        with pytest.raises(UsageError):
            inside(tmp_path, bad)


def test_default_report_name():
    assert default_report_name(["../../x"]) == "x"
    assert default_report_name(["a", "b"]) == "a_vs_b"
    assert default_report_name([f"run{i}" for i in range(6)]) == "run0-and-5-more"


def test_config_differences_only_differing_keys():
    a = {"optim": {"optimizer": "adamw", "lr": 1e-3}, "lora": {"rank": 8, "targets": ["attn"]}}
    b = {"optim": {"optimizer": "came", "lr": 1e-3}, "lora": {"rank": 8, "targets": ["attn", "mlp"]}}
    assert config_differences([a, b]) == ["optim.optimizer", "lora.targets"]
    assert config_differences([a, dict(a, seed=1)]) == ["seed"]


def test_runs_table_final_and_best_loss():
    rec = fake_recording("r")
    scalars = rec.scalars.copy()
    scalars.loc[len(scalars) - 1, "loss"] = np.nan  # the last step's loss was not reported
    rec.scalars = scalars
    table = runs_table([rec, fake_recording("s", seed=1, optimizer="came")])
    loss = rec.scalars["loss"].to_numpy()
    assert table.loc["final loss", "r"] == pytest.approx(loss[-2])
    assert table.loc["best loss", "r"] == pytest.approx(np.nanmin(loss))
    assert table.loc["optim.optimizer", "s"] == "came"
    assert table.loc["final eval_loss", "r"] == pytest.approx(2.0)
    assert table.loc["LoRA parameters (recorded modules)", "r"] == 2 * 4 * (24 + 16)
    # eval metrics exist only where evaluated: NaN rows are dropped from the series
    x, y = scalar_series([rec], "eval_loss")["r"]
    assert x.tolist() == [4.0, 8.0, 12.0] and np.all(y == 2.0)


def test_common_modules_and_no_common_module_error():
    a = fake_recording("a", modules=("h.0.q", "h.0.v"))
    b = fake_recording("b", modules=("h.0.v", "h.1.v"))
    assert common_modules([a, b]) == ["h.0.v"]
    c = fake_recording("c", modules=("h.1.k",))
    with pytest.raises(UsageError, match="no module in common"):
        common_modules([a, c])
    with pytest.raises(UsageError, match="matches"):
        common_modules([a, b], pattern="*.k")


def test_the_report_reads_the_chosen_snapshots():
    rec = fake_recording("a", steps=30)
    view = _view([rec], "h.0.attn.c_attn", max_steps=5)
    steps, _ = view.series("stats", "a", "A", "mean")
    assert steps[0] == 0 and steps[-1] == 30 and len(steps) == 5 + 3  # evenly spaced + the early panels
    panels = view.rows("step_histograms", "a", "A")
    assert list(dict.fromkeys(panels.at_step)) == histogram_steps(rec.steps)
    for step, rows in panels.groupby("step"):
        values = rec.modules["h.0.attn.c_attn"].A[step].astype(np.float64).reshape(-1)
        edges = np.append(rows.left.to_numpy(), rows.right.iloc[-1])
        np.testing.assert_allclose(edges, np.linspace(values.min(), values.max(), 17), rtol=1e-12)
        np.testing.assert_array_equal(rows["count"], np.histogram(values, edges)[0])


def _axes() -> object:
    return Figure().subplots()


def test_histogram_overlay_draws_the_counts():
    ax = _axes()
    edges = np.array([0.0, 1.0, 2.0, 3.0])
    figures.plot_histogram_overlay(ax, edges, {"a": np.array([1, 5, 2]), "b": np.array([0, 1, 0])},
                                   {"a": "#000000", "b": "#ffffff"}, title="t")
    lines = ax.get_lines()
    assert [line.get_label() for line in lines] == ["a", "b"]
    assert lines[0].get_ydata().tolist() == [1, 5, 2, 2]
    assert ax.get_xlim() == (0.0, 3.0)


def test_series_and_similarity_figures():
    ax = _axes()
    figures.plot_series(ax, {"a": (np.arange(3), np.array([1.0, 2.0, 4.0]))}, {"a": "#000000"},
                        ylabel="loss", logy=True)
    assert ax.get_yscale() == "log" and ax.get_ylabel() == "loss"
    ax = _axes()
    figures.plot_similarity_matrix(ax, np.array([[1.0, 0.25], [0.25, 1.0]]), ["a", "b"])
    assert sorted(t.get_text() for t in ax.texts) == ["0.25", "0.25", "1.00", "1.00"]


def test_plain_text_escapes_mathtext():
    assert figures.plain_text("a$b$") == r"a\$b\$"
    ax = _axes()
    figures.plot_series(ax, {"cost $5": (np.arange(2), np.ones(2))}, {"cost $5": "#000000"}, ylabel="y")
    ax.figure.savefig(__import__("io").BytesIO(), format="png")  # a bare $ would raise here


def test_run_colors_stable_and_distinct():
    colors = figures.run_colors(["a", "b", "c"])
    assert len(set(colors.values())) == 3
    assert figures.run_colors(["a", "b"])["a"] == colors["a"]


def test_canvas_reuses_one_figure_per_layout():
    canvas = Canvas()
    first = canvas.grid(1, 2)
    first.axes[0, 0].plot([0, 1], [0, 1])
    again = canvas.grid(1, 2)
    assert again.figure is first.figure and not again.axes[0, 0].get_lines()
    assert canvas.grid(2, 2).figure is not first.figure


def test_final_similarity_of_identical_and_orthogonal_runs():
    a = fake_recording("a", modules=("m",), shape=(8, 8), rank=2)
    b = fake_recording("b", modules=("m",), shape=(8, 8), rank=2)
    eye = np.eye(8, dtype=np.float32)
    a.modules["m"].A[-1] = eye[:2]
    a.modules["m"].B[-1] = eye[:, :2]
    b.modules["m"].A[-1] = eye[2:4]  # orthogonal row space
    b.modules["m"].B[-1] = eye[:, :2]  # the same column space
    view = _view([a, b], "m", max_steps=4, kinds=["similarity"])
    np.testing.assert_allclose(final_similarity(view, "A")[0], [[1, 0], [0, 1]], atol=1e-12)
    np.testing.assert_allclose(final_similarity(view, "B")[0], [[1, 1], [1, 1]], atol=1e-12)
    assert final_similarity(view, "A")[1] == [2 / 8]  # the random baseline max(i, j) / d of the pair


def test_module_role():
    assert role("transformer.h.11.attn.c_attn", 11) == "attn.c_attn"
    assert role("model.layers.3.mlp.down_proj", 3) == "mlp.down_proj"
    assert role("classifier.dense", None) == "dense"


def test_normal_from():
    steps = np.array([0, 5, 10, 15])
    assert normal_from(steps, np.array(["uniform", "uniform", "normal", "t"], dtype=object)) == 10
    assert np.isnan(normal_from(steps, np.array(["uniform"] * 4, dtype=object)))


class _Collect(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.text = [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def test_page_escapes_every_recording_string():
    evil = '<script>alert(1)</script>'
    table = pd.DataFrame({evil: [evil, 1.5]}, index=["optim.optimizer", "final loss"])
    page = Page(
        title=f"report {evil}", run_colors={evil: "#000000"}, runs_table=table,
        training_figures=[FigureRef("training.png", evil)],
        groups=[ModuleGroup(f"layer 0 · {evil}", [ModuleBlock(evil, "rank 2", [FigureRef('a".png', evil)])])],
        summary_table=pd.DataFrame({"run": [evil]}), notes=[evil],
        health={evil: [Finding("warning", evil, "dW", 3, evil)]},
    )
    text = render_page(page)
    parser = _Collect()
    parser.feed(text)
    assert "script" not in [tag for tag, _ in parser.tags]
    assert "<script" not in text.lower()
    assert any(evil in chunk for chunk in parser.text)  # shown as text, not markup
    assert ('img', {'src': 'a".png', 'alt': evil, 'loading': 'lazy'}) in parser.tags


def test_render_table_formats_numbers():
    text = render_table(pd.DataFrame({"n": [1234567], "x": [0.000123456], "y": [float("nan")]}))
    assert "1,234,567" in text and "0.0001235" in text and "—" in text


def test_report_survives_nan_weights(tmp_path):
    """A run whose weights went NaN still gets every figure; the numbers that cannot exist show
    as missing and the health check names the problem."""
    from lorascope.report import build_report

    # another optimizer as well as another seed: two configs, not two seeds of one (no seed view)
    good, bad = fake_recording("good"), fake_recording("bad", seed=1, optimizer="came")
    bad.modules["h.0.attn.c_attn"].A[-3:] = np.nan
    bad.modules["h.0.attn.c_attn"].B[-1, 0, 0] = np.inf
    index = build_report([good, bad], tmp_path, max_modules=1)
    html = index.read_text(encoding="utf-8")
    # the training figure, then the module's: 8 of A and B's distributions and ΔW's spectrum, 4
    # of the update against W0 and between the factors
    assert len(list(tmp_path.glob("*.png"))) == 1 + 8 + 4
    assert "NaN/Inf values in A" in html


def test_report_of_runs_without_w0(tmp_path):
    """No W0 recorded: no amplification rows, and the summary says the amplification is missing."""
    from lorascope.report import build_report

    runs = [fake_recording("a", with_w0=False), fake_recording("b", seed=1, with_w0=False)]
    index = build_report(runs, tmp_path, max_modules=1, figure_kinds=["moments"])
    view = _view(runs, "h.0.attn.c_attn", kinds=["moments"])
    assert view.tables["amplification"].empty and "amplification" in view.tables["amplification"].columns
    rows = summary_rows(view)
    assert all(np.isnan(r["amplification (needs W0)"]) and r["final ‖ΔW‖_F"] > 0 for r in rows)
    assert "amplification (needs W0)" in index.read_text(encoding="utf-8")


def test_recording_without_snapshots_is_refused(tmp_path):
    from lorascope.report import build_report

    empty = fake_recording("empty")
    empty.steps = empty.steps[:0]
    with pytest.raises(UsageError, match="no snapshot yet"):
        build_report([empty], tmp_path)


_NOTE = Finding("note", "q", "dW", 3, "about one direction holds the update")
_WARNING = Finding("warning", None, None, 5, "the loss diverges")


@pytest.mark.parametrize("found, heading", [
    ({}, "No health findings."),
    ({"a": [_NOTE]}, "<h3>Health notes</h3>"),
    ({"a": [_NOTE], "b": [_WARNING]}, "<h3>Health warnings</h3>"),
])
def test_the_health_list_is_headed_by_what_it_holds(found, heading):
    page = Page(title="t", run_colors={}, run_labels={}, runs_table=pd.DataFrame(), training_figures=[],
                groups=[], summary_table=pd.DataFrame(), health=found, notes=[])
    assert heading in render_page(page)


def test_the_chance_level_of_accuracy_is_a_dashed_line():
    """One grey line, named with its value, where every run evaluated the same set; one line per
    run in its colour where the sets differ (other seeds split other reviews); none without one."""
    import matplotlib.pyplot as plt

    from lorascope.report import figures

    colors = {"a": "#0072b2", "b": "#d55e00"}
    fig, axes = plt.subplots(1, 3)
    figures.mark_chance(axes[0], {"a": 0.602, "b": 0.602}, colors, "majority label")
    figures.mark_chance(axes[1], {"a": 0.602, "b": 0.531}, colors, "majority label")
    figures.mark_chance(axes[2], {"a": float("nan")}, colors, "majority label")
    (line,) = axes[0].get_lines()
    assert line.get_linestyle() == "--" and line.get_ydata()[0] == 0.602
    assert [t.get_text() for t in axes[0].texts] == ["majority label 0.602"]
    assert sorted((ln.get_ydata()[0], ln.get_color()) for ln in axes[1].get_lines()) == [
        (0.531, "#d55e00"), (0.602, "#0072b2")]
    assert axes[2].get_lines() == []
    plt.close(fig)
