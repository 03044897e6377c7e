"""One function per figure kind. Each draws precomputed arrays into an `ax` it is given and
returns what a caller may need (an image for a colorbar); none creates a figure, saves or shows.
Histograms arrive as counts on shared edges: computing them once and drawing only the outline is
the cheap way (PERF_NOTES.md), and shared edges are what make runs comparable on one axis."""
from __future__ import annotations

import math
import re
from typing import Mapping, Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.collections import QuadMesh
from matplotlib.colors import LogNorm
from matplotlib.image import AxesImage
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullLocator

__all__ = [
    "RUN_PALETTE",
    "run_colors",
    "plain_text",
    "wrap_label",
    "step_axis",
    "integer_y",
    "note_per_run",
    "STEP_LABEL",
    "SMALL_FONT",
    "plot_histogram_overlay",
    "plot_histogram_heatmap",
    "plot_series",
    "plot_final_metrics",
    "scale_groups",
    "plot_family_timeline",
    "plot_marks",
    "plot_singular_spectrum",
    "plot_similarity_matrix",
    "run_legend",
    "log_colorbar",
    "mark_levels",
    "mark_empty",
]

# Colour-blind-safe (Okabe-Ito, then tab10 for more runs); a run keeps its colour in every figure.
RUN_PALETTE: tuple[str, ...] = (
    "#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#F0E442",
    "#8c564b", "#7f7f7f", "#bcbd22", "#17becf",
)
_LABEL_MAX = 32
STEP_LABEL = "optimizer step"
# The smallest text a figure sets, in points: at the report's 100 dpi a figure as wide as a slide
# shows at its own size in the page, and 8 pt is 11 pixels there; 7 pt did not read.
SMALL_FONT = 8.5
LEGEND_FONT = 9
LEGEND_CHARS = 24  # a legend line at LEGEND_FONT in the room the Canvas keeps for it
# where a long name may break: after a space, an underscore, a hyphen, a slash, a dot, '=' or ','
_BREAK_AFTER = re.compile(r"(?<=[\s_\-/.=,])")


def run_colors(run_names: Sequence[str]) -> dict[str, str]:
    """A colour per run, in the order given, cycling when there are more runs than colours."""
    return {name: RUN_PALETTE[i % len(RUN_PALETTE)] for i, name in enumerate(run_names)}


def _escape(text: str) -> str:
    # `$` would start mathtext (and a stray one makes savefig raise)
    return text.replace("\\", "\\\\").replace("$", r"\$")


def plain_text(text: str, limit: int = _LABEL_MAX) -> str:
    """A string from a recording made safe for matplotlib, shortened to `limit` characters at a
    word boundary (see `wrap_label`) with '…': inside a word only when its first word alone is
    longer than that."""
    text = str(text)
    if len(text) > limit:
        kept = ""
        for piece in _BREAK_AFTER.split(text):
            if len(kept) + len(piece.rstrip()) > limit - 1:
                break
            kept += piece
        text = (kept.rstrip() or text[: limit - 1]) + "…"  # one word longer than the limit: cut it
    return _escape(text)


def _word_lines(text: str, width: int) -> list[str]:
    """`text` packed into lines of at most `width` characters, broken only after a separator; a
    word longer than `width` keeps its own line whole."""
    lines = [""]
    for piece in _BREAK_AFTER.split(text):
        if lines[-1] and len(lines[-1]) + len(piece.rstrip()) > width:
            lines.append("")
        lines[-1] += piece
    return [line.strip() for line in lines if line.strip()]


def wrap_label(text: str, width: int = LEGEND_CHARS) -> str:
    """A run label on as many lines as it needs, never cut: its ' · '-joined parts stay whole on
    one line where they fit, and a part longer than a line breaks after a separator
    (`kaiming_uniform` may become `kaiming_` / `uniform`, never `kaimi` / `ng_uniform`)."""
    lines: list[str] = []
    for part in str(text).split(" · "):
        pieces = _word_lines(part, width)
        if lines and len(pieces) == 1 and len(lines[-1]) + 3 + len(pieces[0]) <= width:
            lines[-1] += " · " + pieces[0]
        else:
            if lines:
                lines[-1] += " ·"  # the label goes on: the next line is not another entry
            lines.extend(pieces)
    return _escape("\n".join(lines))


def _value_ticks(axis) -> None:
    """A few ticks written short (`0.0005`, not `0.00050`): weight values are small numbers, and
    the default labels of a narrow panel ran into each other."""
    axis.set_major_locator(MaxNLocator(nbins=4))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.3g}"))


def integer_y(ax: Axes) -> None:
    """Whole-number ticks on a y axis of counts."""
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))


def note_per_run(ax: Axes, notes: Mapping[str, str], colors: Mapping[str, str]) -> None:
    """One short line per run in its colour, top left inside the panel."""
    for k, (run, note) in enumerate(notes.items()):
        ax.text(0.03, 0.96 - 0.09 * k, plain_text(note, 30), color=colors[run], transform=ax.transAxes,
                fontsize=SMALL_FONT + 0.5, va="top", ha="left",
                bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "none", "pad": 1.0})


def step_axis(ax: Axes, label: str = STEP_LABEL) -> None:
    """An x axis of optimizer steps: labelled, and ticked at whole steps only (a run of 6 steps
    ticked at 0.5, 1.5, ... suggests snapshots that do not exist)."""
    ax.set_xlabel(label)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def plot_histogram_overlay(
    ax: Axes,
    edges: np.ndarray,
    counts: Mapping[str, np.ndarray],
    colors: Mapping[str, str],
    *,
    title: str = "",
    xlabel: str = "value",
) -> None:
    """Histograms of several runs on the same bins, drawn as outlines so every run stays visible:
    the first run's widest, each later one narrower, so that runs with the same histogram (the
    same init, before training moves them apart) show as nested outlines, not as one."""
    n = len(counts)
    for k, (run, c) in enumerate(counts.items()):
        # A steps-post line is the outline `stairs` draws, without the patch bookkeeping that
        # made autoscaling the largest cost of a histogram panel.
        ax.plot(edges, np.append(c, c[-1] if len(c) else 0), drawstyle="steps-post",
                color=colors[run], linewidth=1.0 + 1.2 * (n - 1 - k) / max(n - 1, 1), label=plain_text(run))
    ax.set_xlim(edges[0], edges[-1])
    _value_ticks(ax.xaxis)
    ax.set_ylim(bottom=0)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("count")
    _title(ax, title)


def plot_histogram_heatmap(
    ax: Axes,
    steps: np.ndarray,
    edges: np.ndarray,
    counts: np.ndarray,
    *,
    vmax: float | None = None,
    title: str = "",
    ylabel: str = "value",
) -> QuadMesh:
    """A histogram over time: counts (T, bins) at snapshot `steps`, log colour scale (the bulk
    and the tails differ by orders of magnitude); empty bins stay blank."""
    steps = np.asarray(steps, dtype=float)
    x_edges = _cell_edges(steps)
    vmax = float(vmax if vmax is not None else max(counts.max(initial=0), 1))
    masked = np.ma.masked_less_equal(np.asarray(counts, dtype=float).T, 0)
    mesh = ax.pcolormesh(
        x_edges, edges, masked, norm=LogNorm(vmin=1, vmax=max(vmax, 1.0 + 1e-9)),
        cmap="viridis", shading="flat", rasterized=True,
    )
    step_axis(ax)
    _value_ticks(ax.yaxis)
    ax.set_ylabel(ylabel)
    _title(ax, title)
    return mesh


def _cell_edges(steps: np.ndarray) -> np.ndarray:
    """Boundaries halfway between snapshots, so uneven snapshot schedules keep their true widths."""
    if steps.size == 1:
        return np.array([steps[0] - 0.5, steps[0] + 0.5])
    mid = (steps[1:] + steps[:-1]) / 2
    return np.concatenate([[steps[0] - (mid[0] - steps[0])], mid, [steps[-1] + (steps[-1] - mid[-1])]])


def plot_series(
    ax: Axes,
    series: Mapping[str, tuple[np.ndarray, np.ndarray]],
    colors: Mapping[str, str],
    *,
    ylabel: str,
    xlabel: str = STEP_LABEL,
    title: str = "",
    logy: bool = False,
) -> None:
    """One line per run, (x, y) each; runs overlaid in their colours. NaN gaps stay gaps. The
    first run's line is the widest and each later one narrower, so that runs with the same curve
    (the same learning rate schedule) show as nested lines, not as one. An x axis of optimizer
    steps (the default `xlabel`) gets whole-step ticks."""
    n = len(series)
    for k, (run, (x, y)) in enumerate(series.items()):
        marker = "o" if len(x) <= 12 else None  # a few eval points read better as markers
        ax.plot(x, y, color=colors[run], linewidth=1.1 + 1.4 * (n - 1 - k) / max(n - 1, 1), marker=marker,
                markersize=3, label=plain_text(run))
    if logy and _has_positive(series):
        _log_y(ax)
    if xlabel == STEP_LABEL:
        step_axis(ax)
    else:
        ax.set_xlabel(xlabel)
    ax.set_ylabel(plain_text(ylabel, 40))
    _title(ax, title)
    ax.grid(alpha=0.25)


def plot_final_metrics(
    ax: Axes,
    values: Mapping[str, Mapping[str, float]],
    colors: Mapping[str, str],
    *,
    title: str = "",
) -> None:
    """Metrics evaluated once per run (at the end), side by side in one panel: a metric per
    position on x, a marker per run in its colour, nudged apart so runs with equal values stay
    visible (the runs table has the numbers). Metrics of one scale (`scale_groups`) share a
    panel, so that the runs' differences stay visible on its linear axis."""
    metrics = list(values)
    runs = list(dict.fromkeys(run for per_run in values.values() for run in per_run))
    n = max(len(runs), 1)
    width = min(0.6 / n, 0.15)
    for k, run in enumerate(runs):
        offset = (k - (n - 1) / 2) * width
        x = [i + offset for i, m in enumerate(metrics) if run in values[m]]
        y = [values[m][run] for m in metrics if run in values[m]]
        ax.scatter(x, y, s=36, color=colors[run], zorder=3, label=plain_text(run))
    ax.set_xticks(range(len(metrics)), [plain_text(m, 20) for m in metrics])
    ax.set_xlim(-0.5, len(metrics) - 0.5)
    ax.set_ylabel("value")
    _title(ax, title)
    ax.grid(alpha=0.25, axis="y")


def scale_groups(values: Mapping[str, Mapping[str, float]], ratio: float = 10.0) -> list[list[str]]:
    """The metrics split into groups whose largest |value| are within `ratio` of each other
    (accuracy, F1 and a loss near 0.7 together; a perplexity of 250 apart), smallest scale first:
    one axis for a perplexity and an accuracy would flatten every difference between runs."""
    def scale(metric: str) -> float:
        finite = [abs(v) for v in values[metric].values() if math.isfinite(v)]
        return max(finite, default=0.0)

    groups: list[list[str]] = []
    low = 0.0  # the scale of the current group's first metric
    for metric in sorted(values, key=scale):
        s = scale(metric)
        if groups and (low == 0.0 or s <= ratio * low):
            groups[-1].append(metric)
            low = low or s  # a group that began with zeros takes the first non-zero scale
        else:
            groups.append([metric])
            low = s
    order = {metric: k for k, metric in enumerate(values)}
    return [sorted(group, key=order.__getitem__) for group in groups]  # a group in the given order


def plot_marks(
    ax: Axes,
    points: Mapping[str, tuple[np.ndarray, np.ndarray]],
    colors: Mapping[str, str],
    *,
    marker: str,
    note: str,
    filled: bool = True,
) -> None:
    """Points a line cannot show as it is (a value at infinity drawn at the axis' ceiling, a fit
    that is not a maximum of the likelihood), one marker style per kind, in the runs' colours, and
    one line of text naming them when there are any."""
    shown = False
    for run, (x, y) in points.items():
        if len(x):
            ax.scatter(x, y, marker=marker, s=22, linewidths=1.0, zorder=3,
                       facecolors=colors[run] if filled else "none", edgecolors=colors[run])
            shown = True
    if shown:
        ax.text(0.02, 0.03, plain_text(note, 60), transform=ax.transAxes, fontsize=SMALL_FONT, va="bottom", ha="left")


class _ReadableLogLocator(LogLocator):
    """Ticks at 1, 2 and 5 per decade over a few decades, at the decades alone over more: a
    spectrum spanning seven decades got 21 labels, written over each other."""

    def __init__(self) -> None:
        super().__init__(subs=(1.0, 2.0, 5.0))

    def tick_values(self, vmin, vmax):
        if vmin > 0 and vmax > 0 and abs(math.log10(vmax / vmin)) > 3:
            return LogLocator(subs=(1.0,)).tick_values(vmin, vmax)
        return super().tick_values(vmin, vmax)


def _log_y(ax: Axes) -> None:
    """A log y axis with ticks at 1, 2 and 5 per decade (the decades alone over more than three)
    written as plain numbers, and no minor ticks: matplotlib's default minor ticks were a third
    of a figure's drawing time."""
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(_ReadableLogLocator())
    ax.yaxis.set_minor_locator(NullLocator())
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))


def _has_positive(series: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> bool:
    return any(np.any(np.asarray(y, dtype=float) > 0) for _, y in series.values())


def plot_family_timeline(
    ax: Axes,
    series: Mapping[str, tuple[np.ndarray, Sequence[str]]],
    families: Sequence[str],
    colors: Mapping[str, str],
    *,
    title: str = "",
) -> None:
    """The best-fitting distribution family at each snapshot, one step line per run. Runs are
    nudged apart vertically so that runs agreeing on a family do not hide one another."""
    index = {name: i for i, name in enumerate(families)}
    n = max(len(series), 1)
    for k, (run, (steps, labels)) in enumerate(series.items()):
        offset = (k - (n - 1) / 2) * min(0.5 / n, 0.12)
        y = np.array([index.get(label, np.nan) for label in labels], dtype=float) + offset
        ax.step(steps, y, where="post", color=colors[run], linewidth=1.4, marker="o", markersize=2.5,
                label=plain_text(run))
    ax.set_yticks(range(len(families)), [plain_text(f) for f in families])
    ax.set_ylim(-0.5, len(families) - 0.5)
    step_axis(ax)
    ax.set_ylabel("best-fitting family")
    _title(ax, title)
    ax.grid(alpha=0.25, axis="x")


def plot_singular_spectrum(
    ax: Axes,
    steps: np.ndarray,
    singular_values: np.ndarray,
    *,
    color: str,
    title: str = "",
) -> None:
    """Each singular value of one run over steps (T, r), largest darkest: how the update spreads
    across directions as training goes on."""
    sv = np.asarray(singular_values, dtype=float)
    r = sv.shape[1] if sv.ndim == 2 else 0
    for i in range(r):
        alpha = 1.0 - 0.8 * i / max(r - 1, 1)
        ax.plot(steps, sv[:, i], color=color, alpha=alpha, linewidth=1.1,
                label="σ₁" if i == 0 else (f"σ{r}" if i == r - 1 else None))
    if np.any(sv > 0):
        _log_y(ax)
    step_axis(ax)
    ax.set_ylabel("singular value of ΔW")
    _title(ax, title)
    ax.grid(alpha=0.25)
    if r:
        # One line of text instead of a legend: an axes legend measures and lays out a box on
        # every draw, and six of them were a fifth of this figure's drawing time.
        ax.text(0.02, 0.97, f"σ₁ darkest … σ{r} lightest", transform=ax.transAxes,
                fontsize=SMALL_FONT, va="top", ha="left",
                bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "none", "pad": 1.5})


def plot_similarity_matrix(
    ax: Axes,
    matrix: np.ndarray,
    labels: Sequence[str],
    *,
    title: str = "",
    vmin: float = 0.0,
    vmax: float = 1.0,
) -> AxesImage:
    """A square run-by-run similarity, values written in the cells (a handful of runs at most);
    the runs' labels wrapped on whole words along both axes."""
    matrix = np.asarray(matrix, dtype=float)
    image = ax.imshow(matrix, vmin=vmin, vmax=vmax, cmap="magma", interpolation="nearest")
    n = matrix.shape[0]
    names = [wrap_label(label, 16) for label in labels]
    ax.set_xticks(range(n), names, rotation=30, ha="right", rotation_mode="anchor", fontsize=SMALL_FONT)
    ax.set_yticks(range(n), names, fontsize=SMALL_FONT)
    if n <= 8:
        for i in range(n):
            for j in range(n):
                value = matrix[i, j]
                text = "—" if np.isnan(value) else f"{value:.2f}"
                shade = "black" if not np.isnan(value) and value > (vmin + vmax) / 2 else "white"
                ax.text(j, i, text, ha="center", va="center", fontsize=SMALL_FONT, color=shade)
    _title(ax, title)
    return image


def log_colorbar(figure, mappable, cax: Axes, label: str) -> None:
    """A colorbar for a log colour scale with plain-number ticks: the default minor labels are
    mathtext such as 6×10⁰, which is slow to render and was clipped at the figure's edge."""
    bar = figure.colorbar(mappable, cax=cax, label=label)
    bar.ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    bar.ax.yaxis.set_minor_locator(NullLocator())
    bar.ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))


def mark_chance(ax: Axes, levels: Mapping[str, float], colors: Mapping[str, str], name: str) -> None:
    """A metric's chance level (accuracy's: the majority label's share of the eval set) as a dashed
    line: one grey line labelled `name` and its value where every run has the same eval set, else
    one per run in its colour."""
    values = {run: v for run, v in levels.items() if np.isfinite(v)}
    if not values:
        return
    if len(set(values.values())) == 1:
        level = next(iter(values.values()))
        ax.axhline(level, color="0.45", linestyle="--", linewidth=1.0)
        ax.annotate(f"{name} {level:.3g}", (0.02, level), xycoords=("axes fraction", "data"),
                    xytext=(0, 3), textcoords="offset points", fontsize=SMALL_FONT, color="0.35")
        return
    for run, level in values.items():
        ax.axhline(level, color=colors[run], linestyle="--", linewidth=0.9)


def mark_levels(cax: Axes, levels: Sequence[float]) -> None:
    """Reference values (a random baseline) as lines across a colour bar: white with a dark edge,
    visible on every colour of the map."""
    for level in levels:
        cax.axhline(level, color="black", linewidth=3.2)
        cax.axhline(level, color="white", linewidth=1.6)


def run_legend(panels, colors: Mapping[str, str], labels: Mapping[str, str] | None = None) -> None:
    """One legend of the runs for a whole figure, in the room the Canvas reserved right of the
    panels: it never hides data, and placing it costs nothing (loc="best" searches every line).
    Each run shows as its label (`labels`, by run name; the run name where it has none), wrapped
    on whole words: the page's runs table pairs each label with the full run name."""
    if panels.legend_at is None or not colors:
        return
    labels = labels or {}
    handles = [Line2D([], [], color=color, linewidth=2) for color in colors.values()]
    panels.figure.legend(handles, [wrap_label(labels.get(run, run)) for run in colors], loc="upper left",
                         bbox_to_anchor=panels.legend_at, fontsize=LEGEND_FONT, frameon=False,
                         title="runs", title_fontsize=LEGEND_FONT, alignment="left", labelspacing=0.6)


def _title(ax: Axes, title: str) -> None:
    # A fixed y turns off matplotlib's automatic title placement, which measures every tick
    # label on each draw and was the largest single cost of saving a figure.
    if title:
        ax.set_title(plain_text(title, 60), fontsize=10, y=1.0, pad=4)


def mark_empty(ax: Axes, message: str) -> None:
    """A panel with nothing to draw says why, instead of showing empty axes; the message wrapped
    on whole words to the panel's width (matplotlib's own wrap stops at the figure's edge, so the
    messages of panels side by side ran into each other)."""
    ax.set_axis_off()
    chars = max(12, int(ax.get_position().width * ax.figure.get_figwidth() * 72 / (0.6 * 9)))
    ax.text(0.5, 0.5, "\n".join(_word_lines(plain_text(message, 120), chars)), ha="center",
            va="center", fontsize=9, transform=ax.transAxes)
