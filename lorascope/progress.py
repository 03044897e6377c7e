"""A one-line progress display for long work (training steps, sweeps, reports): where it is, how
fast, how long is left. On a terminal it redraws one line; in a log it prints a line now and then."""
from __future__ import annotations

import sys
import time
from typing import TextIO

__all__ = ["StepProgress", "ReportProgress"]


def _duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


class StepProgress:
    def __init__(self, total: int, start: int = 0, label: str = "step", stream: TextIO | None = None) -> None:
        self.total = total
        self.start_count = start
        self.label = label
        self.stream = stream or sys.stderr
        self.interactive = self.stream.isatty()
        self.every = max(1, total // 10)  # non-interactive: about ten lines per run
        self._t0 = time.perf_counter()

    def __enter__(self) -> "StepProgress":
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        if self.interactive:
            self.stream.write("\n")
            self.stream.flush()

    def line(self, done: int, detail: str = "") -> str:
        elapsed = time.perf_counter() - self._t0
        rate = elapsed / max(done - self.start_count, 1)
        left = rate * (self.total - done)
        return f"{self.label} {done}/{self.total}  {detail}  {rate:.2f} s/{self.label}  {_duration(left)} left".replace("    ", "  ")

    def update(self, state, loss: float | None = None) -> None:
        done = state.step if hasattr(state, "step") else int(state)
        detail = f"loss {loss:.4f}" if loss is not None else ""
        if self.interactive:
            self.stream.write("\r" + self.line(done, detail).ljust(79))
            self.stream.flush()
        elif done % self.every == 0 or done == self.total:
            self.stream.write(self.line(done, detail) + "\n")
            self.stream.flush()


class ReportProgress:
    """Adapts build_report's (done, total, what) calls to the shared one-line progress display."""

    def __init__(self) -> None:
        self.bar: StepProgress | None = None

    def __call__(self, done: int, total: int, what: str) -> None:
        if self.bar is None:
            self.bar = StepProgress(total, label="module", stream=sys.stderr)
        line = self.bar.line(done, what[-40:])
        if self.bar.interactive:
            self.bar.stream.write("\r" + line[:100].ljust(100))
            if done == total:
                self.bar.stream.write("\n")
        else:
            self.bar.stream.write(line + "\n")
        self.bar.stream.flush()
