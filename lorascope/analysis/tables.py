"""The tables built from one run's module alone, registered in `lorascope.analysis.TABLES`: one
row per (run, module, matrix, step) with columns `run, module, layer, role, matrix, step`, then
the metrics (the stats table adds `micro_step`, set on gradient rows, which with accumulation
share a step). Every number comes from the pure functions beside this file, through the
module's `ModuleAnalysis`, which computes each series once for all tables."""
from __future__ import annotations

from typing import Callable

import numpy as np
import pandas as pd

from lorascope.analysis import TABLES
from lorascope.analysis import geometry as _geo
from lorascope.analysis import spectra as _spectra
from lorascope.analysis import stats as _stats
from lorascope.analysis.builders import PerRun, evenly_spaced
from lorascope.analysis.module import HEALTH_NEEDS, ModuleAnalysis
from lorascope.analysis.options import KEYS
from lorascope.analysis.selection import evenly

__all__ = ["stats_rows", "spectra_rows", "singular_value_rows", "fit_rows", "geometry_rows", "GEOMETRY_COLUMNS"]

GEOMETRY = ("w0_projection", "amplification", "dora_magnitude", "dora_direction")
# a recording without W0 has no geometry rows, and still these columns
GEOMETRY_COLUMNS = (*KEYS, *GEOMETRY)

def stats_rows(ma: ModuleAnalysis) -> list[pd.DataFrame]:
    """Moments, quantiles, norms, distance from the first snapshot, update size and cosine of
    consecutive updates for A, B and ΔW, then the recorded gradients and optimizer state."""
    frames = []
    for m in ("A", "B"):
        mo = dict(ma.moments[m])
        status, nonfinite = mo.pop("status"), mo.pop("nonfinite")
        cols = {**mo, "spectral_norm": ma.spectrum[m]["spectral_norm"], **ma.dynamics[m],
                "nonfinite": nonfinite, "status": status}
        frames.append(ma.frame(m, cols))
    if ma.options.other_series:
        frames.extend(_gradient_frames(ma))
        frames.extend(_state_frames(ma))
    # ΔW's entries are never formed: its mean and norms come from the factors, the shape
    # statistics (skew, quantiles) would need the out×in product and are left out.
    dw = dict(ma.dynamics["dW"])
    bad = ~np.isfinite(dw["frobenius"])
    frames.append(ma.frame("dW", {
        "mean": dw.pop("mean"), "frobenius": dw.pop("frobenius"),
        "spectral_norm": ma.spectrum["dW"]["spectral_norm"], **dw,
        "status": np.where(bad, "nonfinite", np.where(ma.spectrum["dW"]["spectral_norm"] == 0, "zero", "ok")),
    }))
    return [_with_micro_step(f) for f in frames]


def _micro_steps(values: np.ndarray | None, n: int) -> pd.arrays.IntegerArray:
    """`micro_step` as a nullable integer column: the recorded values, <NA> where there are none
    (rows of A, B, dW and state are per optimizer step and need no micro-step to be unique)."""
    out = pd.array([pd.NA] * n, dtype="Int64")
    if values is not None:
        k = min(n, len(values))
        out[:k] = values[:k]
    return out


def _with_micro_step(frame: pd.DataFrame) -> pd.DataFrame:
    """The frame with a `micro_step` key column right after `step` (<NA> if it had none), so that
    every stats frame has the same columns in the same order whichever comes first in the table."""
    if "micro_step" not in frame.columns:
        frame.insert(frame.columns.get_loc("step") + 1, "micro_step", _micro_steps(None, len(frame)))
    return frame


def _read_rows(n: int, o) -> slice | np.ndarray:
    """The rows of a series of n snapshots the analysis reads: all, or `read_steps` of them."""
    return slice(0, n) if o.read_steps is None else evenly(n, o.read_steps)


def _series_rows(ma: ModuleAnalysis, matrix: str, X: np.ndarray, steps: np.ndarray,
                 spectral: bool = True, extra: dict | None = None) -> pd.DataFrame:
    """The stats rows of a series X (n, m, k) on its own step axis: moments, quantiles,
    Frobenius norm and (with `spectral`) spectral norm, as for the gradients."""
    mo = _stats.moments(X, ma.options.quantiles, ma.options.quantile_samples)
    status, nonfinite = mo.pop("status"), mo.pop("nonfinite")
    spectral_norm = _spectra.singular_values(X).max(axis=1) if spectral else np.full(len(X), np.nan)
    head = {"run": ma.run, "module": ma.name, "layer": ma.layer, "role": ma.role, "matrix": matrix,
            "step": steps, **(extra or {})}
    return pd.DataFrame({**head, **mo, "spectral_norm": spectral_norm, "nonfinite": nonfinite, "status": status})


def _gradient_frames(ma: ModuleAnalysis) -> list[pd.DataFrame]:
    """Moments and norms of recorded gradients (matrix 'grad_A', 'grad_B'), on their own step
    axis (/grad_snapshots: per micro-step or per optimizer step), read one series at a time.
    With gradient accumulation several rows share a `step`; `micro_step` tells them apart."""
    frames = []
    micro = ma.grad_micro_steps
    for g in ("grad_A", "grad_B"):
        series = getattr(ma.module, g, None)
        if series is None or ma.grad_steps is None or len(series) == 0:
            continue
        n = min(len(series), len(ma.grad_steps))
        rows = _read_rows(n, ma.options)
        X = np.asarray(series[rows])
        frames.append(_series_rows(ma, g, X, ma.grad_steps[rows],
                                   extra={"micro_step": _micro_steps(micro, n)[rows]}))
        del X
    return frames


# How an optimizer-state entry is analysed, by its shape per snapshot. An entry shaped like its
# parameter (AdamW's exp_avg, exp_avg_sq) is a matrix like A or B. A 1-D entry (Adafactor's and
# CAME's factored exp_avg_sq_row/_col) still has a distribution, so it gets moments as a 1×n
# matrix, but no spectral norm: a vector's would only repeat its Frobenius norm. Any other shape
# (a 0-d step counter is never stored; a factored tensor of another rank) is skipped.
_STATE_SHAPES: dict[str, tuple[Callable[[np.ndarray], np.ndarray], bool]] = {
    "matrix": (lambda X: X, True),
    "vector": (lambda X: X[:, None, :], False),
}


def _state_shape(shape: tuple[int, ...], param_shape: tuple[int, ...]) -> str | None:
    if shape == param_shape:
        return "matrix"
    return "vector" if len(shape) == 1 else None


def _state_frames(ma: ModuleAnalysis) -> list[pd.DataFrame]:
    """Moments and norms of recorded optimizer state (matrix 'state_A.<key>', 'state_B.<key>',
    <key> the optimizer's own name, e.g. 'state_B.exp_avg_sq'), on the state's step axis
    (/state_snapshots), reading one state series at a time."""
    steps = ma.state_steps
    if steps is None:
        return []
    frames = []
    for m, param_shape in (("A", ma.A.shape[1:]), ("B", ma.B.shape[1:])):
        for key, series in sorted((getattr(ma.module, f"state_{m}", None) or {}).items()):
            kind = _state_shape(tuple(series.shape[1:]), tuple(param_shape))
            n = min(len(series), len(steps))
            if kind is None or n == 0:
                continue
            as_stack, spectral = _STATE_SHAPES[kind]
            rows = _read_rows(n, ma.options)
            X = as_stack(np.asarray(series[rows]))
            frames.append(_series_rows(ma, f"state_{m}.{key}", X, steps[rows], spectral))
            del X
    return frames


def spectra_rows(ma: ModuleAnalysis) -> list[pd.DataFrame]:
    """Spectral norm, smallest singular value, effective and stable rank, top-k energy share and
    condition number of A, B and ΔW."""
    return [ma.frame(m, dict(ma.spectrum[m])) for m in ("A", "B", "dW")]


def singular_value_rows(ma: ModuleAnalysis) -> list[pd.DataFrame]:
    """Every singular value of A, B and ΔW, long form (`index` 1 = largest)."""
    frames = []
    for m, s in ma.singular_values.items():
        T, k = s.shape
        frames.append(ma.frame(m, {"index": np.tile(np.arange(1, k + 1), T), "value": s.reshape(-1)},
                               np.repeat(np.arange(T), k)))
    return frames


def fit_rows(ma: ModuleAnalysis) -> list[pd.DataFrame]:
    """One row per family per fitted snapshot of A and B (see `Options.fit_steps`)."""
    frames = []
    for m in ("A", "B"):
        idx, r = ma.result(f"fits:{m}")
        families = list(r.families)
        # one frame per matrix, the families one after the other: a frame per family and matrix
        # made the fits rows a tenth of a report's analysis time
        per = {fam: {"loc": vals["loc"], "scale": vals["scale"],
                     "shape": vals.get("df", vals.get("beta", np.full(len(idx), np.nan))),
                     "ks": vals["ks"], "loglik": vals["loglik"], "aic": vals["aic"], "bic": vals["bic"]}
               for fam, vals in r.families.items()}
        stacked = {c: np.concatenate([per[fam][c] for fam in families]) for c in per[families[0]]}
        k = len(families)
        frames.append(ma.frame(m, {
            "family": np.repeat(np.array(families, dtype=object), len(idx)), **stacked,
            "n": r.n, "status": np.tile(r.status, k), "best": np.concatenate([r.best == fam for fam in families]),
            "best_family": np.tile(r.best, k), "fitted_steps": len(idx), "recorded_steps": ma.recorded,
        }, np.tile(idx, k)))
    return frames


def geometry_rows(ma: ModuleAnalysis) -> list[pd.DataFrame]:
    """ΔW against W0 (when recorded) at up to `geometry_steps` (else `max_steps`) snapshots."""
    W0 = getattr(ma.module, "W0", None)
    if W0 is None:
        return []
    W0 = np.asarray(W0, dtype=np.float64)
    idx = ma.evenly(_geometry_steps(ma.options))
    A, B = ma.A[idx].astype(np.float64), ma.B[idx].astype(np.float64)
    ok = np.isfinite(A).all(axis=(1, 2)) & np.isfinite(B).all(axis=(1, 2))
    cols = {k: np.full(len(idx), np.nan) for k in GEOMETRY}
    if ok.any():
        U, S, V = _spectra.delta_w_svd(A[ok], B[ok], ma.scaling)
        proj = _geo.w0_projection(W0, U, V, np.sqrt((S**2).sum(axis=1)))
        dora = _geo.dora_change(W0, A[ok], B[ok], ma.scaling)
        for k, v in {**proj, **dora}.items():
            cols[k][ok] = v
    return [ma.frame("dW", cols, idx)]


def _geometry_steps(o) -> int | None:
    return o.max_steps if o.geometry_steps is None else o.geometry_steps


TABLES.register("stats")(PerRun(stats_rows, HEALTH_NEEDS))
TABLES.register("spectra")(PerRun(spectra_rows, ("lowrank",)))
TABLES.register("singular_values")(PerRun(singular_value_rows, ("lowrank",)))
TABLES.register("fits")(PerRun(fit_rows, ("fits",), evenly_spaced(lambda o: o.fit_steps)))
TABLES.register("geometry")(PerRun(geometry_rows, (), evenly_spaced(_geometry_steps), GEOMETRY_COLUMNS))
