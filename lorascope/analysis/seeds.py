"""Runs that differ only by their seed, taken together (a sweep's ``--seeds``): which runs form a
group, and each group's training curves and summary numbers as the mean and the spread across
its seeds, so that a difference between groups can be weighed against the seeds' own spread.

The spread is given three ways: ``std`` is the sample standard deviation across seeds (ddof=1,
NaN for a single seed), ``min`` and ``max`` the range. The report draws the mean with the
min–max band (with 2–3 seeds a range says more than a standard deviation of 2–3 values) and
writes summary numbers as mean ± std.

Recordings are read through what `overview` reads (`run_name`, `config`, `scalar_columns`)."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import reduce
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from lorascope.analysis.overview import best_value, eval_columns, eval_set_rows, final_value, flatten_config, scalar_series, wall_time

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["SeedGroup", "SPREAD_COLUMNS", "seed_groups", "has_seed_groups", "seed_curves", "seed_summary",
           "summary_quantities"]

# config fields in which runs of one group may differ: the seed, and what a sweep derives from
# the run's name
VARYING = ("seed", "name", "output")

SPREAD_COLUMNS = ("n", "mean", "std", "min", "max")


@dataclass(frozen=True)
class SeedGroup:
    label: str  # the runs' common name, without its -s<seed> part
    runs: tuple[str, ...]  # run names, in the order given
    seeds: tuple[Any, ...]


def _key(config: dict) -> str:
    flat = {k: v for k, v in flatten_config(config or {}).items() if k not in VARYING}
    return json.dumps(flat, sort_keys=True, default=str)


def _label(name: str, seed: Any, taken: set[str]) -> str:
    """The run name without the sweep's ``-s<seed>`` fragment; if that is not in the name (or
    another group already reads so), the first run's name says which group it is."""
    label = re.sub(rf"-s{re.escape(str(seed))}(?=-|$)", "", name, count=1)
    return label if label != name and label not in taken else f"{name} (+ seeds)"


def seed_groups(recordings: Sequence[Any]) -> list[SeedGroup]:
    """Recordings grouped by their config without seed, name and output, in order of first
    appearance; a run alone is a group of one."""
    members: dict[str, list[Any]] = {}
    for rec in recordings:
        members.setdefault(_key(rec.config), []).append(rec)
    groups: list[SeedGroup] = []
    taken: set[str] = set()
    for recs in members.values():
        seeds = tuple((r.config or {}).get("seed") for r in recs)
        label = recs[0].run_name if len(recs) == 1 else _label(recs[0].run_name, seeds[0], taken)
        taken.add(label)
        groups.append(SeedGroup(label, tuple(r.run_name for r in recs), seeds))
    return groups


def has_seed_groups(groups: Sequence[SeedGroup]) -> bool:
    """Whether any group holds more than one run, i.e. there is a spread to show."""
    return any(len(g.runs) > 1 for g in groups)


def _spread(values: np.ndarray) -> dict[str, np.ndarray]:
    """Statistics over axis 0 (the seeds) of a (seeds, points) array."""
    n = values.shape[0]
    return {
        "n": np.full(values.shape[1], n),
        "mean": values.mean(axis=0),
        "std": values.std(axis=0, ddof=1) if n > 1 else np.full(values.shape[1], np.nan),
        "min": values.min(axis=0),
        "max": values.max(axis=0),
    }


def seed_curves(recordings: Sequence[Any], column: str, groups: Sequence[SeedGroup] | None = None) -> pd.DataFrame:
    """One row per group and step: ``column`` (``loss``, ``eval_accuracy``, ...) across the group's
    runs that logged it, at the steps all of them logged (seeds of one config evaluate at the
    same steps), as n, mean, std, min, max. Columns: group, step and SPREAD_COLUMNS."""
    import pandas as pd

    groups = seed_groups(recordings) if groups is None else groups
    series = scalar_series(recordings, column)
    frames = []
    for group in groups:
        curves = [series[run] for run in group.runs if run in series]
        if not curves:
            continue
        steps = reduce(np.intersect1d, [x for x, _ in curves])
        # (seeds, steps): each run's values at the common steps
        values = np.stack([y[np.searchsorted(x, steps)] for x, y in curves])
        frames.append(pd.DataFrame({"group": group.label, "step": steps.astype(np.int64), **_spread(values)}))
    if not frames:
        return pd.DataFrame(columns=["group", "step", *SPREAD_COLUMNS])
    return pd.concat(frames, ignore_index=True)


def summary_quantities(recordings: Sequence[Any]) -> dict[str, list[float]]:
    """The per-run numbers a group summarises: final and best loss, each eval metric's final
    value and the eval set size it was measured on, and the wall time, one value per recording
    in order."""
    scalars = [r.scalar_columns for r in recordings]
    quantities = {
        "final loss": [final_value(s, "loss") for s in scalars],
        "best loss": [best_value(s, "loss") for s in scalars],
    }
    for column in dict.fromkeys(c for s in scalars for c in eval_columns(s)):
        quantities[f"final {column}"] = [final_value(s, column) for s in scalars]
    quantities.update(eval_set_rows(scalars))
    quantities["wall time (s)"] = [wall_time(r) for r in recordings]
    return quantities


def seed_summary(recordings: Sequence[Any], groups: Sequence[SeedGroup] | None = None) -> pd.DataFrame:
    """One row per group and quantity of `summary_quantities`: n, mean, std, min, max over the
    group's runs where the quantity is finite. Columns: group, quantity and SPREAD_COLUMNS."""
    import pandas as pd

    groups = seed_groups(recordings) if groups is None else groups
    position = {r.run_name: i for i, r in enumerate(recordings)}
    rows = []
    for quantity, values in summary_quantities(recordings).items():
        values = np.asarray(values, dtype=float)
        for group in groups:
            mine = values[[position[run] for run in group.runs]]
            mine = mine[np.isfinite(mine)]
            if len(mine):
                stats = {k: v[0] for k, v in _spread(mine[:, None]).items()}
                rows.append({"group": group.label, "quantity": quantity, **stats})
    return pd.DataFrame(rows, columns=["group", "quantity", *SPREAD_COLUMNS])
