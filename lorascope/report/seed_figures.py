"""The report's view across seeds: when runs differ only by their seed (a sweep's ``--seeds``),
their loss and evaluation curves drawn as each group's mean with the min–max band across its
seeds, and their summary numbers as mean ± std. The numbers are `lorascope.analysis.seeds`'
tables; the curves' table is also written beside the figure (``training_seeds.csv``), so what
the figure shows can be read back exactly."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd
from matplotlib.axes import Axes

from lorascope.analysis.labels import run_labels
from lorascope.analysis.overview import eval_columns, eval_label
from lorascope.analysis.seeds import SeedGroup, has_seed_groups, seed_curves, seed_groups, seed_summary
from lorascope.report import figures
from lorascope.report.canvas import Canvas, columns_that_fit
from lorascope.report.html import FigureRef, format_number
from lorascope.report.module_figures import FigureContext, save_figure
from lorascope.report.paths import inside

__all__ = ["SeedView", "seed_view", "plot_band", "summary_cells", "CURVES_FILE"]

CURVES_FILE = "training_seeds.csv"
SPREAD_NOTE = ("Runs that differ only by their seed are taken together: curves are the mean across "
               "seeds with the min–max band, numbers are mean ± sample standard deviation (n seeds).")


@dataclass
class SeedView:
    figures: list[FigureRef] = field(default_factory=list)
    table: pd.DataFrame | None = None  # one row per quantity, one column per group
    note: str = ""


def plot_band(ax: Axes, curves: pd.DataFrame, colors: Mapping[str, str], *, ylabel: str,
              title: str = "", xlabel: str = figures.STEP_LABEL) -> None:
    """One line per group (its mean over `step`) with the min–max band behind it; a group whose
    curve has a few points (evaluations) gets markers and error bars instead of a band."""
    for group, rows in curves.groupby("group", sort=False):
        x, mean = rows["step"].to_numpy(), rows["mean"].to_numpy()
        low, high = rows["min"].to_numpy(), rows["max"].to_numpy()
        color = colors[group]
        if len(x) <= 12:
            ax.errorbar(x, mean, yerr=[mean - low, high - mean], color=color, marker="o",
                        markersize=3, linewidth=1.3, capsize=2)
        else:
            ax.fill_between(x, low, high, color=color, alpha=0.2, linewidth=0)
            ax.plot(x, mean, color=color, linewidth=1.3)
    figures.step_axis(ax, xlabel)
    ax.set_ylabel(figures.plain_text(ylabel, 40))
    if title:
        ax.set_title(figures.plain_text(title, 60), fontsize=10, y=1.0, pad=4)
    ax.grid(alpha=0.25)


def summary_cells(summary: pd.DataFrame, groups: Sequence[SeedGroup]) -> pd.DataFrame:
    """`seed_summary`'s rows as the page shows them: a row per quantity, a column per group
    ("label (n seeds)"), cells "mean ± std"."""
    size = {g.label: len(g.runs) for g in groups}
    header = {label: f"{label} ({n} seed{'s' if n > 1 else ''})" for label, n in size.items()}
    cells: dict[str, dict[str, str]] = {}
    for row in summary.itertuples(index=False):
        text = format_number(float(row.mean))
        if row.n > 1 and math.isfinite(row.std):
            text += f" ± {format_number(float(row.std))}"
        if row.n < size[row.group]:  # a seed that never logged it: say how many the mean is of
            text += f" (n={row.n})"
        cells.setdefault(header[row.group], {})[row.quantity] = text
    table = pd.DataFrame(cells)
    return table.reindex(columns=[header[g.label] for g in groups])


def _group_labels(recs: Sequence[Any], groups: Sequence[SeedGroup]) -> list[str]:
    """Each group's legend label: what differs between the groups' configs, the seed aside."""
    config = {r.run_name: r.config or {} for r in recs}
    firsts = [{**config[g.runs[0]], "seed": None} for g in groups]
    labels = run_labels([g.label for g in groups], firsts)
    return [labels[g.label] for g in groups]


def seed_view(recs: Sequence[Any], out: Path, canvas: Canvas) -> SeedView:
    """The figure, its CSV and the summary table when some runs differ only by seed; an empty
    view otherwise."""
    groups = seed_groups(recs)
    if not has_seed_groups(groups):
        return SeedView()
    columns = [("loss", "training loss")]
    evals = dict.fromkeys(c for r in recs for c in eval_columns(r.scalar_columns))
    columns += [(c, eval_label(c)) for c in evals]
    tables = {column: seed_curves(recs, column, groups) for column, _ in columns}
    colors = figures.run_colors([g.label for g in groups])
    ncols = columns_that_fit(len(columns), 4.0, legend=True)
    panels = canvas.grid(math.ceil(len(columns) / ncols), ncols, panel=(4.0, 2.6), legend=True, share_x=True)
    for ax, (column, label) in zip(panels.flat(len(columns)), columns):
        if tables[column].empty:
            figures.mark_empty(ax, f"no {label} recorded")
        else:
            plot_band(ax, tables[column], colors, ylabel=label, title=label)
    panels.figure.suptitle("Training across seeds: mean, min–max band")
    legend = {f"{short} ×{len(g.runs)}": colors[g.label] for g, short in zip(groups, _group_labels(recs, groups))}
    figure = save_figure(FigureContext(out, canvas, legend), panels, "training_seeds.png",
                         "Loss and evaluation metrics over optimizer steps: each group's mean across "
                         "its seeds, with the min–max band (error bars at evaluation points); data in "
                         f"{CURVES_FILE}.")
    drawn = [t.assign(column=c) for c, t in tables.items() if not t.empty]
    if drawn:
        pd.concat(drawn, ignore_index=True).to_csv(inside(out, CURVES_FILE), index=False)
    return SeedView([figure], summary_cells(seed_summary(recs, groups), groups), SPREAD_NOTE)
