"""Computations over a module's series cut along time, so that threads share them: a `Job` runs on
a slice of snapshots widened by the snapshots before it that it reads (an update needs the one
before, the cosine of two updates the one before that), and the slices' results joined give the
numbers of one pass over the whole series."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

__all__ = ["LOOKBACK", "MIN_PIECE", "Job", "back", "join"]

# Snapshots before its slice that a job cut along time reads: an update needs the snapshot
# before it, the cosine of two updates the one before that.
LOOKBACK = 2
# A slice shorter than this is not worth a task of its own.
MIN_PIECE = 32


def back(sl: slice, lookback: int = LOOKBACK) -> slice:
    """The slice widened by `lookback` snapshots to the left (as far as the series goes)."""
    return slice(max(0, sl.start - lookback), sl.stop)


@dataclass(frozen=True)
class Job:
    """One computation over a module's series. `lookback` None: it is not cut along time (its
    result is not per snapshot, e.g. fits at evenly spaced steps); otherwise `run(sl)` returns
    per-snapshot results for the slice widened by `lookback` (arrays, or dicts and tuples of
    them), of which `keep` drops the widening."""
    run: Callable[[slice], object]
    lookback: int | None = None

    def slices(self, T: int, pieces: int) -> list[slice]:
        n = 1 if self.lookback is None else max(1, min(pieces, T // MIN_PIECE))
        edges = np.linspace(0, T, n + 1).round().astype(int)
        return [slice(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:])]

    def keep(self, result, sl: slice):
        if self.lookback is None:
            return result
        return _rows(result, slice(sl.start - back(sl, self.lookback).start, None))


def _rows(result, sl: slice):
    """The rows `sl` of every array of a (nested) per-snapshot result."""
    if isinstance(result, dict):
        return {k: _rows(v, sl) for k, v in result.items()}
    if isinstance(result, tuple):
        return tuple(_rows(v, sl) for v in result)
    return result[sl]


def join(parts: list):
    """Per-snapshot results of consecutive slices joined into one along time."""
    first = parts[0]
    if len(parts) == 1:
        return first
    if isinstance(first, dict):
        return {k: join([p[k] for p in parts]) for k in first}
    if isinstance(first, tuple):
        return tuple(join([p[i] for p in parts]) for i in range(len(first)))
    return np.concatenate(parts)
