"""What a report reads from its recordings, and how much: the modules every run has, a bounded
set of snapshots (evenly spaced, first and last always kept), and the few steps whose histograms
are drawn side by side (first, a few early ones, the last), as in the seed study `000_*.txt`."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any, Sequence

import numpy as np

from lorascope.errors import UsageError

__all__ = [
    "RunModule",
    "ModuleData",
    "HistogramStep",
    "snapshot_indices",
    "histogram_steps",
    "common_modules",
    "module_role",
    "read_module",
]


@dataclass
class RunModule:
    """One run's view of one module, at the snapshots the report reads."""

    steps: np.ndarray  # (T,) optimizer step of each read snapshot
    A: np.ndarray  # (T, r, in)
    B: np.ndarray  # (T, out, r)
    scaling: float
    rank: int
    source: Any  # the reading API's ModuleRecording, for W0 and attrs


@dataclass
class HistogramStep:
    """One panel of the side-by-side histograms: a label and, per run, a row of RunModule."""

    label: str
    rows: dict[str, int]
    steps: dict[str, int]  # the optimizer step each run actually shows


@dataclass
class ModuleData:
    name: str
    layer: int | None
    role: str
    in_features: int
    out_features: int
    runs: dict[str, RunModule]
    histogram_steps: list[HistogramStep]
    cache: dict = field(default_factory=dict)  # analysis results shared by figures and tables


def snapshot_indices(count: int, limit: int) -> np.ndarray:
    """At most `limit` snapshot indices out of `count`, evenly spaced, always with the first and
    the last: a long recording renders in bounded time and still shows its ends."""
    if count <= 0:
        return np.zeros(0, dtype=np.int64)
    if limit < 2:
        raise UsageError(f"the number of steps to read must be at least 2 (got {limit})")
    if count <= limit:
        return np.arange(count, dtype=np.int64)
    return np.unique(np.round(np.linspace(0, count - 1, limit)).astype(np.int64))


def histogram_steps(steps: np.ndarray, early: int = 3) -> list[int]:
    """The optimizer steps whose histograms are compared: the first snapshot, up to `early`
    snapshots early in training (geometrically spaced: distributions move fastest at first),
    and the last."""
    steps = np.asarray(steps)
    if steps.size == 0:
        return []
    n = steps.size
    if n <= early + 2:
        return [int(s) for s in steps]
    # Indices 1, 2, 4, ... capped to the first 20% of the snapshots.
    horizon = max(1, (n - 1) // 5)
    picks = np.unique(np.clip(np.geomspace(1, horizon, early).round().astype(int), 1, n - 2))
    return [int(steps[0])] + [int(steps[i]) for i in picks] + [int(steps[-1])]


def module_role(name: str, layer: int | None = None) -> str:
    """The module's job inside its block, the part of its name after the block index
    (`transformer.h.11.attn.c_attn` → `attn.c_attn`), or its last part without a block."""
    if layer is not None:
        match = re.search(rf"(?:^|\.){int(layer)}\.(.+)$", name)
        if match:
            return match.group(1)
    return name.rsplit(".", 1)[-1]


def common_modules(recordings: Sequence[Any], pattern: str = "*") -> list[str]:
    """Modules present in every recording and matching the glob, in the first recording's order."""
    if not recordings:
        raise UsageError("give at least one recording to report on")
    shared = set(recordings[0].modules)
    for rec in recordings[1:]:
        shared &= set(rec.modules)
    if not shared:
        names = ", ".join(repr(r.run_name) for r in recordings)
        raise UsageError(
            f"the recordings {names} have no module in common, so there is nothing to compare; "
            "report on recordings of the same model and LoRA targets, or report on each separately"
        )
    names = [n for n in recordings[0].modules if n in shared and fnmatchcase(n, pattern)]
    if not names:
        raise UsageError(
            f"no module common to all recordings matches {pattern!r}; some that exist: "
            + ", ".join(list(n for n in recordings[0].modules if n in shared)[:5])
        )
    return names


def read_module(recordings: Sequence[Any], name: str, max_steps: int, early: int = 3) -> ModuleData:
    """Reads one module's A and B from every run at a bounded set of snapshots, plus the
    snapshots whose histograms are shown side by side."""
    runs: dict[str, RunModule] = {}
    targets = histogram_steps(np.asarray(recordings[0].steps), early)
    wanted: dict[str, list[int]] = {}
    for rec in recordings:
        steps = np.asarray(rec.steps)
        base = snapshot_indices(len(steps), max_steps)
        chosen = [rec.index_of(s) for s in targets[:-1]] + ([len(steps) - 1] if len(steps) else [])
        indices = np.union1d(base, np.asarray(chosen, dtype=np.int64))
        m = rec.modules[name]
        # One snapshot per read: the format chunks one snapshot per chunk, so this is the fast path.
        A = np.stack([np.asarray(m.A[int(i)], dtype=np.float32) for i in indices])
        B = np.stack([np.asarray(m.B[int(i)], dtype=np.float32) for i in indices])
        runs[rec.run_name] = RunModule(steps[indices], A, B, float(m.scaling), int(m.rank), m)
        wanted[rec.run_name] = [int(np.searchsorted(indices, i)) for i in chosen]
    panels = []
    for k, target in enumerate(targets):
        last = k == len(targets) - 1
        rows = {run: wanted[run][min(k, len(wanted[run]) - 1)] for run in runs}
        shown = {run: int(runs[run].steps[row]) for run, row in rows.items()}
        label = f"final (step {_steps_label(shown)})" if last else f"step {_steps_label(shown)}"
        panels.append(HistogramStep(label, rows, shown))
    first = recordings[0].modules[name]
    return ModuleData(
        name=name,
        layer=first.layer_index,
        role=module_role(name, first.layer_index),
        in_features=int(first.in_features),
        out_features=int(first.out_features),
        runs=runs,
        histogram_steps=panels,
    )


def _steps_label(steps: dict[str, int]) -> str:
    values = sorted(set(steps.values()))
    return str(values[0]) if len(values) == 1 else "/".join(str(v) for v in values)
