"""Which modules and snapshots an analysis reads: modules by glob or by name (those every run has
when runs are compared), a module's job inside its block, snapshots evenly spaced with the first
and the last, and the snapshot nearest an optimizer step. The analysis, the report and `info`
all choose with these."""
from __future__ import annotations

import re
from fnmatch import fnmatchcase
from typing import Any, Sequence

import numpy as np

from lorascope.errors import UsageError

__all__ = ["evenly", "nearest", "role", "common_modules", "module_names"]


def evenly(T: int, limit: int | None) -> np.ndarray:
    """Up to `limit` snapshot indices spread over 0..T-1, always with the first and the last (a
    limit below 2 still keeps both); None: every index."""
    if limit is None or T <= limit:
        return np.arange(T)
    return np.unique(np.linspace(0, T - 1, max(2, limit)).round().astype(int))


def nearest(steps: np.ndarray, targets: Sequence[int]) -> np.ndarray:
    """For each target optimizer step, the index of the snapshot nearest to it (the earlier one on
    a tie, as `Recording.index_of`)."""
    steps = np.asarray(steps, dtype=np.int64)
    if not len(steps):
        return np.zeros(0, dtype=np.int64)
    targets = np.asarray(list(targets), dtype=np.int64)
    return np.abs(steps[None, :] - targets[:, None]).argmin(axis=1).astype(np.int64)


def role(name: str, layer: int | None) -> str:
    """The module's job inside its block: 'transformer.h.11.attn.c_attn' → 'attn.c_attn'; the
    last part of the name for a module outside the blocks."""
    if layer is not None:
        m = re.search(rf"(?:^|\.){int(layer)}\.(.+)$", name)
        if m:
            return m.group(1)
    return name.rsplit(".", 1)[-1]


def common_modules(recs: Sequence[Any], pattern: str = "*") -> list[str]:
    """Modules every recording has that match the glob, in the first recording's order."""
    if not recs:
        raise UsageError("give at least one recording")
    shared = set(recs[0].modules).intersection(*(r.modules for r in recs[1:]))
    if not shared:
        names = ", ".join(repr(r.run_name) for r in recs)
        raise UsageError(
            f"the recordings {names} have no module in common, so there is nothing to compare; "
            "compare recordings of the same model and LoRA targets, or look at each separately"
        )
    names = [n for n in recs[0].modules if n in shared and fnmatchcase(n, pattern)]
    if not names:
        raise UsageError(
            f"no module common to all recordings matches {pattern!r}; some that exist: "
            + ", ".join([n for n in recs[0].modules if n in shared][:5])
        )
    return names


def module_names(recs: Sequence[Any], modules: str | Sequence[str] = "*") -> list[str]:
    """The modules to analyse, in the order they first appear among the recordings: those
    matching a glob (`modules` a string), or the names given (each held by some recording)."""
    seen = list(dict.fromkeys(n for r in recs for n in r.modules))
    if isinstance(modules, str):
        names = [n for n in seen if fnmatchcase(n, modules)]
        if not names and seen:
            raise UsageError(f"no module matches {modules!r}; some that exist: {', '.join(seen[:5])}")
        return names
    missing = [n for n in modules if n not in set(seen)]
    if missing:
        raise UsageError(f"no recording has module {missing[0]!r}; some that exist: {', '.join(seen[:5])}")
    return list(dict.fromkeys(modules))
