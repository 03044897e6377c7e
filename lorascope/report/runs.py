"""The runs side by side: what differs in their configs, how training went (final and best loss,
evaluation metrics), their size and duration, and the scalar series drawn in the training figure."""
from __future__ import annotations

import json
import math
from typing import Any, Sequence

import numpy as np
import pandas as pd

__all__ = ["flatten_config", "config_differences", "runs_table", "scalar_series", "eval_columns"]

# Shown for a single run, where there is nothing to differ from.
_HIGHLIGHTS = (
    "model.name", "optim.optimizer", "optim.schedule", "optim.lr", "optim.steps", "lora.rank",
    "lora.alpha", "lora.init", "lora.targets", "lora.layers", "seed",
)


def flatten_config(config: dict, prefix: str = "") -> dict[str, Any]:
    """{"optim": {"lr": 1e-3}} → {"optim.lr": 1e-3}; lists stay values."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten_config(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def _same(values: list[Any]) -> bool:
    return all(json.dumps(v, sort_keys=True, default=str) == json.dumps(values[0], sort_keys=True, default=str)
               for v in values[1:])


def config_differences(configs: Sequence[dict]) -> list[str]:
    """The flattened config keys whose values are not the same in every run (a key missing from
    one run counts as different); for one run, the usual highlights it has."""
    flats = [flatten_config(c or {}) for c in configs]
    if len(flats) == 1:
        return [k for k in _HIGHLIGHTS if k in flats[0]]
    keys = list(dict.fromkeys(k for f in flats for k in f))
    return [k for k in keys if not _same([f.get(k, "(missing)") for f in flats])]


def _display(value: Any) -> Any:
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, default=str)
    return value


def eval_columns(scalars: pd.DataFrame) -> list[str]:
    return [c for c in scalars.columns if str(c).startswith("eval_")]


def _finite(series: pd.Series) -> pd.Series:
    values = pd.to_numeric(series, errors="coerce")
    return values[np.isfinite(values.to_numpy(dtype=float))]


def _last(scalars: pd.DataFrame, column: str) -> float:
    if column not in scalars:
        return math.nan
    values = _finite(scalars[column])
    return float(values.iloc[-1]) if len(values) else math.nan


def _best(scalars: pd.DataFrame, column: str) -> float:
    if column not in scalars:
        return math.nan
    values = _finite(scalars[column])
    return float(values.min()) if len(values) else math.nan


def lora_parameters(rec: Any) -> int:
    """A and B values over the recorded modules: rank · (in + out) each."""
    return int(sum(m.rank * (m.in_features + m.out_features) for m in rec.modules.values()))


def wall_time(rec: Any) -> float:
    """Seconds from the start of the run to its last snapshot, NaN when not recorded."""
    times = getattr(rec, "times", None)
    if times is not None and len(times):
        return float(np.asarray(times)[-1])
    scalars = rec.scalars
    return _last(scalars, "time") if "time" in scalars else math.nan


def runs_table(recordings: Sequence[Any]) -> pd.DataFrame:
    """One column per run, one row per quantity compared; config rows are the differences only."""
    names = [r.run_name for r in recordings]
    flats = [flatten_config(r.config or {}) for r in recordings]
    rows: dict[str, list[Any]] = {}
    for key in config_differences([r.config or {} for r in recordings]):
        rows[key] = [_display(f.get(key, "—")) for f in flats]
    rows["status"] = [r.status for r in recordings]
    rows["snapshots"] = [len(r.steps) for r in recordings]
    rows["last step"] = [int(r.steps[-1]) if len(r.steps) else math.nan for r in recordings]
    rows["final loss"] = [_last(r.scalars, "loss") for r in recordings]
    rows["best loss"] = [_best(r.scalars, "loss") for r in recordings]
    for column in dict.fromkeys(c for r in recordings for c in eval_columns(r.scalars)):
        rows[f"final {column}"] = [_last(r.scalars, column) for r in recordings]
    rows["trainable parameters"] = [
        (r.environment or {}).get("trainable_parameters", math.nan) for r in recordings
    ]
    rows["LoRA parameters (recorded modules)"] = [lora_parameters(r) for r in recordings]
    rows["wall time (s)"] = [wall_time(r) for r in recordings]
    table = pd.DataFrame(rows, index=names).T
    table.columns = names
    return table


def scalar_series(recordings: Sequence[Any], column: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """`column` over optimizer steps for each run that has it, NaN rows dropped (eval metrics
    exist only at evaluation steps)."""
    series = {}
    for rec in recordings:
        scalars = rec.scalars
        if column not in scalars or "step" not in scalars:
            continue
        y = pd.to_numeric(scalars[column], errors="coerce").to_numpy(dtype=float)
        x = scalars["step"].to_numpy(dtype=float)
        keep = np.isfinite(y)
        if keep.any():
            series[rec.run_name] = (x[keep], y[keep])
    return series
