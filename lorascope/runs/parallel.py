"""A sweep's runs trained side by side: ``jobs`` worker processes, each with an equal share of the
cores. A small run on a CPU may not keep all its threads busy (small matrices, Python between the
kernels); whether runs of fewer threads side by side finish a grid sooner depends on the model:
1.1x for two MiniLM runs on 2 cores, nothing for SmolLM2-135M (the README's measurements).

Signals: the workers run in a session of their own, out of reach of the terminal's Ctrl-C, and
the sweep's process hands each signal it receives on to every worker, once. So the first Ctrl-C
(or SIGTERM, SIGHUP) ends every running run at its next step, closed as ``interrupted`` and
resumable, as in a sweep run one by one; a second Ctrl-C aborts them at once; and runs that had
not started never start."""
from __future__ import annotations

import multiprocessing
import os
import re
import signal
import sys
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from typing import TYPE_CHECKING, Any, Callable, Sequence, TextIO

from lorascope.errors import LorascopeError
from lorascope.workers import math_threads, threads_each

if TYPE_CHECKING:
    from lorascope.runs.session import RunSummary
    from lorascope.runs.sweep import SweepRun

__all__ = ["run_side_by_side"]

_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


# --- in each worker ------------------------------------------------------------------------------

_stop_requested: list[int] = []  # the signals that reached this worker: it starts no run after one


class _Labelled:
    """The worker's stderr: every line starts with the name of the run that wrote it, and the
    progress is a line now and then rather than a bar redrawn in place, which two workers would
    draw over each other."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.label = ""
        self._line_start = True

    def write(self, text: str) -> int:
        out = []
        for piece in re.split(r"([\r\n])", text):
            if piece in ("\r", "\n"):  # a bar redrawn in place becomes one line per drawing
                if not self._line_start:
                    out.append("\n")
                    self._line_start = True
            elif piece:
                if self._line_start:
                    out.append(f"{self.label}: ")
                    self._line_start = False
                out.append(piece)
        self.stream.write("".join(out))
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def isatty(self) -> bool:
        return False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


def _note_stop(signum: int, frame: Any) -> None:
    _stop_requested.append(signum)


def _start_worker(threads: int) -> None:
    if hasattr(os, "setsid"):  # POSIX: the terminal's Ctrl-C reaches the sweep's process only, which passes it on once
        os.setsid()
    for sig in _SIGNALS:
        signal.signal(sig, _note_stop)
    import torch

    torch.set_num_threads(threads)
    sys.stderr = _Labelled(sys.stderr)


def _run_in_worker(cfg: Any) -> "RunSummary | None":
    if _stop_requested:
        return None
    from lorascope.runs import session

    if isinstance(sys.stderr, _Labelled):
        sys.stderr.label = cfg.name
    summary = session.run(cfg, log=lambda line: None)
    if summary.interrupted:  # the run's own handler took the signal: start nothing after it
        _stop_requested.append(summary.stop_signal or signal.SIGINT)
    return summary


# --- in the sweep's process ----------------------------------------------------------------------

class _PassSignalsOn:
    """While the pool runs, a signal to this process goes on to every worker and cancels the runs
    not yet handed to one."""

    def __init__(self) -> None:
        self.futures: list[Future] = []
        self.pool: ProcessPoolExecutor | None = None
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        self.signum = self.signum or signum
        self.stop_all(signum)

    def stop_all(self, signum: int) -> None:
        for future in self.futures:
            future.cancel()
        # The pool's own workers, not every child of this process: a caller's other children
        # (a pool of its own, a local cluster) are not ours to signal. The executor keeps them in
        # `_processes` (pid -> process) and offers no public way to reach them.
        workers = dict(getattr(self.pool, "_processes", None) or {})
        for pid in workers:
            try:
                os.kill(pid, signum)
            except ProcessLookupError:  # already gone
                pass

    def __enter__(self) -> "_PassSignalsOn":
        for sig in _SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def run_side_by_side(runs: Sequence["SweepRun"], jobs: int,
                     on_done: Callable[["SweepRun", "RunSummary | None"], None]) -> int | None:
    """Trains `runs` in `jobs` worker processes, each with its share of the cores' threads, and
    calls `on_done(run, summary)` as each ends (summary None: a signal came before it started).
    Returns the signal that stopped the sweep, or None. A run that fails stops the others
    (interrupted, resumable), and its error is raised here once they have closed their files."""
    threads = threads_each(jobs)
    context = multiprocessing.get_context("spawn")  # a forked child would inherit torch's threads and locks
    failure: BaseException | None = None
    # The signals are taken over before the first worker starts: the workers cannot hear the
    # terminal, so a Ctrl-C that this process did not pass on would wait for whole runs.
    with _PassSignalsOn() as signals, math_threads(threads), ProcessPoolExecutor(
            jobs, mp_context=context, initializer=_start_worker, initargs=(threads,)) as pool:
        signals.pool = pool
        planned = {pool.submit(_run_in_worker, run.config): run for run in runs}
        signals.futures = list(planned)
        if signals.signum is not None:
            signals.stop_all(signals.signum)
        for future in as_completed(planned):
            if future.cancelled():
                continue
            try:
                summary = future.result()
            except BrokenProcessPool:
                if signals.signum is None:  # a worker killed by a signal meant for the sweep is no failure
                    failure = failure or LorascopeError(
                        f"a worker process of the sweep died during {planned[future].name} (killed for "
                        "memory?); run the sweep again with fewer --jobs: the finished runs are kept"
                    )
                continue
            except BaseException as exc:  # noqa: BLE001 - raised below, once the other runs have stopped
                failure = failure or exc
                signals.stop_all(signal.SIGTERM)
                continue
            on_done(planned[future], summary)
    if failure is not None:
        raise failure
    return signals.signum
