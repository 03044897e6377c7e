"""The tables of a module's recorded gradients, registered in `lorascope.analysis.TABLES`:
`grad_noise`, the gradient noise within each optimizer step (`grad_noise.py` defines every
column). It reads the gradient series (`grad_A`, `grad_B` on `/grad_snapshots`) of whole steps a
block at a time, not the weights; a module without a step of two or more micro-step gradients
has no rows and one note per run says why (`Analysis.notes`)."""
from __future__ import annotations

import numpy as np
import pandas as pd

from lorascope.analysis import TABLES
from lorascope.analysis import grad_noise as _noise
from lorascope.analysis.batch import CHUNK_VALUES
from lorascope.analysis.builders import PerRun
from lorascope.analysis.jobs import join
from lorascope.analysis.module import ModuleAnalysis
from lorascope.analysis.options import KEYS, Options
from lorascope.analysis.selection import evenly

__all__ = ["GRAD_NOISE_COLUMNS", "NO_GRADIENTS", "NO_ACCUMULATION", "grad_noise_rows"]

GRAD_NOISE_COLUMNS = (*KEYS, "micro_steps", "signal", "noise", "ratio", "loo_cosine", "status")

NO_GRADIENTS = "no gradients recorded (record with --set record.grads=true)"
NO_ACCUMULATION = ("no optimizer step has two or more micro-step gradients to compare (record with gradient "
                   "accumulation, --set optim.grad_accum=4; the Hugging Face callback stores one gradient per step)")


def _series(ma: ModuleAnalysis) -> dict[str, object]:
    """The module's recorded gradient series by matrix ('A', 'B'), those it has."""
    if ma.grad_steps is None or not len(ma.grad_steps):
        return {}
    got = {m: getattr(ma.module, f"grad_{m}", None) for m in ("A", "B")}
    return {m: s for m, s in got.items() if s is not None and len(s)}


def _groups(ma: ModuleAnalysis, n: int) -> _noise.StepGroups:
    """The steps of the first n gradient rows that have K ≥ 2 micro-steps; a quick look
    (`read_steps`) takes that many of them, evenly spaced with the first and the last."""
    groups = _noise.step_groups(ma.grad_steps[:n])
    return groups.pick(evenly(len(groups.steps), ma.options.read_steps))


def _read(series, rows: np.ndarray) -> np.ndarray:
    """The gradient rows `rows` of a lazy series: one contiguous read when they follow each other
    (a recording's usual order), else the rows at those indices."""
    if len(rows) and np.array_equal(rows, np.arange(rows[0], rows[0] + len(rows))):
        return np.asarray(series[int(rows[0]):int(rows[0]) + len(rows)])
    return np.asarray(series[rows])


def grad_noise_rows(ma: ModuleAnalysis) -> list[pd.DataFrame]:
    """One row per matrix (A, B) and optimizer step with K ≥ 2 micro-step gradients:
    `micro_steps` K, `signal` ‖ḡ‖², `noise` Σ of the entries' sample variance across the
    micro-steps, `ratio` noise / signal (pure noise: ≈ K), `loo_cosine` and `status`
    (`lorascope.analysis.grad_noise`)."""
    frames = []
    for m, series in _series(ma).items():
        n = min(len(series), len(ma.grad_steps))
        groups = _groups(ma, n)
        if not len(groups.steps):
            continue
        values = int(np.prod(series.shape[1:]))
        parts = [_noise.within_step(_read(series, rows), counts)
                 for rows, counts in groups.blocks(values, CHUNK_VALUES)]
        k = len(groups.steps)
        frames.append(pd.DataFrame({
            "run": [ma.run] * k, "module": [ma.name] * k, "layer": [ma.layer] * k, "role": [ma.role] * k,
            "matrix": [m] * k, "step": groups.steps, "micro_steps": groups.counts, **join(parts),
        }))
    return frames


def _why_none(ma: ModuleAnalysis) -> str | None:
    series = _series(ma)
    if not series:
        return NO_GRADIENTS
    n = min(len(s) for s in series.values())
    return None if len(_noise.step_groups(ma.grad_steps[:n]).steps) else NO_ACCUMULATION


def _first_snapshot(steps: np.ndarray, o: Options) -> np.ndarray:
    # the table reads the gradient series, not the weights: of these it needs only one
    # snapshot, which every module analysis holds
    return np.zeros(1, dtype=np.int64)


TABLES.register("grad_noise")(PerRun(grad_noise_rows, (), _first_snapshot, GRAD_NOISE_COLUMNS, _why_none))
