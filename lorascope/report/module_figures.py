"""The figures drawn for each module, as a registry of figure kinds: each kind takes one module's
data (every run, the snapshots read) and writes its PNGs, returning what the page should show.
`lorascope report --figures` picks kinds by these names."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from lorascope.analysis.fits import FAMILIES
from lorascope.analysis.stats import histogram_counts, shared_edges, value_range
from lorascope.registry import Registry
from lorascope.report import figures
from lorascope.report.canvas import Canvas
from lorascope.report import derived
from lorascope.report.collect import ModuleData
from lorascope.report.html import FigureRef
from lorascope.report.paths import inside

__all__ = ["FigureContext", "MODULE_FIGURES", "MATRICES", "save_figure"]

MATRICES: tuple[str, ...] = ("A", "B")


@dataclass
class FigureContext:
    out_dir: Path
    canvas: Canvas
    colors: dict[str, str]
    bins: int = 64


ModuleFigure = Callable[[ModuleData, str, FigureContext], list[FigureRef]]
MODULE_FIGURES: Registry[ModuleFigure] = Registry("report figure kind")


def save_figure(ctx: FigureContext, panels, file: str, caption: str) -> FigureRef:
    """Adds the run legend where the layout reserved room for it, writes the PNG inside the
    output folder and returns what the page shows."""
    figures.run_legend(panels, ctx.colors)
    ctx.canvas.save(panels, inside(ctx.out_dir, file))
    return FigureRef(file, caption)


def _matrix(run, matrix: str) -> np.ndarray:
    return run.A if matrix == "A" else run.B


def _edges(arrays, bins: int) -> np.ndarray:
    """Bins shared by everything that is drawn on one axis; a fixed range when all is NaN/Inf,
    so that the figure still renders (and shows empty histograms) instead of failing."""
    ranges = [value_range(a) for a in arrays]
    if all(r is None for r in ranges):
        return np.linspace(-1.0, 1.0, bins + 1)
    return shared_edges(ranges, bins)


@MODULE_FIGURES.register("histograms")
def histograms(data: ModuleData, slug: str, ctx: FigureContext) -> list[FigureRef]:
    """A and B at the chosen steps, runs overlaid on bins shared by the runs at each step."""
    refs = []
    for matrix in MATRICES:
        n = len(data.histogram_steps)
        panels = ctx.canvas.grid(1, n, panel=(3.3, 2.6), legend=True)
        for ax, panel in zip(panels.flat(n), data.histogram_steps):
            rows = {run: _matrix(data.runs[run], matrix)[row] for run, row in panel.rows.items()}
            edges = _edges(rows.values(), ctx.bins)
            counts = {run: histogram_counts(v, edges).counts[0] for run, v in rows.items()}
            figures.plot_histogram_overlay(ax, edges, counts, ctx.colors, title=panel.label,
                                           xlabel=f"{matrix} value")
        panels.figure.suptitle(figures.plain_text(f"{data.name} · LoRA {matrix}", 90))
        refs.append(save_figure(ctx, panels, f"{slug}-hist-{matrix}.png",
                          f"Histograms of {matrix} at chosen steps, runs overlaid on shared bins."))
    return refs


@MODULE_FIGURES.register("heatmap")
def heatmap(data: ModuleData, slug: str, ctx: FigureContext) -> list[FigureRef]:
    """A histogram per snapshot, as a heatmap over steps, one panel per run on shared bins and
    one shared colour scale."""
    refs = []
    n = len(data.runs)
    ncols = min(n, 3)
    nrows = math.ceil(n / ncols)
    for matrix in MATRICES:
        values = {run: _matrix(rm, matrix) for run, rm in data.runs.items()}
        edges = _edges(values.values(), ctx.bins)
        counts = {run: histogram_counts(v, edges).counts for run, v in values.items()}
        vmax = max(int(c.max(initial=0)) for c in counts.values())
        panels = ctx.canvas.grid(nrows, ncols, panel=(4.0, 2.8), colorbar=True, share_x=True)
        mesh = None
        for ax, run in zip(panels.flat(n), data.runs):
            mesh = figures.plot_histogram_heatmap(ax, data.runs[run].steps, edges, counts[run],
                                                  vmax=vmax, title=run, ylabel=f"{matrix} value")
        if mesh is not None and panels.colorbar_ax is not None:
            figures.log_colorbar(panels.figure, mesh, panels.colorbar_ax, "count per bin (log scale)")
        panels.figure.suptitle(figures.plain_text(f"{data.name} · LoRA {matrix} over steps", 90))
        refs.append(save_figure(ctx, panels, f"{slug}-heatmap-{matrix}.png",
                          f"Distribution of {matrix} over steps, one panel per run (shared bins "
                          "and colour scale)."))
    return refs


_MOMENTS: tuple[tuple[str, str], ...] = (("mean", "mean"), ("std", "std"), ("frobenius", "Frobenius norm"))


@MODULE_FIGURES.register("moments")
def moments(data: ModuleData, slug: str, ctx: FigureContext) -> list[FigureRef]:
    """Mean, standard deviation and Frobenius norm of A and B over steps, runs overlaid."""
    panels = ctx.canvas.grid(len(MATRICES), len(_MOMENTS), panel=(3.6, 2.6), legend=True,
                             share_x=True)
    for i, matrix in enumerate(MATRICES):
        stats = {run: derived.matrix_moments(data, run, matrix) for run in data.runs}
        for j, (key, label) in enumerate(_MOMENTS):
            series = {run: (data.runs[run].steps, stats[run][key]) for run in data.runs}
            figures.plot_series(panels.axes[i, j], series, ctx.colors, ylabel=f"{label} of {matrix}",
                                title=f"{matrix}: {label}")
    panels.figure.suptitle(figures.plain_text(f"{data.name} · moments over steps", 90))
    return [save_figure(ctx, panels, f"{slug}-moments.png",
                  "Mean, standard deviation and Frobenius norm of A and B over steps.")]


_BETA_TICKS = (0.5, 1.0, 2.0, 5.0, 10.0, 50.0)


@MODULE_FIGURES.register("fits")
def fits(data: ModuleData, slug: str, ctx: FigureContext) -> list[FigureRef]:
    """The best-fitting distribution family of A and B over steps (BIC), and the generalised
    normal's shape β (1 Laplace, 2 normal, large → uniform), runs overlaid."""
    families = FAMILIES.names()
    panels = ctx.canvas.grid(len(MATRICES), 2, panel=(4.2, 2.6), legend=True, margins=(1.1, 0.6),
                             share_x=True)
    for i, matrix in enumerate(MATRICES):
        best, beta = {}, {}
        for run in data.runs:
            steps, result = derived.fits(data, run, matrix)
            # Snapshots that were not fitted (B all zeros at init) keep their reason as label.
            best[run] = (steps, [str(b) for b in result.best])
            beta[run] = (steps, result.families["gennorm"]["beta"])
        labels = families + sorted({b for _, bs in best.values() for b in bs} - set(families))
        figures.plot_family_timeline(panels.axes[i, 0], best, labels, ctx.colors,
                                     title=f"{matrix}: best-fitting family")
        ax = panels.axes[i, 1]
        figures.plot_series(ax, beta, ctx.colors, ylabel="generalised-normal β",
                            title=f"{matrix}: shape β (2 = normal)", logy=True)
        ax.axhline(2.0, color="grey", linewidth=0.8, linestyle="--")
        if ax.get_yscale() == "log":  # the shapes people know: Laplace 1, normal 2
            ax.set_yticks(_BETA_TICKS, [f"{t:g}" for t in _BETA_TICKS])
    panels.figure.suptitle(figures.plain_text(f"{data.name} · distribution fits", 90))
    return [save_figure(ctx, panels, f"{slug}-fits.png",
                        "Best-fitting family (by BIC, on a fixed subset of entries) and the "
                        "generalised-normal shape β over steps: β = 1 is Laplace, 2 normal, large "
                        "values approach uniform.")]
