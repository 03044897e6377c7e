"""Figure kinds about the update against the pretrained weight and between the factors, one
figure per table per module, runs overlaid: `intruders`, `magnitude_direction`, `amplification`
and `asymmetry`, each drawing the analysis table of the same name (the report computes none of
their numbers). A module whose recording has no W0 gets a figure that says so."""
from __future__ import annotations

import numpy as np

from lorascope.report import MODULE_FIGURES, figures
from lorascope.report.html import FigureRef
from lorascope.report.module_figures import FigureContext, FigureKind, save_figure
from lorascope.report.view import ModuleView

__all__ = ["intruders", "magnitude_direction", "amplification", "asymmetry"]

NO_W0 = "no W0 in the recording: record with --set record.base_weights=true"


def _series(view: ModuleView, table: str, matrix: str, column: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """One column over steps per run that has rows."""
    out = {}
    for run in view.runs:
        steps, values = view.series(table, run, matrix, column)
        if len(steps):
            out[run] = (steps, values)
    return out


def _figure(view: ModuleView, ctx: FigureContext, table: str, matrix: str,
            panels_spec: list[tuple[str, str, str, bool]], file: str, title: str, caption: str,
            empty: str = NO_W0) -> list[FigureRef]:
    """One row of panels, each a column of `table` over steps (runs overlaid): (column, y label,
    panel title, log y)."""
    panels = ctx.canvas.grid(1, len(panels_spec), panel=(3.6, 2.7), legend=True, share_x=True)
    axes = panels.flat(len(panels_spec))
    for ax, (column, ylabel, panel_title, logy) in zip(axes, panels_spec):
        series = _series(view, table, matrix, column)
        if not series:
            figures.mark_empty(ax, empty)
            continue
        figures.plot_series(ax, series, ctx.colors, ylabel=ylabel, title=panel_title, logy=logy)
        if np.issubdtype(view.tables[table][column].dtype, np.integer):
            figures.integer_y(ax)  # a count: no tick at 0.25 of an intruder
    panels.figure.suptitle(figures.plain_text(f"{view.name} · {title}", 90))
    return [save_figure(ctx, panels, file, caption)]


def intruders(view: ModuleView, slug: str, ctx: FigureContext) -> list[FigureRef]:
    """Intruder dimensions of W0 + ΔW over steps: their count and the worst similarity."""
    table = view.tables["intruders"]
    eps = float(table["epsilon"].iloc[0]) if len(table) else float("nan")
    k = int(table["k"].iloc[0]) if len(table) else 0
    caption = (f"Intruder dimensions (Shuttleworth et al. 2024): of W0 + ΔW's top {k} left-singular vectors, "
               f"those whose largest |cos| with any singular vector of W0 is below ε = {eps:g}, and the "
               "smallest such largest |cos|, over steps." if len(table) else
               "Intruder dimensions (Shuttleworth et al. 2024) need W0: " + NO_W0 + ".")
    return _figure(view, ctx, "intruders", "W", [
        ("count", f"intruders among the top {k}", "intruder dimensions", False),
        ("worst_similarity", "largest |cos| with W0, worst vector", f"worst similarity (ε = {eps:g})", False),
    ], f"{slug}-intruders.png", "intruder dimensions", caption)


def magnitude_direction(view: ModuleView, slug: str, ctx: FigureContext) -> list[FigureRef]:
    """DoRA's ΔM and ΔD over steps, and ΔD against ΔM with each run's correlation."""
    table = view.tables["magnitude_direction"]
    panels = ctx.canvas.grid(1, 3, panel=(3.6, 2.7), legend=True)
    axes = panels.flat(3)
    dm = _series(view, "magnitude_direction", "dW", "magnitude_change")
    dd = _series(view, "magnitude_direction", "dW", "direction_change")
    if not dm:
        for ax in axes:
            figures.mark_empty(ax, NO_W0)
    else:
        figures.plot_series(axes[0], dm, ctx.colors, ylabel="ΔM", title="magnitude change ΔM")
        figures.plot_series(axes[1], dd, ctx.colors, ylabel="ΔD", title="direction change ΔD")
        path = {run: (dm[run][1], dd[run][1]) for run in dm}
        corr = {run: float(table[table["run"] == run]["correlation"].iloc[0]) for run in dm}
        figures.plot_series(axes[2], path, ctx.colors, ylabel="ΔD", xlabel="ΔM", title="ΔD against ΔM")
        # each run's correlation in its own colour: a list of bare r values did not say whose it was
        figures.note_per_run(axes[2], {run: f"r = {c:+.2f}" for run, c in corr.items()}, ctx.colors)
    panels.figure.suptitle(figures.plain_text(f"{view.name} · magnitude and direction (DoRA)", 90))
    return [save_figure(ctx, panels, f"{slug}-magnitude-direction.png",
                        "DoRA's weight decomposition analysis (Liu et al. 2024): the mean change of the "
                        "rows' norms ΔM and of their directions ΔD against W0 over steps, and ΔD against "
                        "ΔM with each run's correlation over steps (the paper: +0.83 for LoRA, −0.62 for "
                        "full fine-tuning, −0.31 for DoRA).")]


def amplification(view: ModuleView, slug: str, ctx: FigureContext) -> list[FigureRef]:
    """‖ΔW‖_F / ‖UᵀW0V‖_F over steps, and the same for random directions."""
    return _figure(view, ctx, "amplification", "dW", [
        ("amplification", "‖ΔW‖ / ‖UᵀW0V‖", "amplification", True),
        ("random_amplification", "‖ΔW‖ / random projection", "random-direction baseline", True),
    ], f"{slug}-amplification.png", "amplification of W0's directions",
        "The LoRA paper's amplification (§7) over steps: ‖ΔW‖_F over ‖UᵀW0V‖_F, U and V ΔW's top-rank "
        "singular directions; beside it the same for random directions. Far above the baseline: ΔW "
        "amplifies directions W0 does not emphasise.")


def asymmetry(view: ModuleView, slug: str, ctx: FigureContext) -> list[FigureRef]:
    """How far A moved relative to its init, how far B moved, and φ of A's row space with its init."""
    panels = ctx.canvas.grid(1, 3, panel=(3.6, 2.7), legend=True, share_x=True)
    axes = panels.flat(3)
    for ax, (matrix, column, ylabel, title) in zip(axes, [
            ("A", "relative", "‖A_t − A_0‖ / ‖A_0‖", "A: relative distance from init"),
            ("B", "distance", "‖B_t − B_0‖_F", "B: distance from init"),
            ("A", "phi", "φ(A_t, A_0)", "A: row space kept from init")]):
        series = _series(view, "asymmetry", matrix, column)
        if series:
            figures.plot_series(ax, series, ctx.colors, ylabel=ylabel, title=title)
        else:
            figures.mark_empty(ax, f"no {matrix} rows")
    panels.figure.suptitle(figures.plain_text(f"{view.name} · asymmetry of A and B", 90))
    return [save_figure(ctx, panels, f"{slug}-asymmetry.png",
                        "The asymmetry of the factors (Zhu et al. 2024) over steps: A's distance from its "
                        "init relative to its init's norm, B's distance from its init (zero at the usual "
                        "init), and φ of A's row space with its init's (1: the same subspace).")]


MODULE_FIGURES.register("intruders")(FigureKind(intruders, ("intruders",)))
MODULE_FIGURES.register("magnitude_direction")(FigureKind(magnitude_direction, ("magnitude_direction",)))
MODULE_FIGURES.register("amplification")(FigureKind(amplification, ("amplification",)))
MODULE_FIGURES.register("asymmetry")(FigureKind(asymmetry, ("asymmetry",)))
