"""`build_report(recordings, out_dir)`: analyses each shown module (a bounded number of steps and
modules) into the tables of `lorascope.analysis`, draws every figure from them into reused
matplotlib figures (modules optionally spread over worker processes), and writes `index.html`
beside the PNGs."""
from __future__ import annotations

import datetime as _dt
import math
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Sequence

import pandas as pd

from lorascope.analysis import analyze
from lorascope.analysis.health import Finding, scope_across_modules
from lorascope.analysis.labels import run_labels
from lorascope.analysis.overview import CHANCE_LEVEL, CHANCE_NAME, eval_columns, eval_label, runs_table, scalar_series
from lorascope.analysis.selection import common_modules
from lorascope.errors import UsageError
from lorascope.outputs import OutputGuard, writing
from lorascope.report import DEFAULT_MAX_MODULES, DEFAULT_MAX_STEPS, MODULE_FIGURES, figures
from lorascope.report.canvas import Canvas, columns_that_fit
from lorascope.report.findings import finding_lines
from lorascope.report.html import FigureRef, ModuleBlock, ModuleGroup, Page, render_page
from lorascope.report.module_figures import FigureContext, save_figure
from lorascope.report.paths import inside
from lorascope.report.seed_figures import seed_view
from lorascope.report.render import (
    ModuleResult, NamedRecording, RenderPlan, render_modules,
)
from lorascope.report.view import panel_steps, report_options

__all__ = ["build_report", "Progress", "split_evaluations", "TRAINING_PANEL"]

Progress = Callable[[int, int, str], None]  # (done, total, what is being drawn)
TRAINING_PANEL = (4.0, 2.6)  # inches: two columns of them and the legend fit a slide (canvas.SLIDE_IN)


def _unique_names(names: Sequence[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name} #{seen[name]}")
    return out


def _open_all(items: Sequence[Any], stack: ExitStack) -> list[Any]:
    import lorascope

    recs = []
    for item in items:
        if isinstance(item, (str, Path)):
            item = stack.enter_context(lorascope.open(item))
        recs.append(item)
    return recs


def build_report(
    recordings: Sequence[Any],
    out_dir: str | Path,
    *,
    modules: str = "*",
    max_modules: int = DEFAULT_MAX_MODULES,
    max_steps: int = DEFAULT_MAX_STEPS,
    figure_kinds: Sequence[str] | None = None,
    bins: int = 64,
    early_steps: int = 3,
    title: str | None = None,
    progress: Progress | None = None,
    workers: int = 1,
    scheduler: str | None = None,
) -> Path:
    """Writes `out_dir/index.html` and its PNGs for one or more recordings (Recording objects or
    paths) and returns the page's path. Only modules every recording has are shown; `modules`
    is a glob over their names and `max_modules` caps how many are drawn. `workers` > 1: that
    many processes draw modules side by side (see render.py: on this project's shared 2-core
    machine it did not pay, so one process drawing here is the default). `scheduler`: the address
    of a Dask scheduler whose workers draw the modules instead (docs/scale.md)."""
    if max_modules < 1:
        raise UsageError(f"--max-modules must be at least 1 (got {max_modules})")
    if bins < 2:
        raise UsageError(f"--bins must be at least 2 (got {bins})")
    if max_steps < 2:
        raise UsageError(f"--max-steps must be at least 2 (got {max_steps})")
    if workers < 1:
        raise UsageError(f"--workers must be at least 1 (got {workers})")
    kinds = list(figure_kinds) if figure_kinds else MODULE_FIGURES.names()
    for kind in kinds:
        MODULE_FIGURES.get(kind)  # an unknown kind raises a UsageError listing the valid ones
    with ExitStack() as stack:
        recs = _open_all(recordings, stack)
        if not recs:
            raise UsageError("give at least one recording to report on")
        # asked before every file the report writes: a recording in the output folder under a
        # report file's name (index.html, a figure's name) is refused, not overwritten
        guard = OutputGuard([r.path for r in recs if getattr(r, "path", None) is not None])
        for rec in recs:
            if len(rec.steps) == 0:
                raise UsageError(
                    f"the recording of run {rec.run_name!r} has no snapshot yet; wait for its first "
                    "step to be written, or leave it out of the report"
                )
        recs = [NamedRecording(r, n) for r, n in zip(recs, _unique_names([r.run_name for r in recs]))]
        names = common_modules(recs, modules)
        shown, omitted = names[:max_modules], names[max_modules:]

        out = Path(out_dir)
        index = guard.check(inside(out, "index.html"))  # before the drawing, not after it
        with writing(out, "choose another --output folder you can write to"):
            out.mkdir(parents=True, exist_ok=True)
        colors = figures.run_colors([r.run_name for r in recs])
        labels = run_labels([r.run_name for r in recs], [r.config for r in recs])
        canvas = Canvas()
        options = report_options(max_steps, bins, panel_steps(recs, early_steps))
        # a kind whose data no recording holds (micro-step gradients) is left out, with a
        # note when it was asked for by name
        missing = {k: why for k in kinds if (why := MODULE_FIGURES.get(k).missing(recs))}
        drawn = tuple(k for k in kinds if len(recs) >= MODULE_FIGURES.get(k).min_runs and k not in missing)
        plan = RenderPlan(out, colors, drawn, options, guard, labels)
        total = 1 + len(shown)
        tick = progress or (lambda done, total, what: None)

        tick(0, total, "training curves")
        training = _training_figures(recs, FigureContext(out, canvas, colors, guard, labels))
        tick(1, total, "training curves")
        seeds = seed_view(recs, out, canvas)  # empty unless some runs differ only by seed
        results: list[ModuleResult | None] = [None] * len(shown)
        for i, result in render_modules(recs, shown, plan, workers=workers, canvas=canvas, scheduler=scheduler,
                                        on_done=lambda done, name: tick(1 + done, total, name)):
            results[i] = result
        # the run-level findings (the loss), then each module's, which came with its result and
        # are scoped here, where every drawn module of the run is in view (`scope_across_modules`)
        by_run: dict[str, list[Finding]] = {r.run_name: [] for r in recs}
        run_health = analyze(recs, (), options, health=True, modules=[]).findings
        for result in results:
            for f in result.health:
                by_run[f.run].append(f)
        health = [*run_health, *(f for found in by_run.values()
                                 for f in scope_across_modules(found, len(shown), options.thresholds))]
        health_by_run: dict[str, list[Finding]] = {r.run_name: [] for r in recs}
        for f in health:
            health_by_run[f.run].append(replace(f, run=None))  # listed under its run's name
        groups: dict[Any, list[ModuleBlock]] = {}
        summary_rows = []
        for result in results:
            groups.setdefault(result.layer, []).append(result.block)
            summary_rows.extend(result.summary)

        notes = [
            f"Modules and steps are subsampled for speed: at most {max_steps} snapshots per run "
            "are analysed (evenly spaced, first and last kept, plus the histograms' steps), so "
            "updates and their cosines compare consecutive snapshots of that sample; fits use up "
            f"to {options.fit_steps} of them."
        ]
        if figure_kinds:
            notes.extend(f"No {k} figures: {why}." for k, why in missing.items())
        if omitted:
            notes.append(
                f"{len(omitted)} more modules in common are not drawn (--max-modules {max_modules}): "
                + ", ".join(omitted[:20]) + (" …" if len(omitted) > 20 else "")
            )
        page = Page(
            title=title or "lorascope report: " + ", ".join(r.run_name for r in recs),
            run_colors=colors,
            run_labels=labels,
            runs_table=runs_table(recs, labels),
            training_figures=training,
            groups=[ModuleGroup(_group_title(layer, blocks), blocks) for layer, blocks in groups.items()],
            summary_table=pd.DataFrame(summary_rows),
            seed_table=seeds.table,
            seed_figures=seeds.figures,
            seed_note=seeds.note,
            health=health_by_run,
            notes=notes,
            findings=finding_lines(recs, results, [*training, *seeds.figures], health),
            generated=f"generated {_dt.datetime.now(_dt.timezone.utc):%Y-%m-%d %H:%M UTC} from "
            f"{len(recs)} recording(s), {len(shown)} of {len(names)} common modules",
        )
        with writing(guard.check(index), "free some space or choose another --output"):
            index.write_text(render_page(page), encoding="utf-8")
        return index


def _group_title(layer: int | None, blocks: list[ModuleBlock]) -> str:
    where = "no layer index" if layer is None else f"layer {layer}"
    roles = ", ".join(dict.fromkeys(b.role for b in blocks))
    return f"{where} · {roles}"


def split_evaluations(recs: Sequence[Any]) -> tuple[list[str], list[str]]:
    """The evaluation metrics drawn as curves over steps (some run evaluated them more than once)
    and those every run evaluated at most once (at the end), which shared panels show as markers
    instead of a mostly empty panel each."""
    columns = dict.fromkeys(c for r in recs for c in eval_columns(r.scalar_columns))
    once = [c for c in columns if all(len(x) <= 1 for x, _ in scalar_series(recs, c).values())]
    return [c for c in columns if c not in once], once


def _training_figures(recs: Sequence[Any], ctx: FigureContext) -> list[FigureRef]:
    """Loss, learning rate and every evaluation metric over steps, runs overlaid, in one figure;
    metrics evaluated once per run share the last panel (one per scale of metric)."""
    curves, once = split_evaluations(recs)
    columns = [("loss", "training loss"), ("lr", "learning rate")]
    columns += [(c, eval_label(c)) for c in curves]
    finals = {eval_label(c): {run: float(y[-1]) for run, (_, y) in scalar_series(recs, c).items()}
              for c in once}
    groups = figures.scale_groups(finals)
    count = len(columns) + len(groups)
    ncols = columns_that_fit(count, TRAINING_PANEL[0], legend=True)
    nrows = math.ceil(count / ncols)
    # the panel of final metrics has metrics, not steps, along x: then no panel shares its x axis
    panels = ctx.canvas.grid(nrows, ncols, panel=TRAINING_PANEL, legend=True, share_x=not once)
    axes = panels.flat(count)
    for ax, (column, label) in zip(axes, columns):
        series = scalar_series(recs, column)
        if series:
            figures.plot_series(ax, series, ctx.colors, ylabel=label, title=label)
        else:
            figures.mark_empty(ax, f"no {label} recorded")
        if column in CHANCE_LEVEL:
            chance = {run: float(y[-1]) for run, (_, y) in scalar_series(recs, CHANCE_LEVEL[column]).items()}
            figures.mark_chance(ax, chance, ctx.colors, CHANCE_NAME[CHANCE_LEVEL[column]])
    caption = "Training loss, learning rate" + (" and evaluation metrics" if curves else "") + " over optimizer steps"
    for ax, group in zip(axes[len(columns):], groups):
        figures.plot_final_metrics(ax, {m: finals[m] for m in group}, ctx.colors,
                                   title="evaluated once, at the end")
    if once:
        caption += ("; the metrics each run evaluated once, at its end, are markers (a marker per run; "
                    "metrics of one scale share a panel)")
    panels.figure.suptitle("Training, runs overlaid")
    return [save_figure(ctx, panels, "training.png", caption + ".")]
