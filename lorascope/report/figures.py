"""One function per figure kind. Each draws precomputed arrays into an `ax` it is given and
returns what a caller may need (an image for a colorbar); none creates a figure, saves or shows.
Histograms arrive as counts on shared edges: computing them once and drawing only the outline is
the cheap way (PERF_NOTES.md), and shared edges are what make runs comparable on one axis."""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.collections import QuadMesh
from matplotlib.colors import LogNorm
from matplotlib.image import AxesImage
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, LogLocator, NullLocator

__all__ = [
    "RUN_PALETTE",
    "run_colors",
    "plain_text",
    "plot_histogram_overlay",
    "plot_histogram_heatmap",
    "plot_series",
    "plot_family_timeline",
    "plot_marks",
    "plot_singular_spectrum",
    "plot_similarity_matrix",
    "run_legend",
    "log_colorbar",
    "mark_empty",
]

# Colour-blind-safe (Okabe-Ito, then tab10 for more runs); a run keeps its colour in every figure.
RUN_PALETTE: tuple[str, ...] = (
    "#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#F0E442",
    "#8c564b", "#7f7f7f", "#bcbd22", "#17becf",
)
_LABEL_MAX = 32


def run_colors(run_names: Sequence[str]) -> dict[str, str]:
    """A colour per run, in the order given, cycling when there are more runs than colours."""
    return {name: RUN_PALETTE[i % len(RUN_PALETTE)] for i, name in enumerate(run_names)}


def plain_text(text: str, limit: int = _LABEL_MAX) -> str:
    """A string from a recording made safe for matplotlib: `$` would start mathtext (and a stray
    one makes savefig raise), and long names are shortened to keep axes legible."""
    text = str(text)
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return text.replace("\\", "\\\\").replace("$", r"\$")


def plot_histogram_overlay(
    ax: Axes,
    edges: np.ndarray,
    counts: Mapping[str, np.ndarray],
    colors: Mapping[str, str],
    *,
    title: str = "",
    xlabel: str = "value",
) -> None:
    """Histograms of several runs on the same bins, drawn as outlines so every run stays visible."""
    for run, c in counts.items():
        # A steps-post line is the outline `stairs` draws, without the patch bookkeeping that
        # made autoscaling the largest cost of a histogram panel.
        ax.plot(edges, np.append(c, c[-1] if len(c) else 0), drawstyle="steps-post",
                color=colors[run], linewidth=1.4, label=plain_text(run))
    ax.set_xlim(edges[0], edges[-1])
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
    ax.set_xlabel("optimizer step")
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
    xlabel: str = "optimizer step",
    title: str = "",
    logy: bool = False,
) -> None:
    """One line per run, (x, y) each; runs overlaid in their colours. NaN gaps stay gaps."""
    for run, (x, y) in series.items():
        marker = "o" if len(x) <= 12 else None  # a few eval points read better as markers
        ax.plot(x, y, color=colors[run], linewidth=1.3, marker=marker, markersize=3,
                label=plain_text(run))
    if logy and _has_positive(series):
        _log_y(ax)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(plain_text(ylabel, 40))
    _title(ax, title)
    ax.grid(alpha=0.25)


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
        ax.text(0.02, 0.03, plain_text(note, 60), transform=ax.transAxes, fontsize=7, va="bottom", ha="left")


def _log_y(ax: Axes) -> None:
    """A log y axis with ticks at 1, 2 and 5 per decade written as plain numbers, and no minor
    ticks: matplotlib's default minor ticks were a third of a figure's drawing time."""
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
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
    ax.set_xlabel("optimizer step")
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
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("singular value of ΔW")
    _title(ax, title)
    ax.grid(alpha=0.25)
    if r:
        # One line of text instead of a legend: an axes legend measures and lays out a box on
        # every draw, and six of them were a fifth of this figure's drawing time.
        ax.text(0.02, 0.97, f"σ₁ darkest … σ{r} lightest", transform=ax.transAxes, fontsize=7,
                va="top", ha="left")


def plot_similarity_matrix(
    ax: Axes,
    matrix: np.ndarray,
    labels: Sequence[str],
    *,
    title: str = "",
    vmin: float = 0.0,
    vmax: float = 1.0,
) -> AxesImage:
    """A square run-by-run similarity, values written in the cells (a handful of runs at most)."""
    matrix = np.asarray(matrix, dtype=float)
    image = ax.imshow(matrix, vmin=vmin, vmax=vmax, cmap="magma", interpolation="nearest")
    n = matrix.shape[0]
    names = [plain_text(label, 16) for label in labels]
    ax.set_xticks(range(n), names, rotation=35, ha="right", fontsize=7)
    ax.set_yticks(range(n), names, fontsize=7)
    if n <= 8:
        for i in range(n):
            for j in range(n):
                value = matrix[i, j]
                text = "—" if np.isnan(value) else f"{value:.2f}"
                shade = "black" if not np.isnan(value) and value > (vmin + vmax) / 2 else "white"
                ax.text(j, i, text, ha="center", va="center", fontsize=7, color=shade)
    _title(ax, title)
    return image


def log_colorbar(figure, mappable, cax: Axes, label: str) -> None:
    """A colorbar for a log colour scale with plain-number ticks: the default minor labels are
    mathtext such as 6×10⁰, which is slow to render and was clipped at the figure's edge."""
    bar = figure.colorbar(mappable, cax=cax, label=label)
    bar.ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    bar.ax.yaxis.set_minor_locator(NullLocator())
    bar.ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))


def run_legend(panels, colors: Mapping[str, str]) -> None:
    """One legend of the runs for a whole figure, in the room the Canvas reserved right of the
    panels: it never hides data, and placing it costs nothing (loc="best" searches every line)."""
    if panels.legend_at is None or not colors:
        return
    handles = [Line2D([], [], color=color, linewidth=2) for color in colors.values()]
    panels.figure.legend(handles, [plain_text(run, 28) for run in colors], loc="upper left",
                         bbox_to_anchor=panels.legend_at, fontsize=7.5, frameon=False,
                         title="runs", title_fontsize=8, alignment="left")


def _title(ax: Axes, title: str) -> None:
    # A fixed y turns off matplotlib's automatic title placement, which measures every tick
    # label on each draw and was the largest single cost of saving a figure.
    if title:
        ax.set_title(plain_text(title, 60), fontsize=10, y=1.0, pad=4)


def mark_empty(ax: Axes, message: str) -> None:
    """A panel with nothing to draw says why, instead of showing empty axes."""
    ax.set_axis_off()
    ax.text(0.5, 0.5, plain_text(message, 80), ha="center", va="center", fontsize=9,
            transform=ax.transAxes, wrap=True)
