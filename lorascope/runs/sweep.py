"""A grid of runs that differ in a few named axes of one base config: expansion, readable run
names, and which runs are already done (so an interrupted sweep resumes where it stopped)."""
from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lorascope.config import RunConfig, apply_overrides, config_from_dict, read_config_data
from lorascope.errors import LorascopeError, UsageError

__all__ = ["AXES", "SweepRun", "expand", "is_complete", "load_sweep_file", "DEFAULT_AXES"]

# The axes a user names on the command line, with the config field each one sets and the short
# prefix used in run names (a value alone where the value says what it is, like "came").
AXES: dict[str, tuple[str, str]] = {
    "optimizer": ("optim.optimizer", ""),
    "schedule": ("optim.schedule", ""),
    "init": ("lora.init", ""),
    "rank": ("lora.rank", "r"),
    "alpha": ("lora.alpha", "a"),
    "lr": ("optim.lr", "lr"),
    "layers": ("lora.layers", "L"),
    "targets": ("lora.targets", "t"),
    "seed": ("seed", "s"),
}

# The embedded default sweep: 000's design (AdamW, CAME, Adafactor) x two inits, at small scale.
DEFAULT_AXES: dict[str, list[str]] = {
    "optimizer": ["adamw", "came", "adafactor"],
    "init": ["kaiming_uniform", "gaussian_b"],
}


@dataclass(frozen=True)
class SweepRun:
    name: str
    config: RunConfig
    path: Path


def _fragment(field: str, value: Any) -> str:
    prefix = next((short for f, short in AXES.values() if f == field), field.rsplit(".", 1)[-1] + "=")
    text = ",".join(map(str, value)) if isinstance(value, list) else str(value)
    return re.sub(r"[^A-Za-z0-9._=+-]", "_", f"{prefix}{text}")


def expand(base: RunConfig, axes: dict[str, list[Any]], out_dir: Path, sweep_name: str) -> list[SweepRun]:
    """One run per point of the grid. `axes` maps a named axis (see AXES) or any dotted config
    field to its values."""
    if not axes:
        raise UsageError("a sweep needs at least one axis with values, such as --optimizer adamw,came")
    fields = {AXES[a][0] if a in AXES else a: values for a, values in axes.items()}
    for field_name, values in fields.items():
        if not values:
            raise UsageError(f"sweep axis {field_name} has no values")
        if len(set(map(str, values))) != len(values):
            raise UsageError(f"sweep axis {field_name} repeats a value: {values}")
    runs = []
    for combo in itertools.product(*fields.values()):
        overrides = dict(zip(fields, combo))
        name = "-".join([sweep_name] + [_fragment(f, v) for f, v in overrides.items()])
        path = out_dir / f"{name}.h5"
        cfg = apply_overrides(base, {**overrides, "name": name, "output": str(path)})
        runs.append(SweepRun(name, cfg, path))
    return runs


def load_sweep_file(path: Path) -> tuple[RunConfig, dict[str, list[Any]]]:
    """A sweep file is a run config plus an optional [sweep] table mapping axes to value lists;
    returns the base config and the axes."""
    data = read_config_data(path)
    axes = data.pop("sweep", {})
    if not isinstance(axes, dict) or not all(isinstance(v, list) for v in axes.values()):
        raise UsageError(f'[sweep] in {path} must map axis names to lists, e.g. optimizer = ["adamw", "came"]')
    return config_from_dict(data), axes


def is_complete(path: Path) -> bool:
    """A recording that exists and says it finished; an interrupted or unreadable one is redone."""
    if not path.exists():
        return False
    import lorascope

    try:
        with lorascope.open(path) as rec:
            return rec.status == "complete"
    except LorascopeError:
        return False
