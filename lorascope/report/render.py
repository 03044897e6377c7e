"""Drawing the modules of a report: everything one module contributes (its figures, health
findings and summary rows) comes from `render_module`, which analyses the module (one
`lorascope.analysis.analyze` call) and draws its tables, in this process or in a pool of worker
processes. Modules are independent, so a report of many modules spreads them over the cores;
each worker opens the recordings itself (an open HDF5 file cannot be shared between processes)
and keeps one Canvas, so figures are reused inside each worker as they are in a serial report."""
from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from lorascope.analysis import Options
from lorascope.analysis.findings import TABLES_NEEDED
from lorascope.errors import UsageError
from lorascope.outputs import OutputGuard
from lorascope.report import MODULE_FIGURES
from lorascope.report.canvas import Canvas
from lorascope.report.html import ModuleBlock
from lorascope.report.module_figures import FigureContext
from lorascope.report.paths import safe_name
from lorascope.report.summary import summary_rows
from lorascope.report.view import SUMMARY_TABLES, module_view
from lorascope.workers import math_threads, threads_each

__all__ = [
    "RenderPlan", "ModuleResult", "NamedRecording", "render_module", "render_modules",
    "MIN_MODULES_PER_WORKER",
]

# A worker costs about two seconds of imports before it draws anything (more when the main
# script imports torch: spawn re-imports it), and a module about five seconds of drawing (6 runs);
# below two modules per worker the pool cannot pay. Measured on this project's shared 2-core
# machine (load 5-8), two workers did not beat one process (6 runs x 14 modules: 129 and 165 s
# against 155 and 132 s, interleaved), so build_report uses them only when asked.
MIN_MODULES_PER_WORKER = 2


@dataclass(frozen=True)
class RenderPlan:
    """What every module is drawn with; sent to each worker once."""

    out_dir: Path
    colors: dict[str, str]
    kinds: tuple[str, ...]
    options: Options  # the analysis of each module (view.report_options)
    guard: OutputGuard = field(default_factory=lambda: OutputGuard(()))  # the report's inputs: never written over
    labels: dict[str, str] = field(default_factory=dict)  # run name → legend label

    @property
    def tables(self) -> tuple[str, ...]:
        """The analysis tables the figure kinds and the summary table read."""
        kinds = [MODULE_FIGURES.get(kind).tables for kind in self.kinds]
        return tuple(dict.fromkeys(t for tables in (*kinds, SUMMARY_TABLES, tuple(TABLES_NEEDED)) for t in tables))


@dataclass
class ModuleResult:
    """A module's part of the page, in plain values (it crosses process boundaries)."""

    block: ModuleBlock
    layer: int | None
    summary: list[dict] = field(default_factory=list)  # rows of the summary table
    # what the page's Findings read of this module: its rows of the tables they need (only the
    # columns they read), its health findings, and the anchor of each figure kind drawn
    tables: dict[str, Any] = field(default_factory=dict)
    health: list = field(default_factory=list)
    anchors: dict[str, str] = field(default_factory=dict)


class NamedRecording:
    """A recording shown under another name: two runs may carry the same name, and the report
    keys colours and tables by name."""

    def __init__(self, rec: Any, name: str) -> None:
        self._rec = rec
        self.run_name = name

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._rec, attr)


def render_module(recs: Sequence[Any], name: str, index: int, plan: RenderPlan,
                  canvas: Canvas) -> ModuleResult:
    """Analyses module `name` of every run, writes its PNGs and returns its part of the page."""
    view = module_view(recs, name, plan.tables, plan.options)
    ctx = FigureContext(plan.out_dir, canvas, plan.colors, plan.guard, plan.labels)
    slug = f"m{index:03d}-{safe_name(name, 'module')}"
    drawn = {kind: MODULE_FIGURES.get(kind).draw(view, slug, ctx) for kind in plan.kinds}
    refs = [ref for kind_refs in drawn.values() for ref in kind_refs]
    first = recs[0].modules[name]
    shape = f"rank {first.rank} · {first.in_features} → {first.out_features}"
    block = ModuleBlock(name, shape, refs, view.role, anchor=f"module-{slug}")
    kept = {t: view.tables[t][[c for c in columns if c in view.tables[t].columns]]
            for t, columns in TABLES_NEEDED.items() if t in view.tables}
    anchors = {kind: kind_refs[0].anchor for kind, kind_refs in drawn.items() if kind_refs}
    return ModuleResult(block, view.layer, summary_rows(view), kept, view.health, anchors)


def _recording_paths(recs: Sequence[Any]) -> list[Path] | None:
    """Where each recording's file is, when a worker can open the same data again: not for
    in-memory recordings, and not for a run still being written (a worker opening it later would
    see more snapshots than the rest of the page)."""
    paths = []
    for rec in recs:
        path = getattr(rec, "path", None)
        if path is None or getattr(rec, "status", "") == "running" or not Path(path).is_file():
            return None
        paths.append(Path(path))
    return paths


def render_modules(
    recs: Sequence[Any],
    names: Sequence[str],
    plan: RenderPlan,
    *,
    workers: int,
    canvas: Canvas,
    on_done: Callable[[int, str], None] = lambda done, name: None,
    scheduler: str | None = None,
) -> Iterator[tuple[int, ModuleResult]]:
    """(index, result) for every module in `names`, in the order they finish; `on_done(done,
    name)` after each. Uses up to `workers` processes when there are enough modules and every
    recording is a complete file; otherwise draws here, on `canvas`. `scheduler`: one task per
    module on that Dask cluster instead, each opening the recordings by path and writing its
    PNGs into the report's folder (which the workers must see, as they see the recordings)."""
    if scheduler is not None:
        yield from _on_cluster(scheduler, recs, names, plan, on_done)
        return
    workers = min(workers, len(names) // MIN_MODULES_PER_WORKER)
    paths = _recording_paths(recs) if workers > 1 else None
    if paths is None:
        for i, name in enumerate(names):
            yield i, render_module(recs, name, i, plan, canvas)
            on_done(i + 1, name)
        return
    run_names = [r.run_name for r in recs]
    finished: set[int] = set()
    # spawn, not fork: a forked child would share the parent's open HDF5 handles
    context = multiprocessing.get_context("spawn")
    try:
        with math_threads(threads_each(workers)), \
                ProcessPoolExecutor(workers, mp_context=context, initializer=_start_worker,
                                    initargs=(paths, run_names, plan)) as pool:
            futures = {pool.submit(_render_in_worker, i, name): (i, name) for i, name in enumerate(names)}
            for future in as_completed(futures):
                i, name = futures[future]
                result = future.result()
                finished.add(i)
                yield i, result
                on_done(len(finished), name)
    except BrokenProcessPool:
        # A worker could not start or died (a __main__ that cannot be re-imported, such as a
        # script piped to python, or a worker killed for memory): draw the rest here.
        pass
    for i, name in enumerate(names):
        if i not in finished:
            finished.add(i)
            yield i, render_module(recs, name, i, plan, canvas)
            on_done(len(finished), name)


def _on_cluster(address: str, recs: Sequence[Any], names: Sequence[str], plan: RenderPlan,
                on_done: Callable[[int, str], None]) -> Iterator[tuple[int, ModuleResult]]:
    from lorascope.cluster import run_tasks

    paths = _recording_paths(recs)
    if paths is None:
        raise UsageError("a report drawn on a Dask cluster needs finished recordings opened from files: "
                         "the workers open each file by its path")
    run_names = [r.run_name for r in recs]
    done = [0]

    def finished(i: int, result: ModuleResult) -> None:
        done[0] += 1
        on_done(done[0], names[i])

    results = run_tasks(address, _render_task, [(paths, run_names, plan, i, name) for i, name in enumerate(names)],
                        finished)
    yield from enumerate(results)


def _render_task(paths: list[Path], run_names: list[str], plan: RenderPlan, index: int, name: str) -> ModuleResult:
    """On a Dask worker: one module, the recordings opened here and closed after it."""
    import lorascope

    with ExitStack() as stack:
        recs = [NamedRecording(stack.enter_context(lorascope.open(p)), n) for p, n in zip(paths, run_names)]
        return render_module(recs, name, index, plan, Canvas())


_WORKER: dict[str, Any] = {}


def _start_worker(paths: list[Path], run_names: list[str], plan: RenderPlan) -> None:
    import lorascope

    stack = ExitStack()  # open for the worker's life; the files close when the process ends
    recs = [NamedRecording(stack.enter_context(lorascope.open(p)), n) for p, n in zip(paths, run_names)]
    _WORKER.update(recs=recs, plan=plan, canvas=Canvas(), stack=stack)


def _render_in_worker(index: int, name: str) -> ModuleResult:
    return render_module(_WORKER["recs"], name, index, _WORKER["plan"], _WORKER["canvas"])
