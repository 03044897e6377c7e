"""`build_report(recordings, out_dir)`: reads what each figure needs (a bounded number of steps
and modules), draws every figure into reused matplotlib figures, and writes `index.html` beside
the PNGs."""
from __future__ import annotations

import datetime as _dt
import math
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Callable, Sequence

from lorascope.errors import UsageError
from lorascope.report import figures
from lorascope.report.canvas import Canvas
from lorascope.report.collect import common_modules, read_module
from lorascope.report.health import loss_findings, module_findings
from lorascope.report.html import FigureRef, ModuleBlock, ModuleGroup, Page, render_page
from lorascope.report.module_figures import MODULE_FIGURES, FigureContext, save_figure
from lorascope.report import spectral_figures  # noqa: F401 - registers the spectrum and similarity kinds
from lorascope.report.paths import inside, safe_name
from lorascope.report.runs import eval_columns, runs_table, scalar_series
from lorascope.report.summary import summary_table

__all__ = ["build_report", "Progress", "DEFAULT_MAX_STEPS", "DEFAULT_MAX_MODULES"]

Progress = Callable[[int, int, str], None]  # (done, total, what is being drawn)
DEFAULT_MAX_STEPS = 120
DEFAULT_MAX_MODULES = 24


class _Named:
    """A recording shown under another name: two runs may carry the same name, and the report
    keys colours and tables by name."""

    def __init__(self, rec: Any, name: str) -> None:
        self._rec = rec
        self.run_name = name

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._rec, attr)


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
) -> Path:
    """Writes `out_dir/index.html` and its PNGs for one or more recordings (Recording objects or
    paths) and returns the page's path. Only modules every recording has are shown; `modules`
    is a glob over their names and `max_modules` caps how many are drawn."""
    if max_modules < 1:
        raise UsageError(f"--max-modules must be at least 1 (got {max_modules})")
    if bins < 2:
        raise UsageError(f"--bins must be at least 2 (got {bins})")
    kinds = list(figure_kinds) if figure_kinds else MODULE_FIGURES.names()
    draw = [(kind, MODULE_FIGURES.get(kind)) for kind in kinds]
    with ExitStack() as stack:
        recs = _open_all(recordings, stack)
        if not recs:
            raise UsageError("give at least one recording to report on")
        for rec in recs:
            if len(rec.steps) == 0:
                raise UsageError(
                    f"the recording of run {rec.run_name!r} has no snapshot yet; wait for its first "
                    "step to be written, or leave it out of the report"
                )
        recs = [_Named(r, n) for r, n in zip(recs, _unique_names([r.run_name for r in recs]))]
        names = common_modules(recs, modules)
        shown, omitted = names[:max_modules], names[max_modules:]

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        colors = figures.run_colors([r.run_name for r in recs])
        ctx = FigureContext(out, Canvas(), colors, bins)
        total = 1 + len(shown)
        tick = progress or (lambda done, total, what: None)

        tick(0, total, "training curves")
        training = _training_figures(recs, ctx)
        warnings = {r.run_name: [str(f) for f in loss_findings(r)] for r in recs}
        groups: dict[Any, list[ModuleBlock]] = {}
        datas = []
        for i, name in enumerate(shown):
            tick(1 + i, total, name)
            data = read_module(recs, name, max_steps, early_steps)
            slug = f"m{i:03d}-{safe_name(name, 'module')}"
            refs = [ref for _, kind in draw for ref in kind(data, slug, ctx)]
            first = recs[0].modules[name]
            shape = f"rank {first.rank} · {first.in_features} → {first.out_features}"
            groups.setdefault(data.layer, []).append(ModuleBlock(name, shape, refs, data.role))
            for run, found in module_findings(data).items():
                warnings[run].extend(str(f) for f in found)
            datas.append(data)
        tick(total, total, "page")

        notes = [
            f"Modules and steps are subsampled for speed: at most {max_steps} snapshots per run "
            "are read for the series and heatmaps (evenly spaced, first and last kept)."
        ]
        if omitted:
            notes.append(
                f"{len(omitted)} more modules in common are not drawn (--max-modules {max_modules}): "
                + ", ".join(omitted[:20]) + (" …" if len(omitted) > 20 else "")
            )
        page = Page(
            title=title or "lorascope report: " + ", ".join(r.run_name for r in recs),
            run_colors=colors,
            runs_table=runs_table(recs),
            training_figures=training,
            groups=[ModuleGroup(_group_title(layer, blocks), blocks) for layer, blocks in groups.items()],
            summary_table=summary_table(datas),
            warnings=warnings,
            notes=notes,
            generated=f"generated {_dt.datetime.now(_dt.timezone.utc):%Y-%m-%d %H:%M UTC} from "
            f"{len(recs)} recording(s), {len(shown)} of {len(names)} common modules",
        )
        index = inside(out, "index.html")
        index.write_text(render_page(page), encoding="utf-8")
        return index


def _group_title(layer: int | None, blocks: list[ModuleBlock]) -> str:
    where = "no layer index" if layer is None else f"layer {layer}"
    roles = ", ".join(dict.fromkeys(b.role for b in blocks))
    return f"{where} · {roles}"


def _training_figures(recs: Sequence[Any], ctx: FigureContext) -> list[FigureRef]:
    """Loss, learning rate and every evaluation metric over steps, runs overlaid, in one figure."""
    columns = [("loss", "training loss", False), ("lr", "learning rate", False)]
    evals = dict.fromkeys(c for r in recs for c in eval_columns(r.scalars))
    columns += [(c, "eval " + c.removeprefix("eval_").replace("_", " "), False) for c in evals]
    ncols = min(len(columns), 3)
    nrows = math.ceil(len(columns) / ncols)
    panels = ctx.canvas.grid(nrows, ncols, panel=(4.2, 2.8), legend=True, share_x=True)
    for ax, (column, label, logy) in zip(panels.flat(len(columns)), columns):
        series = scalar_series(recs, column)
        if series:
            figures.plot_series(ax, series, ctx.colors, ylabel=label, title=label, logy=logy)
        else:
            figures.mark_empty(ax, f"no {label} recorded")
    panels.figure.suptitle("Training, runs overlaid")
    return [save_figure(ctx, panels, "training.png",
                        "Training loss, learning rate and evaluation metrics over optimizer steps.")]
