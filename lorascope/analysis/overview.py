"""Runs at a glance: what a run was (its config, the parts of configs that differ between runs),
how training went (final and best loss, evaluation metrics), its size and duration, and its
health. `describe` is what `lorascope info` prints; `runs_table` is the report's runs side by
side; both read these same definitions.

Scalars are read as a mapping of column name to values: a recording's `scalar_columns` (numpy,
what `describe` reads, so that `lorascope info` starts without pandas) or its `scalars`
DataFrame."""
from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from lorascope.analysis.health import Finding
from lorascope.analysis.options import Options

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "EVAL_EXAMPLES", "EVAL_MAJORITY", "EVAL_SET_COLUMNS", "CHANCE_LEVEL", "CHANCE_NAME", "eval_set_rows", "HIGHLIGHTS", "QUICK", "flatten_config", "config_differences", "is_bookkeeping",
    "eval_columns", "eval_label", "final_value",
    "best_value", "lora_parameters", "wall_time", "runs_table", "scalar_series", "quick_findings", "describe",
]

# The config fields a person asks about first (the whole config is in the file); a single run's
# runs table shows these, since there is nothing to differ from.
HIGHLIGHTS = (
    "model.name", "data.source", "data.task", "optim.optimizer", "optim.schedule", "optim.lr",
    "optim.steps", "optim.grad_accum", "lora.rank", "lora.alpha", "lora.init", "lora.targets",
    "lora.layers", "record.every", "seed",
)

# A quick look's analysis: the health checks need no quantiles and no gradient rows, and a few
# dozen snapshots per module find where something first goes wrong to within a few percent.
QUICK = Options(quantiles=(), other_series=False, workers=1)


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
    one run counts as different); for one run, the highlights it has."""
    flats = [flatten_config(c or {}) for c in configs]
    if len(flats) == 1:
        return [k for k in HIGHLIGHTS if k in flats[0]]
    keys = list(dict.fromkeys(k for f in flats for k in f))
    return [k for k in keys if not _same([f.get(k, "(missing)") for f in flats])]


def _display(value: Any) -> Any:
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, default=str)
    return value


# What a trainer logs about itself rather than about the model: Hugging Face's Trainer logs
# eval_runtime, eval_samples_per_second and eval_steps_per_second beside every evaluation, and
# epoch, total_flos, train_runtime, train_samples_per_second, ... at the end. They describe the
# machine and the schedule, so no figure or table treats them as a finding.
BOOKKEEPING_NAMES = frozenset({"epoch", "total_flos"})
BOOKKEEPING_SUFFIXES = ("_runtime", "_samples_per_second", "_steps_per_second", "_flos", "_epoch")
# What an evaluation logs about its held-out set beside the metrics, not one of them: how many
# examples it covered, and for classification the share of the most common label among them
# (the accuracy of answering that label to everything).
EVAL_EXAMPLES = "eval_examples"
EVAL_MAJORITY = "eval_majority"
EVAL_SET_COLUMNS = (EVAL_EXAMPLES, EVAL_MAJORITY)
# The eval metrics that have a chance level, and the column that logs it.
CHANCE_LEVEL = {"eval_accuracy": EVAL_MAJORITY}
# What figures and sentences call each chance level's value.
CHANCE_NAME = {EVAL_MAJORITY: "majority label"}


def is_bookkeeping(column: str) -> bool:
    """Whether a scalar column is a trainer's bookkeeping (time, throughput, epoch, FLOPs)."""
    name = str(column)
    return name in BOOKKEEPING_NAMES or name.endswith(BOOKKEEPING_SUFFIXES)


def eval_columns(scalars: Mapping) -> list[str]:
    """The evaluation metrics among the scalar columns (`eval_<metric>`), in their order: the one
    definition every figure, table and summary reads, without the trainer's bookkeeping and what
    is logged about the eval set (`EVAL_SET_COLUMNS`)."""
    return [c for c in scalars if str(c).startswith("eval_") and c not in EVAL_SET_COLUMNS and not is_bookkeeping(c)]


def eval_label(column: str) -> str:
    """How figures and sentences name an eval column: `eval_f1` → 'eval f1'."""
    return "eval " + str(column).removeprefix("eval_").replace("_", " ")


def eval_set_rows(scalars: Sequence[Mapping]) -> dict[str, list[float]]:
    """The rows a table of runs gives their last evaluation's held-out set, where any run logged
    them: its size and, for classification, its majority-label share."""
    return {eval_label(column): [final_value(s, column) for s in scalars]
            for column in EVAL_SET_COLUMNS if any(column in s for s in scalars)}


def _values(scalars: Mapping, column: str) -> np.ndarray:
    return np.asarray(scalars[column], dtype=float)


def _finite(scalars: Mapping, column: str) -> np.ndarray:
    if column not in scalars:
        return np.zeros(0)
    values = _values(scalars, column)
    return values[np.isfinite(values)]


def final_value(scalars: Mapping, column: str) -> float:
    """The last finite value of a scalar column, NaN when there is none."""
    values = _finite(scalars, column)
    return float(values[-1]) if len(values) else math.nan


def best_value(scalars: Mapping, column: str) -> float:
    """The smallest finite value of a scalar column (a loss), NaN when there is none."""
    values = _finite(scalars, column)
    return float(values.min()) if len(values) else math.nan


def lora_parameters(rec: Any) -> int:
    """A and B values over the recorded modules: rank · (in + out) each."""
    return int(sum(m.rank * (m.in_features + m.out_features) for m in rec.modules.values()))


def wall_time(rec: Any) -> float:
    """Seconds from the start of the run to its last snapshot, NaN when not recorded."""
    times = getattr(rec, "times", None)
    if times is not None and len(times):
        return float(np.asarray(times)[-1])
    return final_value(rec.scalar_columns, "time")


def runs_table(recordings: Sequence[Any], labels: Mapping[str, str] | None = None) -> pd.DataFrame:
    """One column per run, one row per quantity compared; config rows are the differences only.
    With `labels` (run name → the short name figures give it), they are the first row, so that
    a legend's label leads to the run's full name."""
    import pandas as pd

    names = [r.run_name for r in recordings]
    flats = [flatten_config(r.config or {}) for r in recordings]
    scalars = [r.scalar_columns for r in recordings]
    rows: dict[str, list[Any]] = {}
    if labels:
        rows["label in figures"] = [labels.get(n, n) for n in names]
    for key in config_differences([r.config or {} for r in recordings]):
        rows[key] = [_display(f.get(key, "—")) for f in flats]
    rows["status"] = [r.status for r in recordings]
    rows["snapshots"] = [len(r.steps) for r in recordings]
    rows["last step"] = [int(r.steps[-1]) if len(r.steps) else math.nan for r in recordings]
    rows["final loss"] = [final_value(s, "loss") for s in scalars]
    rows["best loss"] = [best_value(s, "loss") for s in scalars]
    for column in dict.fromkeys(c for s in scalars for c in eval_columns(s)):
        rows[f"final {column}"] = [final_value(s, column) for s in scalars]
    rows.update(eval_set_rows(scalars))
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
        scalars = rec.scalar_columns
        if column not in scalars or "step" not in scalars:
            continue
        y, x = _values(scalars, column), _values(scalars, "step")
        keep = np.isfinite(y)
        if keep.any():
            series[rec.run_name] = (x[keep], y[keep])
    return series


def quick_findings(rec: Any, max_steps: int = 50) -> list[Finding]:
    """The health findings of `analyze` on at most `max_steps` snapshots per module."""
    from lorascope.analysis.driver import analyze

    # a recording with no snapshot yet still has a loss to check
    modules = "*" if len(rec.steps) else []
    return analyze(rec, (), replace(QUICK, read_steps=max_steps), health=True, modules=modules).findings


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


# the LoraConfig fields that tell two PEFT runs apart at a glance (the whole config is in the file)
PEFT_HIGHLIGHTS = ("r", "lora_alpha", "use_dora", "use_rslora", "init_lora_weights", "target_modules",
                   "lora_dropout")


def _peft_lines(peft: dict) -> list[str]:
    if not peft:
        return []
    active = peft.get("active_adapters") or []
    lines = [f"peft       active adapter(s) {', '.join(map(str, active)) or '-'}"]
    for adapter, config in (peft.get("adapters") or {}).items():
        shown = {k: config[k] for k in PEFT_HIGHLIGHTS if k in config}
        lines.append(f"  {adapter:<24} " + "  ".join(f"{k}={v}" for k, v in shown.items()))
    if peft.get("modules_to_save"):
        lines.append(f"  {'modules_to_save':<24} {', '.join(peft['modules_to_save'])}")
    return lines


def describe(rec: Any, path: Path | None = None, *, health: bool = True, max_steps: int = 50) -> str:
    """A recording summarised as text, readable at a glance (also while it is being written): run,
    status, format, file, snapshots, config highlights, training, modules and, with `health`,
    the findings of `analyze` on at most `max_steps` snapshots per module."""
    steps = np.asarray(rec.steps)
    lines = [f"run        {rec.run_name}", f"status     {rec.status}"]
    version = getattr(rec, "lorascope_version", "")
    lines.append(f"format     v{rec.format_version}" + (f" (written by lorascope {version})" if version else ""))
    if path is not None:
        lines.append(f"file       {path} ({_size(Path(path).stat().st_size)})")
    if len(steps):
        lines.append(f"snapshots  {len(steps)}, optimizer steps {int(steps[0])} … {int(steps[-1])}")
    else:
        lines.append("snapshots  none committed yet")
    seconds = wall_time(rec) if getattr(rec, "times", None) is not None else math.nan
    if math.isfinite(seconds):
        lines.append(f"wall time  {seconds:.1f} s to the last snapshot")
    hint = getattr(rec, "repair_hint", "")
    if hint:
        lines.append(f"repair     {hint}")
    lines.append("config")
    flat = flatten_config(rec.config or {})
    lines.extend(f"  {key:<24} {flat[key]}" for key in HIGHLIGHTS if flat.get(key) is not None)
    lines.extend(_peft_lines(getattr(rec, "peft", {}) or {}))
    scalars = rec.scalar_columns
    training = [f"  {c:<24} final {final_value(scalars, c):.4g}   best {best_value(scalars, c):.4g}"
                for c in ("loss", *eval_columns(scalars)) if math.isfinite(final_value(scalars, c))]
    examples, majority = final_value(scalars, EVAL_EXAMPLES), final_value(scalars, EVAL_MAJORITY)
    if math.isfinite(examples):
        training.append(f"  {'eval examples':<24} {examples:.0f} held-out examples in the last evaluation")
    if math.isfinite(majority):
        training.append(f"  {'eval majority':<24} {majority:.4g}: the accuracy of answering the most common "
                        "label to every one of them")
    if training:
        lines.append("training")
        lines.extend(training)
    lines.append(f"modules    {len(rec.modules)} ({lora_parameters(rec):,} LoRA values)")
    for name, m in rec.modules.items():
        layer = "-" if m.layer_index is None else str(m.layer_index)
        kind = getattr(m, "kind", "")
        dora = "  DoRA (magnitude recorded)" if getattr(m, "dora", False) else ""
        lines.append(f"  {name:<40} layer {layer:>3}  A {m.rank}×{m.in_features}  "
                     f"B {m.out_features}×{m.rank}  scaling {m.scaling:g}"
                     + (f"  {kind}" if kind else "") + dora)
    not_recorded = getattr(rec, "not_recorded", []) or []
    if not_recorded:
        lines.append(f"not recorded {len(not_recorded)} layer(s) that train or are saved")
        lines.extend(f"  {n.get('module', '?'):<40} {n.get('type', '')}: {n.get('reason', '')}" for n in not_recorded)
    lines.extend(_finding_lines(rec, quick_findings(rec, max_steps) if health else None))
    return "\n".join(lines)


def _finding_lines(rec: Any, checked: list[Finding] | None) -> list[str]:
    """The findings' sentences of this one run (those a quick look can make without the analysis
    tables, and a line naming the kinds it leaves out), then, when the health checks ran, their
    findings: the same sentences `lorascope analyze` and the report print."""
    from lorascope.analysis.findings import evidence, find

    found = find(evidence([rec], health=checked or ()))
    lines = ["findings", *(f"  {s}" for s in found.sentences if s.kind != "health")]
    if found.left_out:
        lines.append(f"  {found.left_out_note()}; lorascope analyze --tables stats,fits and lorascope report state them")
    if checked is not None:
        lines.append("health")
        lines.extend(f"  {s}" for s in [s.text for s in found.sentences if s.kind == "health"] or ["no findings"])
    return lines
