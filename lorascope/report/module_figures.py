"""The figures drawn for each module, as a registry of figure kinds (declared with their
descriptions in `lorascope.report`): each kind names the analysis tables it plots and draws one
module's rows of them (every run) into PNGs, returning what the page should show. This file
holds the plumbing and the distribution figures; spectral_figures.py the spectral ones.
`lorascope report --figures` picks kinds by these names."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from lorascope.analysis.stats import SCALE_RATIO
from lorascope.outputs import OutputGuard, writing
from lorascope.report import MODULE_FIGURES, figures
from lorascope.report.canvas import Canvas, columns_that_fit
from lorascope.report.html import FigureRef
from lorascope.report.paths import inside
from lorascope.report.view import ModuleView

__all__ = ["FigureContext", "FigureKind", "MATRICES", "save_figure", "edges_of"]

MATRICES: tuple[str, ...] = ("A", "B")


@dataclass
class FigureContext:
    out_dir: Path
    canvas: Canvas
    colors: dict[str, str]
    guard: OutputGuard = field(default_factory=lambda: OutputGuard(()))  # the report's inputs: never written over
    labels: dict[str, str] = field(default_factory=dict)  # run name → its short label (analysis.labels)

    def label(self, run: str) -> str:
        """What a figure calls a run: its short label, or its name where it has none."""
        return self.labels.get(run, run)


@dataclass(frozen=True)
class FigureKind:
    """A figure kind: the analysis tables it plots, how it draws one module's rows, how many
    runs it needs (a report of fewer leaves it out, and its tables uncomputed), and `missing`:
    why the recordings hold nothing it could draw (None: they do), for a kind that needs what
    few recordings have (micro-step gradients); such a report leaves it out too."""
    draw: Callable[[ModuleView, str, FigureContext], list[FigureRef]]
    tables: tuple[str, ...]
    min_runs: int = 1
    missing: Callable[[Sequence[Any]], str | None] = lambda recs: None


def save_figure(ctx: FigureContext, panels, file: str, caption: str) -> FigureRef:
    """Adds the run legend where the layout reserved room for it, writes the PNG inside the
    output folder and returns what the page shows."""
    figures.run_legend(panels, ctx.colors, ctx.labels)
    path = ctx.guard.check(inside(ctx.out_dir, file))
    with writing(path, "free some space or choose another --output"):
        ctx.canvas.save(panels, path)
    return FigureRef(file, caption)


def edges_of(rows) -> np.ndarray:
    """The bin edges of one histogram's long-form rows (`left` of every bin, then the last `right`)."""
    first = rows[rows["step"] == rows["step"].iloc[0]]
    return np.append(first["left"].to_numpy(), first["right"].to_numpy()[-1])


HISTOGRAM_PANEL = (2.6, 2.3)  # inches: three in a row and the legend fit a slide
HEATMAP_PANEL = (3.6, 2.6)


def histogram_layout(steps: int, runs: int, shared: bool) -> tuple[int, int, list[list[int]]]:
    """(rows, columns, cells) of a strip of `steps` histograms, wrapped after as many columns as
    fit a slide (`canvas.columns_that_fit`, at most five): runs overlaid in one strip when their
    bins are shared, else one strip per run, each starting on a new row. `cells[r][k]` is the
    row-major position of strip r's k-th step."""
    strips = 1 if shared else runs
    ncols = columns_that_fit(max(steps, 1), HISTOGRAM_PANEL[0], legend=True)
    per_strip = math.ceil(max(steps, 1) / ncols)
    cells = [[r * per_strip * ncols + k for k in range(steps)] for r in range(strips)]
    return strips * per_strip, ncols, cells


def histograms(view: ModuleView, slug: str, ctx: FigureContext) -> list[FigureRef]:
    """A and B at the chosen steps on the bins of the `step_histograms` table: runs overlaid where
    the runs share bins at every step, else a strip per run on its own bins (their scales differ
    by more than `stats.SCALE_RATIO`, and shared bins would squeeze the narrow run into a bin or two)."""
    refs = []
    table = view.tables["step_histograms"]
    targets = list(dict.fromkeys(table["at_step"])) if len(table) else []
    for matrix in MATRICES:
        rows = {run: view.rows("step_histograms", run, matrix) for run in view.runs}
        at = [{run: r[r["at_step"] == t] for run, r in rows.items() if (r["at_step"] == t).any()}
              for t in targets]
        shared = all(bool(r["shared"].all()) for r in rows.values() if len(r))
        nrows, ncols, cells = histogram_layout(len(targets), len(view.runs), shared)
        panels = ctx.canvas.grid(nrows, ncols, panel=HISTOGRAM_PANEL, legend=True)
        strips = [list(view.runs)] if shared else [[run] for run in view.runs]
        axes = panels.cells([c for strip in cells for c in strip] or [0])
        for s, runs in enumerate(strips):
            for k, target in enumerate(targets):
                ax = axes[s * len(targets) + k]
                found = {run: at[k][run] for run in runs if run in at[k]}
                if not found:
                    figures.mark_empty(ax, f"no finite {matrix} values near step {target}")
                    continue
                shown = "/".join(str(v) for v in sorted({int(r["step"].iloc[0]) for r in found.values()}))
                title = f"final (step {shown})" if k == len(targets) - 1 else f"step {shown}"
                if not shared:
                    title = f"{ctx.label(runs[0])}: {title}"
                counts = {run: r["count"].to_numpy() for run, r in found.items()}
                figures.plot_histogram_overlay(ax, edges_of(next(iter(found.values()))), counts, ctx.colors,
                                               title=title, xlabel=f"{matrix} value")
        if not targets:
            figures.mark_empty(axes[0], f"no finite {matrix} values to draw")
        panels.figure.suptitle(figures.plain_text(f"{view.name} · LoRA {matrix}", 90))
        how = ("runs overlaid on bins shared by the runs at each step" if shared else
               "one row per run on bins of its own: the runs' scales (largest |value|) differ by more "
               f"than {SCALE_RATIO:g}× at some step, and shared bins would put the narrower run in a bin "
               "or two")
        refs.append(save_figure(ctx, panels, f"{slug}-hist-{matrix}.png",
                                f"Histograms of {matrix} at chosen steps, {how}."))
    return refs


def heatmap(view: ModuleView, slug: str, ctx: FigureContext) -> list[FigureRef]:
    """A histogram per snapshot, as a heatmap over steps, one panel per run on the bins of the
    `histograms` table (shared by every run and snapshot unless the runs' scales differ by more
    than `stats.SCALE_RATIO`), and one shared colour scale."""
    refs = []
    n = len(view.runs)
    ncols = columns_that_fit(n, HEATMAP_PANEL[0], colorbar=True)
    nrows = math.ceil(n / ncols)
    for matrix in MATRICES:
        panels = ctx.canvas.grid(nrows, ncols, panel=HEATMAP_PANEL, colorbar=True, share_x=True)
        grids, shared = {}, True
        for run in view.runs:
            rows = view.rows("histograms", run, matrix)
            if len(rows):
                steps = rows["step"].to_numpy()[::int(rows["bin"].max()) + 1]
                grids[run] = (steps, edges_of(rows), rows["count"].to_numpy().reshape(len(steps), -1))
                shared = shared and bool(rows["shared"].all())
        vmax = max((int(c.max(initial=0)) for _, _, c in grids.values()), default=1)
        mesh = None
        for ax, run in zip(panels.flat(n), view.runs):
            if run not in grids:
                figures.mark_empty(ax, f"no finite {matrix} values in {run}")
                continue
            steps, edges, counts = grids[run]
            mesh = figures.plot_histogram_heatmap(ax, steps, edges, counts, vmax=vmax, title=ctx.label(run),
                                                  ylabel=f"{matrix} value")
        if mesh is not None and panels.colorbar_ax is not None:
            figures.log_colorbar(panels.figure, mesh, panels.colorbar_ax, "count per bin (log scale)")
        panels.figure.suptitle(figures.plain_text(f"{view.name} · LoRA {matrix} over steps", 90))
        refs.append(save_figure(ctx, panels, f"{slug}-heatmap-{matrix}.png",
                                f"Distribution of {matrix} over steps, one panel per run ("
                                + ("shared bins and colour scale)." if shared else
                                   f"a shared colour scale; each run on bins of its own, since the runs' "
                                   f"scales differ by more than {SCALE_RATIO:g}×).")))
    return refs


_MOMENTS: tuple[tuple[str, str], ...] = (("mean", "mean"), ("std", "std"), ("frobenius", "Frobenius norm"))


def moments(view: ModuleView, slug: str, ctx: FigureContext) -> list[FigureRef]:
    """Mean, standard deviation and Frobenius norm of A and B over steps (the `stats` table),
    runs overlaid."""
    panels = ctx.canvas.grid(len(MATRICES), len(_MOMENTS), panel=(3.6, 2.6), legend=True,
                             share_x=True)
    for i, matrix in enumerate(MATRICES):
        for j, (key, label) in enumerate(_MOMENTS):
            series = {run: view.series("stats", run, matrix, key) for run in view.runs}
            figures.plot_series(panels.axes[i, j], series, ctx.colors, ylabel=f"{label} of {matrix}",
                                title=f"{matrix}: {label}")
    panels.figure.suptitle(figures.plain_text(f"{view.name} · moments over steps", 90))
    return [save_figure(ctx, panels, f"{slug}-moments.png",
                        "Mean, standard deviation and Frobenius norm of A and B over steps.")]


_BETA_TICKS = (0.5, 1.0, 2.0, 5.0, 10.0, 50.0)


def _beta_marks(beta: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]):
    """The generalised normal's β split for drawing: finite β of maximum-likelihood fits as a
    line, β = ∞ (the uniform limit) at a ceiling above every finite value, and fits that are not
    maxima of the likelihood ('bounded', 'not_converged': not ranked) as hollow marks."""
    finite = [y[np.isfinite(y)] for _, y, _ in beta.values()]
    top = max([float(v.max()) for v in finite if len(v)] + [_BETA_TICKS[-1]])
    ceiling = 2.0 * top
    line, infinite, inexact = {}, {}, {}
    for run, (x, y, method) in beta.items():
        mle = method == "mle"
        line[run] = (x, np.where(mle & np.isfinite(y), y, np.nan))
        inf = mle & np.isposinf(y)
        infinite[run] = (x[inf], np.full(int(inf.sum()), ceiling))
        other = ~mle & np.isfinite(y)
        inexact[run] = (x[other], y[other])
    return line, infinite, inexact


def fits(view: ModuleView, slug: str, ctx: FigureContext) -> list[FigureRef]:
    """The best-fitting distribution family of A and B over steps (BIC, among maximum-likelihood
    fits only), and the generalised normal's shape β (1 Laplace, 2 normal, large → uniform, β = ∞
    its uniform limit marked at the top; fits that are not maxima hollow), runs overlaid: the
    `fits` table."""
    families = list(dict.fromkeys(view.tables["fits"]["family"]))
    panels = ctx.canvas.grid(len(MATRICES), 2, panel=(4.2, 2.6), legend=True, margins=(1.1, 0.6),
                             share_x=True)
    for i, matrix in enumerate(MATRICES):
        best, beta = {}, {}
        for run in view.runs:
            rows = view.rows("fits", run, matrix)
            if not len(rows):
                continue
            # one row per family and snapshot: the first family's rows carry each snapshot's best;
            # snapshots that were not fitted (B all zeros at init) keep their reason as label
            first = rows[rows["family"] == families[0]]
            best[run] = (first["step"].to_numpy(), [str(b) for b in first["best_family"]])
            gennorm = rows[rows["family"] == "gennorm"]
            beta[run] = (gennorm["step"].to_numpy(), gennorm["shape"].to_numpy(dtype=float),
                         gennorm["method"].to_numpy(dtype=object))
        labels = families + sorted({b for _, bs in best.values() for b in bs} - set(families))
        figures.plot_family_timeline(panels.axes[i, 0], best, labels, ctx.colors,
                                     title=f"{matrix}: best-fitting family")
        ax = panels.axes[i, 1]
        line, infinite, inexact = _beta_marks(beta)
        figures.plot_series(ax, line, ctx.colors, ylabel="generalised-normal β",
                            title=f"{matrix}: shape β (2 = normal)", logy=True)
        figures.plot_marks(ax, infinite, ctx.colors, marker="^", note="▲ β = ∞ (uniform limit)")
        figures.plot_marks(ax, inexact, ctx.colors, marker="o", filled=False,
                           note="○ not a maximum of the likelihood (not ranked)")
        ax.axhline(2.0, color="grey", linewidth=0.8, linestyle="--")
        if ax.get_yscale() == "log":  # the shapes people know: Laplace 1, normal 2
            ax.set_yticks(_BETA_TICKS, [f"{t:g}" for t in _BETA_TICKS])
    panels.figure.suptitle(figures.plain_text(f"{view.name} · distribution fits", 90))
    return [save_figure(ctx, panels, f"{slug}-fits.png",
                        "Best-fitting family (by BIC among maximum-likelihood fits, on a fixed subset "
                        "of entries) and the generalised-normal shape β over steps: β = 1 is Laplace, "
                        "2 normal, large values approach uniform; ▲ marks β = ∞ (the uniform limit), "
                        "hollow marks fits stopped at a bound or not converged (the table's method "
                        "column), which are never ranked.")]


MODULE_FIGURES.register("histograms")(FigureKind(histograms, ("step_histograms",)))
MODULE_FIGURES.register("heatmap")(FigureKind(heatmap, ("histograms",)))
MODULE_FIGURES.register("moments")(FigureKind(moments, ("stats",)))
MODULE_FIGURES.register("fits")(FigureKind(fits, ("fits",)))
