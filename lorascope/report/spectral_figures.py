"""Figure kinds about ΔW's geometry: its singular spectrum over steps (with effective rank and
norm), and how much the subspaces that A and B span agree between runs at the final step (the
LoRA paper's subspace similarity, §7). They register into the same registry as the others."""
from __future__ import annotations

import math

import numpy as np

from lorascope.analysis.geometry import random_baseline, subspace_basis, subspace_similarity
from lorascope.analysis.spectra import effective_rank
from lorascope.errors import UsageError
from lorascope.report import derived, figures
from lorascope.report.collect import ModuleData
from lorascope.report.html import FigureRef
from lorascope.report.module_figures import MODULE_FIGURES, FigureContext, save_figure

__all__ = ["spectrum", "similarity", "final_similarity"]


@MODULE_FIGURES.register("spectrum")
def spectrum(data: ModuleData, slug: str, ctx: FigureContext) -> list[FigureRef]:
    """ΔW's singular values over steps, one panel per run, then effective rank and ‖ΔW‖_F with
    the runs overlaid."""
    n = len(data.runs)
    ncols = min(n + 2, 4)
    nrows = math.ceil((n + 2) / ncols)
    panels = ctx.canvas.grid(nrows, ncols, panel=(3.6, 2.7), legend=True, share_x=True)
    axes = panels.flat(n + 2)
    ranks, norms = {}, {}
    for ax, (run, rm) in zip(axes, data.runs.items()):
        sv = derived.dw_singular_values(data, run)  # (T, r)
        figures.plot_singular_spectrum(ax, rm.steps, sv, color=ctx.colors[run], title=run)
        ranks[run] = (rm.steps, effective_rank(sv))
        norms[run] = (rm.steps, np.sqrt(np.sum(sv**2, axis=1)))
    figures.plot_series(axes[n], ranks, ctx.colors, ylabel="effective rank of ΔW",
                        title="effective rank (entropy)")
    figures.plot_series(axes[n + 1], norms, ctx.colors, ylabel="‖ΔW‖_F", title="Frobenius norm of ΔW")
    panels.figure.suptitle(figures.plain_text(f"{data.name} · spectrum of ΔW = scaling·B·A", 90))
    return [save_figure(ctx, panels, f"{slug}-spectrum.png",
                        "Singular values of ΔW over steps per run (σ₁ darkest), its effective rank "
                        "and its Frobenius norm, runs overlaid.")]


def final_similarity(data: ModuleData, matrix: str) -> np.ndarray:
    """φ between every pair of runs' final subspaces of A (input side) or B (output side), using
    all min(r₁, r₂) directions; NaN where a run's factor is not finite or the dimensions differ."""
    runs = list(data.runs.values())
    bases = []
    for rm in runs:
        X = (rm.A if matrix == "A" else rm.B)[-1:]
        try:
            bases.append(subspace_basis(X, matrix)[0])
        except UsageError:
            bases.append(None)
    n = len(runs)
    grid = np.full((n, n), np.nan)
    for i in range(n):
        for j in range(n):
            if bases[i] is None or bases[j] is None or bases[i].shape[0] != bases[j].shape[0]:
                continue
            k = min(bases[i].shape[1], bases[j].shape[1])
            grid[i, j] = float(subspace_similarity(bases[i], bases[j], k, k))
    return grid


@MODULE_FIGURES.register("similarity")
def similarity(data: ModuleData, slug: str, ctx: FigureContext) -> list[FigureRef]:
    """Run-by-run subspace similarity of A and of B at the final step; needs two runs or more."""
    if len(data.runs) < 2:
        return []
    panels = ctx.canvas.grid(1, 2, panel=(3.2, 3.2), colorbar=True, margins=(1.3, 1.1))
    image = None
    baselines = []
    for ax, matrix in zip(panels.flat(2), ("A", "B")):
        grid = final_similarity(data, matrix)
        dim = data.in_features if matrix == "A" else data.out_features
        rank = min(rm.rank for rm in data.runs.values())
        baselines.append(f"{matrix} {random_baseline(dim, rank, rank):.3f}")
        side = "input (row space of A)" if matrix == "A" else "output (column space of B)"
        image = figures.plot_similarity_matrix(ax, grid, list(data.runs), title=f"{matrix}: {side}")
    if image is not None and panels.colorbar_ax is not None:
        panels.figure.colorbar(image, cax=panels.colorbar_ax, label="subspace similarity φ")
    panels.figure.suptitle(figures.plain_text(f"{data.name} · final-step subspaces between runs", 90))
    return [save_figure(ctx, panels, f"{slug}-similarity.png",
                        "Subspace similarity φ = ‖U₁ᵀU₂‖²_F / r between runs at their final step "
                        "(1 = same subspace; two random subspaces give about "
                        + ", ".join(baselines) + ").")]
