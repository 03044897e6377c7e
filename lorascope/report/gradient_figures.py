"""The figure kind of the recorded gradients: `grad_noise`, the gradient noise within an optimizer
step (the `grad_noise` table, `lorascope.analysis.grad_noise`), drawn only for recordings that
hold two or more micro-step gradients of a step (record.grads with gradient accumulation)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from lorascope.analysis.grad_noise import has_micro_step_gradients
from lorascope.report import MODULE_FIGURES, figures
from lorascope.report.html import FigureRef
from lorascope.report.module_figures import MATRICES, FigureContext, FigureKind, save_figure
from lorascope.report.view import ModuleView

__all__ = ["NO_MICRO_STEPS", "NoisePanel", "noise_panel", "grad_noise", "missing_micro_steps"]

NO_MICRO_STEPS = ("no recording holds two or more micro-step gradients of one optimizer step "
                  "(record with --set record.grads=true and optim.grad_accum of 2 or more)")


def missing_micro_steps(recs: Sequence[Any]) -> str | None:
    """Why the recordings have no gradient noise to draw, or None when one of them has a step
    with two or more micro-step gradients."""
    return None if any(has_micro_step_gradients(rec) for rec in recs) else NO_MICRO_STEPS


@dataclass(frozen=True)
class NoisePanel:
    """What one matrix's panel draws: each run's ratio over the steps where it is defined, each
    run's pure-noise level K over its steps (identical levels once), and the runs without rows."""
    ratio: dict[str, tuple[np.ndarray, np.ndarray]]
    levels: list[tuple[np.ndarray, np.ndarray]]
    without: list[str]


def noise_panel(view: ModuleView, matrix: str) -> NoisePanel:
    """The `grad_noise` rows of one matrix, every run, as drawn. A step whose ratio is undefined
    (status 'zero_signal', 'nonfinite') is NaN: a gap in its run's line."""
    ratio, levels, without = {}, {}, []
    for run in view.runs:
        rows = view.rows("grad_noise", run, matrix)
        if not len(rows):
            without.append(run)
            continue
        steps = rows["step"].to_numpy()
        ratio[run] = (steps, rows["ratio"].to_numpy(dtype=float))
        K = rows["micro_steps"].to_numpy(dtype=float)
        levels.setdefault((steps.tobytes(), K.tobytes()), (steps, K))
    return NoisePanel(ratio, list(levels.values()), without)


def _levels(panel: NoisePanel) -> str:
    """The pure-noise levels drawn, in words: '4', or '2–4' where steps differ in K."""
    values = np.unique(np.concatenate([K for _, K in panel.levels]))
    low, high = int(values.min()), int(values.max())
    return f"{low}" if low == high else f"{low}–{high}"


def grad_noise(view: ModuleView, slug: str, ctx: FigureContext) -> list[FigureRef]:
    """The ratio noise / signal of A's and B's micro-step gradients over steps (log scale), runs
    overlaid, with the pure-noise level K dashed."""
    panels = ctx.canvas.grid(1, len(MATRICES), panel=(3.8, 2.8), legend=True, share_x=True)
    missing = set()
    for ax, matrix in zip(panels.flat(len(MATRICES)), MATRICES):
        panel = noise_panel(view, matrix)
        missing.update(panel.without)
        if not any(np.isfinite(y).any() for _, y in panel.ratio.values()):
            figures.mark_empty(ax, f"no step of {matrix} with a defined ratio (two or more micro-step gradients, "
                                   "a non-zero finite mean)")
            continue
        figures.plot_series(ax, panel.ratio, ctx.colors, ylabel="Σ variance / ‖mean‖²",
                            title=f"{matrix}: gradient noise within a step", logy=True)
        for steps, K in panel.levels:
            ax.plot(steps, K, color="grey", linewidth=1.0, linestyle="--", drawstyle="steps-mid")
        ax.text(0.98, 0.03, f"dashed: pure noise, K = {_levels(panel)}", transform=ax.transAxes,
                fontsize=figures.SMALL_FONT, ha="right", va="bottom", color="dimgrey")
    panels.figure.suptitle(figures.plain_text(f"{view.name} · gradient noise within a step", 90))
    caption = ("The gradient noise within an optimizer step: over the K micro-batches of a step, the "
               "variance of their gradients (summed over the entries) divided by the squared norm of "
               "their mean, for A and B over steps (log scale), runs overlaid. The dashed line is K, "
               "what micro-batches with no common direction give on average: far below it the "
               "micro-batches agree on the step's direction, near it the step's mean gradient is "
               "mostly noise. Steps without a ratio (a zero mean, as A's at step 1 while B = 0; an "
               "fp16 overflow) are gaps; the grad_noise table lists them with their status.")
    if missing:
        caption += " Runs without micro-step gradients: " + ", ".join(sorted(missing)) + "."
    return [save_figure(ctx, panels, f"{slug}-grad-noise.png", caption)]


MODULE_FIGURES.register("grad_noise")(FigureKind(grad_noise, ("grad_noise",), missing=missing_micro_steps))
