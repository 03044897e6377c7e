"""`analyze(recordings, tables)`: the one pass that builds every registered table and the health
findings. It streams over modules: a module's series is read from one run at a time into memory
reused from module to module (1.3x the largest module, measured), every table gathers its rows
from it, and the series is dropped before the next is read. The tables that compare runs finish
a module once its last run was added; derived tables are built at the end.

With `scheduler` (a Dask scheduler's address) the same modules are analysed as tasks on that
cluster (`cluster.py`): one per module when a table compares runs, else one per run's module;
each opens its recording by path and returns its rows, which are put in the same order."""
from __future__ import annotations

from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import numpy as np

from lorascope.analysis import TABLES
from lorascope.analysis import health as _health
from lorascope.analysis.batch import Scratch
from lorascope.analysis.builders import Derived, Table, concat
from lorascope.analysis.module import HEALTH_NEEDS, ModuleAnalysis, read_series
from lorascope.analysis.options import Options
from lorascope.analysis.selection import common_modules, evenly, module_names, nearest
from lorascope.errors import UsageError

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "Analysis", "analyze", "stats_table", "fits_table", "spectra_table", "singular_values_table",
    "intruders_table", "magnitude_direction_table", "amplification_table", "asymmetry_table",
    "grad_noise_table", "similarity_table", "histogram_table", "step_histogram_table", "health_findings",
]



@dataclass
class Analysis:
    """The tables asked for, the health findings, and `notes`: one line per table and run for
    modules a table could not give rows for, and why (a recording without W0)."""
    tables: dict[str, pd.DataFrame]
    findings: list[_health.Finding]
    notes: list[str] = field(default_factory=list)


def _as_list(recs) -> list:
    return list(recs) if isinstance(recs, (list, tuple)) else [recs]


def _with_sources(names: Sequence[str]) -> dict[str, Table]:
    """The tables asked for and those they are derived from, sources first."""
    out: dict[str, Table] = {}

    def visit(name: str) -> None:
        spec = TABLES.get(name)
        for source in spec.sources:
            visit(source)
        out.setdefault(name, spec)

    for name in names:
        visit(name)
    return out


def _sample(T: int, steps: np.ndarray, o: Options) -> np.ndarray:
    """The recording's snapshots an analysis looks at: every one, or `read_steps` of them evenly
    spaced plus those nearest `histogram_steps`."""
    if o.read_steps is None:
        return np.arange(T)
    return np.union1d(evenly(T, o.read_steps), nearest(steps[:T], o.histogram_steps)).astype(np.int64)


def _to_read(S: np.ndarray, steps: np.ndarray, specs: list, health: bool, o: Options) -> np.ndarray:
    """Of the sample S, the snapshots the asked tables read: all of S as soon as one table (or
    the health checks) reads every snapshot, else the union of what each reads."""
    if health:
        return S
    picks = [spec.snapshots(steps[S], o) for spec in specs]
    if not picks or any(p is None for p in picks):
        return S
    return S[np.unique(np.concatenate(picks))]


@dataclass
class _Todo:
    """One run's module to analyse, in the order the driver streams them."""
    run: int          # index of the recording
    position: int     # the module's place in its recording, for the tables' row order
    rec: Any
    name: str
    module: Any
    recorded: int     # snapshots the module holds
    sample: np.ndarray | None  # the snapshots the analysis looks at; None: all
    index: np.ndarray | None   # those of them to read; None: the whole series


def analyze(
    recs,
    tables: Sequence[str] = ("stats",),
    options: Options | None = None,
    health: bool = True,
    progress: Callable[[int, int, str], None] | None = None,
    modules: str | Sequence[str] = "*",
    scheduler: str | None = None,
) -> Analysis:
    """Builds the named tables (see `TABLES.names()`) for one or more recordings, of the modules
    matching `modules` (a glob, or a list of names), and with `health` runs the health checks;
    `progress(done, total, label)` is called per module of each run. Tables that compare runs
    cover the modules every recording has. `scheduler`: the address of a Dask scheduler whose
    workers analyse the modules, opening the recordings' files by path (the same tables)."""
    o = options or Options()
    recs = _as_list(recs)
    specs = _with_sources(tables)
    health = health or any(s.health for s in specs.values())
    streamed = {t: s for t, s in specs.items() if not isinstance(s, Derived)}
    names = module_names(recs, modules)
    compared = set()
    if any(s.compares_runs for s in streamed.values()):
        compared = set(common_modules(recs)) & set(names)
    plan = _Plan(tuple(streamed), frozenset(compared), health, o, {name: i for i, name in enumerate(names)})
    todo = _plan(recs, names, list(streamed.values()), health, o)
    done = _on_cluster(scheduler, recs, todo, plan, progress) if scheduler else _here(todo, plan, progress)
    frames: dict[str, list[tuple[tuple, pd.DataFrame]]] = {t: [] for t in streamed}
    # each run's findings: its loss first, then its modules in order
    per_run = [_loss_findings(rec, o.thresholds) if health else [] for rec in recs]
    noted: dict[tuple[str, str, str], int] = {}  # (table, run, why) -> modules without rows
    for module in done:  # in the plan's order, wherever they were computed
        for t, key, frame in module.rows:
            frames[t].append((key, frame))
        for run, finding in module.findings:
            per_run[run].append(finding)
        for note in module.notes:
            noted[note] = noted.get(note, 0) + 1
    modules_checked = [sum(item.run == run for item in todo) for run in range(len(recs))]
    findings = [f for run, run_findings in enumerate(per_run)
                for f in _health.scope_across_modules(run_findings, modules_checked[run], o.thresholds)]
    built = {t: concat([f for _, f in sorted(frames[t], key=lambda kf: kf[0])], streamed[t].columns)
             for t in streamed}
    for t, spec in specs.items():
        if isinstance(spec, Derived):
            built[t] = spec.build(built, findings)
    notes = [f"{t}: {why} in {n} module{'s' if n > 1 else ''} of run {run!r}" for (t, run, why), n in noted.items()]
    return Analysis({t: built[t] for t in dict.fromkeys(tables)}, findings, notes)


@dataclass(frozen=True)
class _Plan:
    """What every module's analysis needs to know of the whole (small: it travels to workers)."""
    tables: tuple[str, ...]     # the streamed tables, by name
    compared: frozenset         # modules every run has, for the tables that compare runs
    health: bool
    options: Options
    order: dict[str, int]       # a module's place among the analysed ones

    @property
    def compares_runs(self) -> bool:
        return any(TABLES.get(t).compares_runs for t in self.tables)


class _Unit:
    """One module's rows (`(table, key, frame)`) and findings (`(run, finding)`), over the runs
    added to it; `finish` adds the rows of the tables that need every run."""

    def __init__(self, name: str, plan: _Plan) -> None:
        self.name, self.plan = name, plan
        specs = {t: TABLES.get(t) for t in plan.tables}
        self._specs = specs
        self._gatherers = {t: s.rows(plan.options) for t, s in specs.items()
                           if not s.compares_runs or name in plan.compared}
        self._parts = {p for s in specs.values() for p in s.needs} | (set(HEALTH_NEEDS) if plan.health else set())
        self.rows: list[tuple[str, tuple, pd.DataFrame]] = []
        self.findings: list[tuple[int, _health.Finding]] = []
        self.notes: list[tuple[str, str, str]] = []  # (table, run, why) for a module without rows

    def add(self, item: _Todo, series: tuple, pool: Executor | None) -> None:
        o, rec = self.plan.options, item.rec
        ma = ModuleAnalysis(rec.run_name, item.name, item.module, rec.steps, o, getattr(rec, "grad_steps", None),
                            series, getattr(rec, "grad_micro_steps", None), getattr(rec, "state_steps", None),
                            index=item.index, sample=item.sample, recorded=item.recorded)
        ma.precompute(self._parts, pool, o.workers)
        for t, rows in self._gatherers.items():
            key = (self.plan.order[self.name],) if self._specs[t].compares_runs else (item.run, item.position)
            self.rows.extend((t, key, f) for f in rows.add(ma))
            note = getattr(self._specs[t], "note", None)
            why = note(ma) if note is not None else None
            if why:
                self.notes.append((t, ma.run, why))
        if self.plan.health:
            # the checks see one module; the run it came from is what tells several recordings apart
            self.findings.extend((item.run, replace(f, run=ma.run))
                                 for f in _health.check_module(ma.series(), o.thresholds))

    def finish(self) -> "_Done":
        key = (self.plan.order[self.name],)
        for t, rows in self._gatherers.items():
            self.rows.extend((t, key, f) for f in rows.finish())
        return _Done(self.rows, self.findings, self.notes)


@dataclass
class _Done:
    """A finished module's rows and findings (plain data: it travels back from a worker)."""
    rows: list[tuple[str, tuple, pd.DataFrame]]
    findings: list[tuple[int, _health.Finding]]
    notes: list[tuple[str, str, str]]


def _here(todo: list[_Todo], plan: _Plan, progress) -> list[_Done]:
    """Every module analysed in this process, streamed: one module's series in memory at a time
    (two with `prefetch`)."""
    o = plan.options
    pool = ThreadPoolExecutor(o.workers) if o.workers > 1 else None
    reader = ThreadPoolExecutor(1) if o.prefetch else None
    finished: list[_Done] = []
    unit: _Unit | None = None
    try:
        # no enumerate(): it keeps its last (item, series) tuple alive, a second series in memory
        done = 0
        for item, series in _prefetched(todo, reader):
            if unit is None or item.name != unit.name:  # a new module: the last one is complete
                if unit is not None:
                    finished.append(unit.finish())
                unit = _Unit(item.name, plan)
            unit.add(item, series, pool)
            del series  # release this module's series before reading the one after the next
            done += 1
            if progress is not None:
                progress(done, len(todo), f"{item.rec.run_name}:{item.name}")
        if unit is not None:
            finished.append(unit.finish())
    finally:
        for p in (pool, reader):
            if p is not None:
                p.shutdown()
    return finished


def _on_cluster(address: str, recs: list, todo: list[_Todo], plan: _Plan, progress) -> list[_Done]:
    """Every module analysed as a task on the Dask cluster at `address`: one task per module when
    a table compares runs (its runs must meet), else one per run's module."""
    from lorascope.cluster import run_tasks

    paths = _paths(recs)
    groups: list[list[_Todo]] = []
    for item in todo:
        if plan.compares_runs and groups and groups[-1][0].name == item.name:
            groups[-1].append(item)
        else:
            groups.append([item])
    calls = [(paths, [r.run_name for r in recs], [_Task.of(item) for item in group], plan) for group in groups]
    done = [0]

    def finished(i: int, result: _Done) -> None:
        done[0] += len(groups[i])
        if progress is not None:
            progress(done[0], len(todo), groups[i][-1].name)

    return run_tasks(address, _analyze_task, calls, finished)


def _paths(recs: list) -> list[str]:
    """The recordings' files, which the workers open themselves."""
    paths = []
    for rec in recs:
        path = getattr(rec, "path", None)
        if path is None:
            raise UsageError("analysing on a Dask cluster needs recordings opened from files "
                             "(lorascope.open(path)): the workers open each file by its path")
        paths.append(str(path))
    return paths


@dataclass(frozen=True)
class _Task:
    """A `_Todo` without its open file: what a worker needs to find the module again."""
    run: int
    position: int
    name: str
    recorded: int
    sample: np.ndarray | None
    index: np.ndarray | None

    @classmethod
    def of(cls, item: _Todo) -> "_Task":
        return cls(item.run, item.position, item.name, item.recorded, item.sample, item.index)


def _analyze_task(paths: list[str], run_names: list[str], tasks: list[_Task], plan: _Plan) -> _Done:
    """On a worker: one module of one or more runs, each recording opened here by its path."""
    from contextlib import ExitStack

    import lorascope

    o = plan.options
    with ExitStack() as stack:
        opened = {}
        for task in tasks:
            if task.run not in opened:
                opened[task.run] = _Renamed(stack.enter_context(lorascope.open(paths[task.run])), run_names[task.run])
        pool = ThreadPoolExecutor(o.workers) if o.workers > 1 else None
        try:
            unit, scratch = _Unit(tasks[0].name, plan), Scratch()
            for task in tasks:
                rec = opened[task.run]
                item = _Todo(task.run, task.position, rec, task.name, rec.modules[task.name], task.recorded,
                             task.sample, task.index)
                series = read_series(item.module, scratch, item.index)
                unit.add(item, series, pool)
                del series
            return unit.finish()
        finally:
            if pool is not None:
                pool.shutdown()


class _Renamed:
    """A recording under the name the client knew it by (the same file may carry another)."""

    def __init__(self, rec: Any, name: str) -> None:
        self._rec, self.run_name = rec, name

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._rec, attr)


def _plan(recs: list, names: list[str], specs: list, health: bool, o: Options) -> list[_Todo]:
    """Every run's module to analyse, module by module (the tables that compare runs need a
    module of every run together), with the snapshots to read."""
    todo = []
    for name in names:
        for i, rec in enumerate(recs):
            module = rec.modules.get(name)
            if module is None:
                continue
            T = min(len(module.A), len(module.B))
            steps = np.asarray(rec.steps, dtype=np.int64)
            S = _sample(T, steps, o)
            # a module holding more snapshots than the run lists steps is read whole, and refused
            R = _to_read(S, steps, specs, health, o) if len(steps) >= T else S
            whole = len(R) == T
            todo.append(_Todo(i, list(rec.modules).index(name), rec, name, module, T,
                              None if whole else S, None if whole else R))
    return todo


def _prefetched(todo: list[_Todo], reader: Executor | None) -> Iterator[tuple[_Todo, tuple]]:
    """(item, (A, B)) for every item, in order, read into memory reused from module to module
    (the caller drops a module before asking for the next). With a reader thread, the next
    module's series is read into a second set of buffers while the caller analyses this one: a
    cold file's disk time then hides behind the computation, at the price of two modules' series
    in memory instead of one."""
    buffers = [Scratch(), Scratch()]
    if reader is None:
        for item in todo:
            yield item, read_series(item.module, buffers[0], item.index)
        return
    pending = reader.submit(read_series, todo[0].module, buffers[0], todo[0].index) if todo else None
    for i, item in enumerate(todo):
        series = pending.result()
        if i + 1 < len(todo):  # into the buffers of module i - 1, which the caller has dropped
            pending = reader.submit(read_series, todo[i + 1].module, buffers[(i + 1) % 2], todo[i + 1].index)
        yield item, series
        del series


def _loss_findings(rec, thresholds: _health.Thresholds) -> list[_health.Finding]:
    return [replace(f, run=rec.run_name) for f in _health.check_scalars(rec.scalar_columns, thresholds)]


def _one(name: str, recs, options: Options | None) -> pd.DataFrame:
    return analyze(recs, (name,), options, health=False).tables[name]


def stats_table(recs, options: Options | None = None) -> pd.DataFrame:
    """Moments, quantiles, norms, distance from the first snapshot, update size and cosine of
    consecutive updates for A, B and ΔW of every module and snapshot."""
    return _one("stats", recs, options)


def spectra_table(recs, options: Options | None = None) -> pd.DataFrame:
    """Spectral norm, smallest singular value, effective and stable rank, top-k energy share and
    condition number of A, B and ΔW per snapshot."""
    return _one("spectra", recs, options)


def singular_values_table(recs, options: Options | None = None) -> pd.DataFrame:
    """Every singular value of A, B and ΔW per snapshot, long form (`index` 1 = largest)."""
    return _one("singular_values", recs, options)


def fits_table(recs, options: Options | None = None) -> pd.DataFrame:
    """One row per family per snapshot of A and B: loc, scale, shape (t's df, gennorm's β), KS,
    log-likelihood, AIC, BIC, and whether it is the best family of that snapshot."""
    return _one("fits", recs, options)


def intruders_table(recs, options: Options | None = None) -> pd.DataFrame:
    """Intruder dimensions (Shuttleworth et al. 2024) of W0 + ΔW per snapshot, for modules whose
    W0 was recorded: how many of the top `options.intruder_k` singular vectors have no W0 vector
    with |cos| ≥ `options.intruder_epsilon`, and the worst similarity."""
    return _one("intruders", recs, options)


def magnitude_direction_table(recs, options: Options | None = None) -> pd.DataFrame:
    """DoRA's (Liu et al. 2024) magnitude change ΔM and direction change ΔD of W_eff against W0
    per snapshot, and their correlation over the snapshots, for modules whose W0 was recorded."""
    return _one("magnitude_direction", recs, options)


def amplification_table(recs, options: Options | None = None) -> pd.DataFrame:
    """The LoRA paper's amplification ‖ΔW‖_F / ‖UᵀW0V‖_F per snapshot (U, V: ΔW's top-rank
    directions) with the random-direction baseline, for modules whose W0 was recorded."""
    return _one("amplification", recs, options)


def asymmetry_table(recs, options: Options | None = None) -> pd.DataFrame:
    """Zhu et al. 2024's asymmetry per snapshot: how far A and B are from their init (absolute
    and relative to the init's norm) and φ of A's row space against its init."""
    return _one("asymmetry", recs, options)


def grad_noise_table(recs, options: Options | None = None) -> pd.DataFrame:
    """The gradient noise within each optimizer step that has two or more recorded micro-step
    gradients: K, ‖ḡ‖², the micro-steps' summed variance, their ratio (pure noise ≈ K) and the
    leave-one-out cosine, per module, matrix and step (`lorascope.analysis.grad_noise`)."""
    return _one("grad_noise", recs, options)


def similarity_table(recs, options: Options | None = None) -> pd.DataFrame:
    """The LoRA paper's subspace similarity φ of A and B: each snapshot against its run's last
    (`reference` 'final') and every pair of runs at their last snapshots ('run'); see
    `multirun.py` for the zero-matrix cases."""
    return _one("similarity", recs, options)


def histogram_table(recs, bins: int = 64, options: Options | None = None) -> pd.DataFrame:
    """Histograms of A and B on bin edges shared by every run and snapshot of a module (so they
    overlay and subtract), at up to `options.max_steps` snapshots; long form with bin edges
    `left`, `right` and `count`, plus `outside` (NaN/Inf values, never silently dropped)."""
    return _one("histograms", recs, replace(options or Options(), bins=bins))


def step_histogram_table(recs, steps: Sequence[int] = (), bins: int = 64, options: Options | None = None) -> pd.DataFrame:
    """Histograms of A and B at the given steps (each run's nearest snapshot; default the first
    run's first and last step) on bins shared by the runs at each step."""
    return _one("step_histograms", recs, replace(options or Options(), bins=bins, histogram_steps=tuple(steps)))


def health_findings(recs, options: Options | None = None) -> list[_health.Finding]:
    """Every health finding of the recordings, run-level (loss) first, then per module."""
    return analyze(recs, (), options, health=True).findings
