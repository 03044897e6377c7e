"""The report's figures as figures in a paper (issue 13, item 6), each rule read back from the
figure's own data, never from pixels: legend labels made of what differs between the runs and
never cut inside a word; no text under 8 pt; evaluations done once drawn as markers in one
shared panel; whole-step ticks on every step axis; histogram strips no wider than a slide; runs
whose scales differ by more than 10× on bins of their own; φ between runs beside its random
baseline, which a Monte-Carlo estimate confirms."""
from __future__ import annotations

import math

from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest
from matplotlib.text import Text
from matplotlib.ticker import MaxNLocator

from lorascope.analysis.geometry import subspace_similarity
from lorascope.analysis.labels import MAX_PARTS, run_labels
from lorascope.analysis.overview import runs_table
from lorascope.analysis.stats import run_edges
from lorascope.report import MODULE_FIGURES, figures
from lorascope.report.build import _training_figures, split_evaluations
from lorascope.report.canvas import MIN_PANEL_IN, SLIDE_IN, Canvas, columns_that_fit, figure_width
from lorascope.report.html import Page, render_page
from lorascope.report.module_figures import HISTOGRAM_PANEL, FigureContext, histogram_layout
from lorascope.report.spectral_figures import final_similarity
from lorascope.report.view import SUMMARY_TABLES, module_view, panel_steps, report_options
from report_fakes import fake_recording

MODULE = "h.0.attn.c_attn"


@dataclass
class Drawn:
    """What a saved figure showed, taken when it was saved (the Canvas reuses the figure)."""
    width: float
    grid: tuple[int, int]
    visible: list[tuple[int, int]]  # (row, column) of each shown panel
    legend: list[str]
    fontsizes: list[float]
    step_locators: list[object]  # the x major locator of each shown panel labelled in steps
    xlabels: list[str]
    xticklabels: list[list[str]]
    colorbar_lines: list[float]


class RecordingCanvas(Canvas):
    def __init__(self) -> None:
        super().__init__()
        self.drawn: dict[str, Drawn] = {}

    def save(self, panels, path: Path) -> Path:
        out = super().save(panels, path)
        fig = panels.figure
        nrows, ncols = panels.axes.shape
        shown = [(r, c) for r in range(nrows) for c in range(ncols) if panels.axes[r, c].get_visible()]
        texts = [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()]
        axes = [panels.axes[r, c] for r, c in shown]
        cbar = panels.colorbar_ax
        self.drawn[path.name] = Drawn(
            width=fig.get_figwidth(), grid=(nrows, ncols), visible=shown,
            legend=[t.get_text() for lg in fig.legends for t in lg.get_texts()],
            fontsizes=[t.get_fontsize() for t in texts],
            step_locators=[ax.xaxis.get_major_locator() for ax in axes
                           if ax.get_xlabel() == figures.STEP_LABEL],
            xlabels=[ax.get_xlabel() for ax in axes],
            xticklabels=[[t.get_text() for t in ax.get_xticklabels()] for ax in axes],
            colorbar_lines=[float(line.get_ydata()[0]) for line in cbar.get_lines()] if cbar is not None else [],
        )
        return out


def _view(recs, kinds):
    tables = {t for k in kinds for t in MODULE_FIGURES.get(k).tables} | set(SUMMARY_TABLES)
    return module_view(recs, MODULE, sorted(tables), report_options(8, 16, panel_steps(recs)))


def _draw(recs, kinds, tmp_path, labels=None) -> dict[str, Drawn]:
    canvas = RecordingCanvas()
    colors = figures.run_colors([r.run_name for r in recs])
    ctx = FigureContext(tmp_path, canvas, colors, labels=labels or {})
    view = _view(recs, kinds)
    for kind in kinds:
        MODULE_FIGURES.get(kind).draw(view, "m", ctx)
    return canvas.drawn


def _sweep_pair():
    a = fake_recording("sweep-came-gaussian_b-s0", seed=0, optimizer="came")
    b = fake_recording("sweep-adamw-kaiming_uniform-s0", seed=0, optimizer="adamw")
    a.config["lora"]["init"], b.config["lora"]["init"] = "gaussian_b", "kaiming_uniform"
    for rec in (a, b):
        rec.config["name"], rec.config["output"] = rec.run_name, f"recordings/{rec.run_name}.h5"
    return a, b


# --- legend labels ---------------------------------------------------------------------------

def test_labels_are_what_differs_between_the_runs():
    a, b = _sweep_pair()
    labels = run_labels([a.run_name, b.run_name], [a.config, b.config])
    assert labels == {a.run_name: "came · gaussian_b", b.run_name: "adamw · kaiming_uniform"}


def test_numbers_in_labels_carry_their_key():
    configs = [{"optim": {"lr": 1e-3}, "lora": {"rank": 4}}, {"optim": {"lr": 1e-2}, "lora": {"rank": 16}}]
    assert list(run_labels(["x", "y"], configs).values()) == ["lr=0.001 · rank=4", "lr=0.01 · rank=16"]


@pytest.mark.parametrize("configs", [
    [{"name": "a"}, {"name": "b"}],  # differ only in name: nothing to say
    [{"k": {"a": i, "b": i, "c": i, "d": i, "e": i}} for i in range(2)],  # more keys than MAX_PARTS
    [{"x": "same", "y": 1}, {"x": "same", "y": 1}],  # the same label twice
])
def test_labels_fall_back_to_run_names(configs):
    assert len(configs[0].get("k", {})) in (0, MAX_PARTS + 1)
    assert run_labels(["first", "second"], configs) == {"first": "first", "second": "second"}


def test_a_single_run_keeps_its_name():
    assert run_labels(["only"], [{"optim": {"lr": 1e-3}}]) == {"only": "only"}


@pytest.mark.parametrize("text", [
    "sweep-adafactor_relative-kaiming_uniform-lr1e-3-s2", "came · gaussian_a_uniform_b · lr=0.0001",
    "a_very_long_name_with_parts · short", "plain words in a long run label for the legend",
])
def test_wrapped_labels_keep_every_word_whole(text):
    wrapped = figures.wrap_label(text, 14)
    lines = wrapped.split("\n")
    assert "".join(lines).replace(" ", "") == text.replace(" ", "")  # nothing dropped
    def pieces(s: str) -> list[str]:  # the unbreakable runs of characters between break points
        return s.replace("·", " ").replace("_", "_ ").replace("-", "- ").split()

    words = pieces(text)
    for line in lines:
        assert all(piece in words for piece in pieces(line))  # broken only after a separator
    assert all(len(line.removesuffix(" ·")) <= 14 for line in lines if len(line.split()) > 1)


def test_shortened_titles_end_at_a_word():
    assert figures.plain_text("gaussian_b · adamw: final (step 6)", 20) == "gaussian_b · adamw:…"
    assert figures.plain_text("kaiming_uniform", 10) == "kaiming_…"
    assert figures.plain_text("supercalifragilistic", 8) == "superca…"  # one word longer than the limit


def test_legends_show_the_labels_and_the_page_pairs_them_with_full_names(tmp_path):
    a, b = _sweep_pair()
    labels = run_labels([a.run_name, b.run_name], [a.config, b.config])
    drawn = _draw([a, b], ["moments", "histograms"], tmp_path, labels)
    for figure in drawn.values():
        assert figure.legend == [figures.wrap_label(labels[r]) for r in (a.run_name, b.run_name)]
    table = runs_table([a, b], labels)
    assert table.index[0] == "label in figures"
    assert table.loc["label in figures"].tolist() == ["came · gaussian_b", "adamw · kaiming_uniform"]
    page = render_page(Page("t", figures.run_colors([a.run_name, b.run_name]), table, [], [], pd.DataFrame(),
                            run_labels=labels))
    assert "<b>came · gaussian_b</b> sweep-came-gaussian_b-s0" in page


def test_no_text_under_8_points_in_any_figure(tmp_path):
    a, b = _sweep_pair()
    drawn = _draw([a, b], MODULE_FIGURES.names(), tmp_path)
    assert len(drawn) >= 10
    for name, figure in drawn.items():
        assert min(figure.fontsizes) >= 8, name


# --- evaluations done once -------------------------------------------------------------------

def _evaluated_at_the_end(name, seed):
    rec = fake_recording(name, seed=seed)
    last = np.arange(len(rec.scalars)) == len(rec.scalars) - 1
    rec.scalars["eval_loss"] = np.where(last, 0.7 + seed / 10, np.nan)
    rec.scalars["eval_accuracy"] = np.where(last, 0.6, np.nan)
    rec.scalars["eval_runtime"] = np.where(last, 3.2, np.nan)  # HF's bookkeeping: never drawn
    return rec


def test_single_evaluations_share_one_panel_of_markers(tmp_path):
    recs = [_evaluated_at_the_end("a", 0), _evaluated_at_the_end("b", 1)]
    assert split_evaluations(recs) == ([], ["eval_loss", "eval_accuracy"])
    canvas = RecordingCanvas()
    ctx = FigureContext(tmp_path, canvas, figures.run_colors(["a", "b"]))
    _training_figures(recs, ctx)
    drawn = canvas.drawn["training.png"]
    assert len(drawn.visible) == 3  # loss, learning rate, and one panel for both metrics
    assert drawn.xticklabels[-1] == ["eval loss", "eval accuracy"]
    assert drawn.xlabels[:2] == [figures.STEP_LABEL] * 2


def test_metrics_of_one_scale_share_a_panel():
    finals = {"eval loss": {"a": 5.56, "b": 5.55}, "eval perplexity": {"a": 259.0, "b": 258.0},
              "eval accuracy": {"a": 0.31, "b": 0.35}, "eval f1": {"a": 0.0, "b": 0.0}}
    assert figures.scale_groups(finals) == [["eval accuracy", "eval f1"], ["eval loss"], ["eval perplexity"]]
    assert figures.scale_groups({"eval loss": {"a": 0.7}, "eval accuracy": {"a": 0.5}}) == [
        ["eval loss", "eval accuracy"]]


def test_metrics_evaluated_more_than_once_stay_curves():
    recs = [fake_recording("a"), _evaluated_at_the_end("b", 1)]  # a evaluates every 4 steps
    curves, once = split_evaluations(recs)
    assert curves == ["eval_loss"] and once == ["eval_accuracy"]


def test_final_metrics_panel_places_one_marker_per_run_and_metric():
    ax = matplotlib.figure.Figure().subplots()
    figures.plot_final_metrics(ax, {"eval loss": {"a": 0.7, "b": 0.8}, "eval f1": {"a": 0.5}},
                               {"a": "#000000", "b": "#ffffff"})
    offsets = [c.get_offsets() for c in ax.collections]
    assert [o.shape[0] for o in offsets] == [2, 1]  # run a: both metrics; run b: the loss
    assert offsets[0][:, 1].tolist() == [0.7, 0.5] and offsets[1][0, 1] == 0.8
    assert offsets[0][0, 0] < 0 < offsets[1][0, 0]  # nudged apart around the metric's position


# --- whole steps ------------------------------------------------------------------------------

def _integer(locator) -> bool:
    return isinstance(locator, MaxNLocator) and all(float(v).is_integer() for v in locator.tick_values(0, 3))


def test_every_step_axis_ticks_whole_steps(tmp_path):
    recs = [fake_recording("a", steps=3), fake_recording("b", seed=1, steps=3)]
    drawn = _draw(recs, MODULE_FIGURES.names(), tmp_path)
    step_axes = [loc for figure in drawn.values() for loc in figure.step_locators]
    assert len(step_axes) >= 20
    assert all(_integer(loc) for loc in step_axes)
    canvas = RecordingCanvas()
    _training_figures(recs, FigureContext(tmp_path, canvas, figures.run_colors(["a", "b"])))
    assert all(_integer(loc) for loc in canvas.drawn["training.png"].step_locators)


# --- histogram strips ------------------------------------------------------------------------

@pytest.mark.parametrize("steps", [1, 2, 3, 5, 7, 12])
def test_histogram_strips_wrap_within_a_slide(steps):
    nrows, ncols, cells = histogram_layout(steps, 3, shared=True)
    assert ncols <= 5 and nrows * ncols >= steps and cells == [list(range(steps))]
    assert figure_width(ncols, HISTOGRAM_PANEL[0], legend=True) <= SLIDE_IN
    _, _, per_run = histogram_layout(steps, 3, shared=False)
    assert len(per_run) == 3 and all(row[0] % ncols == 0 for row in per_run)  # each run's strip starts a row


def test_columns_that_fit_a_slide():
    assert columns_that_fit(10, 1.0) == 5  # never more than five in a row
    assert columns_that_fit(2, 1.0) == 2
    assert columns_that_fit(3, 20.0) == columns_that_fit(3, MIN_PANEL_IN) == 3  # wide panels are narrowed
    assert columns_that_fit(1, 20.0) == 1


@pytest.mark.parametrize("count, width, ncols", [(4, 20.0, 2), (5, 20.0, 3), (12, 1.0, 4), (6, 20.0, 3)])
def test_wrapped_rows_are_balanced(count, width, ncols):
    """4 panels where 3 fit are 2 + 2, not 3 + 1 with a row left mostly empty; 12 where 5 fit
    are 4 + 4 + 4; no row holds more than one panel more than another."""
    assert columns_that_fit(count, width) == ncols
    rows = math.ceil(count / ncols)
    assert count - (rows - 1) * ncols >= ncols - 1


# --- runs of different scales -----------------------------------------------------------------

def _scaled(name, factor, seed):
    rec = fake_recording(name, seed=seed, steps=6)
    for m in rec.modules.values():
        m.A *= factor
        m.B *= factor
    return rec


def test_runs_100x_apart_get_bins_of_their_own(tmp_path):
    small, large = _scaled("small", 0.01, 0), _scaled("large", 1.0, 1)
    view = _view([small, large], ["histograms", "heatmap"])
    for table in ("step_histograms", "histograms"):
        for rec in (small, large):
            rows = view.rows(table, rec.run_name, "A")
            assert not rows["shared"].any()
            values = rec.modules[MODULE].A[rows["step"].unique()]
            # each run's bins cover its own values, not the other run's range
            assert rows["left"].min() == pytest.approx(float(values.min()), rel=1e-6)
            assert rows["right"].max() == pytest.approx(float(values.max()), rel=1e-6)
            assert rows.groupby("step")["outside"].first().eq(0).all()
    drawn = _draw([small, large], ["histograms"], tmp_path)["m-hist-A.png"]
    steps = len(panel_steps([small, large]))
    nrows, ncols, cells = histogram_layout(steps, 2, shared=False)
    assert drawn.grid == (nrows, ncols) and len(drawn.visible) == 2 * steps


def test_runs_of_one_scale_share_bins_and_one_strip(tmp_path):
    a, b = _scaled("a", 1.0, 0), _scaled("b", 3.0, 1)
    view = _view([a, b], ["histograms"])
    rows = view.rows("step_histograms", "a", "A")
    assert rows["shared"].all()
    drawn = _draw([a, b], ["histograms"], tmp_path)["m-hist-A.png"]
    assert len(drawn.visible) == len(panel_steps([a, b]))


def test_run_edges_rule():
    edges, shared = run_edges([(-1.0, 1.0), (-0.05, 0.05)], bins=4)
    assert shared is False and edges[1].tolist() == np.linspace(-0.05, 0.05, 5).tolist()
    edges, shared = run_edges([(-1.0, 1.0), (-0.2, 0.2)], bins=4)
    assert shared is True and edges[0] is edges[1]
    _, shared = run_edges([(0.0, 0.0), (-1.0, 1.0)], bins=4)  # an all-zero run has no scale to compare
    assert shared is True


# --- φ and its random baseline ----------------------------------------------------------------

def _monte_carlo_phi(d: int, r1: int, r2: int, n: int = 4000, seed: int = 0) -> tuple[float, float]:
    """Mean φ(r1, r2) between uniformly random orthonormal bases of R^d, and its standard error."""
    rng = np.random.default_rng(seed)
    U1 = np.linalg.qr(rng.normal(size=(n, d, r1)))[0]
    U2 = np.linalg.qr(rng.normal(size=(n, d, r2)))[0]
    phi = subspace_similarity(U1, U2, r1, r2)
    return float(phi.mean()), float(phi.std(ddof=1) / np.sqrt(n))


def test_the_drawn_baseline_is_the_mean_phi_of_random_subspaces(tmp_path):
    a = fake_recording("a", modules=(MODULE,), shape=(24, 16), rank=4, seed=0)
    b = fake_recording("b", modules=(MODULE,), shape=(24, 16), rank=6, seed=1)
    view = _view([a, b], ["similarity"])
    for matrix, d in (("A", 16), ("B", 24)):  # A's row space lives in R^in, B's column space in R^out
        _, baselines = final_similarity(view, matrix)
        mean, error = _monte_carlo_phi(d, 4, 6)
        assert baselines == [pytest.approx(6 / d)]
        assert abs(baselines[0] - mean) < 4 * error
    drawn = _draw([a, b], ["similarity"], tmp_path)["m-similarity.png"]
    assert sorted(drawn.colorbar_lines) == pytest.approx(sorted([6 / 24] * 2 + [6 / 16] * 2))  # edge + line
    assert drawn.xlabels == [f"random subspaces: φ ≈ {6 / 16:.3f} (line on the bar)",
                             f"random subspaces: φ ≈ {6 / 24:.3f} (line on the bar)"]


def test_every_figure_fits_a_slide(tmp_path):
    recs = [fake_recording(name, seed=k) for k, name in enumerate("abcd")]
    drawn = _draw(recs, MODULE_FIGURES.names(), tmp_path)
    canvas = RecordingCanvas()
    _training_figures(recs, FigureContext(tmp_path, canvas, figures.run_colors(list("abcd"))))
    drawn.update(canvas.drawn)
    assert {name: figure.width for name, figure in drawn.items() if figure.width > SLIDE_IN + 1e-9} == {}
    assert all(figure.grid[1] <= 5 for figure in drawn.values())


# --- what a reader tripped on in the browser --------------------------------------------------

def test_runs_with_the_same_curve_show_as_nested_lines():
    ax = matplotlib.figure.Figure().subplots()
    same = np.array([1.0, 2.0, 3.0])
    figures.plot_series(ax, {r: (np.arange(3), same) for r in "abc"}, dict.fromkeys("abc", "#000000"), ylabel="y")
    widths = [line.get_linewidth() for line in ax.get_lines()]
    assert widths == sorted(widths, reverse=True) and len(set(widths)) == 3
    ax = matplotlib.figure.Figure().subplots()
    figures.plot_histogram_overlay(ax, np.arange(4.0), {r: np.array([1, 3, 1]) for r in "ab"},
                                   dict.fromkeys("ab", "#000000"))
    assert ax.get_lines()[0].get_linewidth() > ax.get_lines()[1].get_linewidth()


def test_empty_panels_side_by_side_keep_their_messages_apart(tmp_path):
    canvas = Canvas()
    panels = canvas.grid(1, 3, panel=(3.6, 2.7), legend=True)
    for ax in panels.flat(3):
        figures.mark_empty(ax, "no W0 in the recording: record with --set record.base_weights=true")
    canvas.save(panels, tmp_path / "empty.png")
    renderer = panels.figure.canvas.get_renderer()
    boxes = [ax.texts[0].get_window_extent(renderer) for ax in panels.axes.flat]
    assert all(left.x1 < right.x0 for left, right in zip(boxes, boxes[1:]))


def test_the_figure_title_clears_the_first_row_of_a_tall_figure(tmp_path):
    canvas = Canvas()
    panels = canvas.grid(4, 3, panel=(2.6, 2.3), legend=True)
    for ax in panels.flat(12):
        ax.set_title("a panel title", fontsize=10, y=1.0, pad=4)
    panels.figure.suptitle("a module · LoRA B")
    canvas.save(panels, tmp_path / "tall.png")
    renderer = panels.figure.canvas.get_renderer()
    title = panels.figure._suptitle.get_window_extent(renderer)
    assert all(title.y0 > ax.title.get_window_extent(renderer).y1 for ax in panels.axes[0])


def test_a_log_axis_over_many_decades_ticks_the_decades_only():
    ax = matplotlib.figure.Figure().subplots()
    figures.plot_series(ax, {"a": (np.arange(3), np.array([2e-9, 1e-4, 1e-2]))}, {"a": "#000000"},
                        ylabel="σ", logy=True)
    ticks = ax.yaxis.get_major_locator().tick_values(2e-9, 1e-2)
    assert np.allclose(np.log10(ticks), np.round(np.log10(ticks)))  # 1e-9, 1e-8, ...: no 2s and 5s
    assert len(ax.yaxis.get_major_locator().tick_values(0.5, 50)) > 4  # a few decades keep 1, 2, 5


def test_counts_tick_whole_numbers_and_correlations_name_their_run(tmp_path):
    recs = [fake_recording("a", seed=0), fake_recording("b", seed=1)]
    canvas = RecordingCanvas()
    ctx = FigureContext(tmp_path, canvas, figures.run_colors(["a", "b"]))
    view = _view(recs, ["intruders", "magnitude_direction"])
    MODULE_FIGURES.get("intruders").draw(view, "m", ctx)
    panels = next(iter(canvas._layouts.values()))
    count_axis = panels.axes[0, 0]
    assert _integer(count_axis.yaxis.get_major_locator())
    MODULE_FIGURES.get("magnitude_direction").draw(view, "m", ctx)
    ax = canvas._layouts[max(canvas._layouts, key=lambda k: k[1])].axes[0, 2]
    notes = {t.get_text(): t.get_color() for t in ax.texts}
    table = view.tables["magnitude_direction"]
    for run in ("a", "b"):
        r = float(table[table["run"] == run]["correlation"].iloc[0])
        assert notes[f"r = {r:+.2f}"] == ctx.colors[run]
