"""When to snapshot A and B: every N optimizer steps, every step for a dense first phase then
every N, or a fixed number of log-spaced steps. Step 0 (before any update) is always taken."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from lorascope.config import RecordConfig
from lorascope.errors import UsageError

__all__ = ["Schedule", "EveryN", "LogSpaced", "build_schedule"]


class Schedule:
    """``step in schedule`` says whether the weights after optimizer step ``step`` are kept."""

    def __contains__(self, step: int) -> bool:
        raise NotImplementedError

    def steps(self, total_steps: int) -> list[int]:
        """The snapshot steps of a run of ``total_steps`` optimizer steps, step 0 included."""
        raise NotImplementedError

    def snapshot_count(self, total_steps: int) -> int:
        """How many snapshots ``steps`` holds, without listing them (a billion-step run's
        estimate must not build a billion-item list)."""
        return len(self.steps(total_steps))

    def describe(self) -> dict:
        raise NotImplementedError


@dataclass(frozen=True)
class EveryN(Schedule):
    every: int = 1
    dense_first: int = 0  # every step up to and including this one

    def __contains__(self, step: int) -> bool:
        return step <= self.dense_first or step % self.every == 0

    def steps(self, total_steps: int) -> list[int]:
        dense = min(self.dense_first, total_steps)
        later = range((dense // self.every + 1) * self.every, total_steps + 1, self.every)
        return [*range(dense + 1), *later]

    def snapshot_count(self, total_steps: int) -> int:
        dense = min(self.dense_first, total_steps)
        # steps 0..dense, then the multiples of `every` above dense
        return dense + 1 + total_steps // self.every - dense // self.every

    def describe(self) -> dict:
        return {"kind": "every", "every": self.every, "dense_first": self.dense_first}


@dataclass(frozen=True)
class LogSpaced(Schedule):
    count: int
    total_steps: int
    _steps: frozenset[int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # geomspace from 1 to the last step, rounded; rounding merges early duplicates, so the
        # count is at most `count` + 1 (step 0). Computed once: `in` is asked every step.
        spaced = np.unique(np.rint(np.geomspace(1, self.total_steps, self.count)).astype(int))
        object.__setattr__(self, "_steps", frozenset([0, *spaced.tolist()]))

    def __contains__(self, step: int) -> bool:
        return step in self._steps

    def steps(self, total_steps: int) -> list[int]:
        return sorted(s for s in self._steps if s <= total_steps)

    def describe(self) -> dict:
        return {"kind": "log_spaced", "count": self.count, "total_steps": self.total_steps}


def build_schedule(cfg: RecordConfig, total_steps: int | None = None) -> Schedule:
    if cfg.every < 1:
        raise UsageError(f"record.every must be at least 1 (got {cfg.every})")
    if cfg.dense_first < 0 or cfg.log_spaced < 0:
        raise UsageError("record.dense_first and record.log_spaced must be 0 or more")
    if cfg.log_spaced:
        if not total_steps or total_steps < 1:
            raise UsageError(
                "record.log_spaced needs the planned number of optimizer steps; pass "
                "total_steps= to the Recorder, or use record.every instead"
            )
        return LogSpaced(cfg.log_spaced, total_steps)
    return EveryN(cfg.every, cfg.dense_first)
