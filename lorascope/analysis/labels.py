"""Short names for runs, for legends: what differs between the runs' configs, not the run names a
sweep builds (`sweep-came-gaussian_b-lr1e-3-s2`), which a legend would have to cut. The full names
stay in the runs table, beside the label each run got."""
from __future__ import annotations

import json
import math
from typing import Any, Sequence

from lorascope.analysis.overview import config_differences, flatten_config

__all__ = ["run_labels", "MAX_PARTS"]

# Config keys that differ between runs by construction and say nothing about what a run did:
# its own name and where its files went (lorascope's `name`/`output`, the HF Trainer's dirs).
_IDENTITY = frozenset({"name", "output", "output_dir", "logging_dir", "run_name"})
# More differing keys than this and a label is no shorter than the run name: the names are kept.
MAX_PARTS = 4
_MISSING = object()


def _part(key: str, value: Any) -> str:
    """One differing value as a legend shows it: a word stands for itself (`came`, `gaussian_b`),
    a number or a flag needs its key's last part (`lr=0.001`, `freeze_a=True`)."""
    leaf = key.rsplit(".", 1)[-1]
    if value is _MISSING:
        return f"{leaf}=—"
    if isinstance(value, str) and value:
        return value
    if isinstance(value, float) and math.isfinite(value):
        return f"{leaf}={value:g}"
    if isinstance(value, (list, tuple, dict)):
        return f"{leaf}={json.dumps(value, default=str)}"
    return f"{leaf}={value}"


def run_labels(names: Sequence[str], configs: Sequence[dict | None]) -> dict[str, str]:
    """A label per run name: the values of the config keys that differ between the runs, joined
    by ' · ' (`optim.optimizer=came, lora.init=gaussian_b` → `came · gaussian_b`). The run names
    themselves where that says nothing or is ambiguous: one run, runs whose configs differ only
    in name and output, more than `MAX_PARTS` differing keys, or two runs with the same label."""
    names = list(names)
    configs = [c or {} for c in configs]
    if len(names) < 2:
        return {name: name for name in names}
    keys = [k for k in config_differences(configs) if k.rsplit(".", 1)[-1] not in _IDENTITY]
    if not keys or len(keys) > MAX_PARTS:
        return {name: name for name in names}
    flats = [flatten_config(c) for c in configs]
    labels = [" · ".join(_part(k, f.get(k, _MISSING)) for k in keys) for f in flats]
    if len(set(labels)) < len(labels):
        return {name: name for name in names}
    return dict(zip(names, labels))
