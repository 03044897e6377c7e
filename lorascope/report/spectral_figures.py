"""Figure kinds about ΔW's geometry: its singular spectrum over steps (with effective rank and
norm), and how much the subspaces that A and B span agree between runs at the final step (the
LoRA paper's subspace similarity, §7). They plot the `singular_values`, `spectra`, `stats` and
`similarity` tables and register into the same registry as the others."""
from __future__ import annotations

import math

import numpy as np

from lorascope.report import MODULE_FIGURES, figures
from lorascope.report.canvas import columns_that_fit
from lorascope.report.html import FigureRef
from lorascope.report.module_figures import FigureContext, FigureKind, save_figure
from lorascope.report.view import ModuleView

__all__ = ["spectrum", "similarity", "final_similarity"]


def _singular_values(view: ModuleView, run: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps (T,), ΔW's singular values (T, r), largest first) from the long-form table."""
    rows = view.rows("singular_values", run, "dW")
    if not len(rows):
        return np.zeros(0), np.zeros((0, 0))
    rows = rows.sort_values(["step", "index"], kind="stable")
    steps = rows["step"].unique()
    return steps, rows["value"].to_numpy(dtype=float).reshape(len(steps), -1)


def spectrum(view: ModuleView, slug: str, ctx: FigureContext) -> list[FigureRef]:
    """ΔW's singular values over steps, one panel per run, then its effective rank (the `spectra`
    table) and ‖ΔW‖_F (the `stats` table) with the runs overlaid."""
    n = len(view.runs)
    ncols = columns_that_fit(n + 2, 3.6, legend=True)
    nrows = math.ceil((n + 2) / ncols)
    panels = ctx.canvas.grid(nrows, ncols, panel=(3.6, 2.7), legend=True, share_x=True)
    axes = panels.flat(n + 2)
    for ax, run in zip(axes, view.runs):
        steps, sv = _singular_values(view, run)
        figures.plot_singular_spectrum(ax, steps, sv, color=ctx.colors[run], title=ctx.label(run))
    ranks = {run: view.series("spectra", run, "dW", "effective_rank") for run in view.runs}
    norms = {run: view.series("stats", run, "dW", "frobenius") for run in view.runs}
    figures.plot_series(axes[n], ranks, ctx.colors, ylabel="effective rank of ΔW",
                        title="effective rank (entropy)")
    figures.plot_series(axes[n + 1], norms, ctx.colors, ylabel="‖ΔW‖_F", title="Frobenius norm of ΔW")
    panels.figure.suptitle(figures.plain_text(f"{view.name} · spectrum of ΔW (the update from W0)", 90))
    return [save_figure(ctx, panels, f"{slug}-spectrum.png",
                        "Singular values of ΔW over steps per run (σ₁ darkest), its effective rank "
                        "and its Frobenius norm, runs overlaid.")]


def final_similarity(view: ModuleView, matrix: str) -> tuple[np.ndarray, list[float]]:
    """φ between every pair of runs' final subspaces of A (input side) or B (output side), from
    the similarity table: its comparison of the runs' last snapshots over all their directions
    (i, j = each run's rank), and 1 on the diagonal (a run against itself, when its last
    snapshot spans a subspace); NaN where the table has no number. Also the random baselines of
    the pairs shown."""
    table = view.tables["similarity"]
    rows = table[table["matrix"] == matrix]
    where = {run: k for k, run in enumerate(view.runs)}
    grid = np.full((len(view.runs), len(view.runs)), np.nan)
    baselines = []
    final = rows[(rows["reference"] == "final") & (rows["step"] == rows["other_step"])]
    for run, g in final.groupby("run", sort=False):
        top = g[g["i"] == g["i"].max()]
        grid[where[run], where[run]] = top["phi"].iloc[0]
    between = rows[rows["reference"] == "run"]
    for (run, other), g in between.groupby(["run", "other_run"], sort=False):
        top = g[g["i"] * g["j"] == (g["i"] * g["j"]).max()].iloc[0]
        grid[where[run], where[other]] = grid[where[other], where[run]] = top["phi"]
        baselines.append(float(top["baseline"]))
    return grid, baselines


def _chance(baselines: list[float]) -> str:
    lo, hi = min(baselines), max(baselines)
    return f"{lo:.3f}" if lo == hi else f"{lo:.3f}–{hi:.3f}"


def similarity(view: ModuleView, slug: str, ctx: FigureContext) -> list[FigureRef]:
    """Run-by-run subspace similarity of A and of B at the final step (two runs or more), with
    the random baseline of each pair drawn: a line on the colour bar and the value under each
    panel, so a φ can be read against what unrelated subspaces give."""
    panels = ctx.canvas.grid(1, 2, panel=(3.2, 3.2), colorbar=True, margins=(1.3, 1.3))
    image = None
    chance: dict[str, list[float]] = {}
    for ax, matrix in zip(panels.flat(2), ("A", "B")):
        grid, baselines = final_similarity(view, matrix)
        side = "input (row space of A)" if matrix == "A" else "output (column space of B)"
        image = figures.plot_similarity_matrix(ax, grid, [ctx.label(r) for r in view.runs],
                                               title=f"{matrix}: {side}")
        if baselines:
            chance[matrix] = baselines
            ax.set_xlabel(f"random subspaces: φ ≈ {_chance(baselines)} (line on the bar)", labelpad=6)
    if image is not None and panels.colorbar_ax is not None:
        panels.figure.colorbar(image, cax=panels.colorbar_ax, label="subspace similarity φ")
        figures.mark_levels(panels.colorbar_ax, sorted({b for bs in chance.values() for b in bs}))
    panels.figure.suptitle(figures.plain_text(f"{view.name} · final-step subspaces between runs", 90))
    caption = ("Subspace similarity φ = ‖U₁ᵀU₂‖²_F / min(r₁, r₂) between runs at their final step (1 = the "
               "same subspace, 0 = orthogonal).")
    if chance:
        caption += (" Two uniformly random subspaces of the same dimensions r₁, r₂ in R^d give φ = "
                    "max(r₁, r₂)/d on average (" + ", ".join(f"{m}: {_chance(b)}" for m, b in chance.items())
                    + "), marked by a line on the colour bar; a φ near it says the runs' subspaces are unrelated.")
    return [save_figure(ctx, panels, f"{slug}-similarity.png", caption)]


MODULE_FIGURES.register("spectrum")(FigureKind(spectrum, ("singular_values", "spectra", "stats")))
MODULE_FIGURES.register("similarity")(FigureKind(similarity, ("similarity",), min_runs=2))
