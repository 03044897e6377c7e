"""Health checks that name what went wrong in a LoRA run, from the failures users report: B never
leaving zero, A frozen by accident, NaN/Inf, a collapsed rank, one spectral spike, a blown-up norm.
Each check is a pure function of a module's metric series, registered by name."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from lorascope.registry import Registry

__all__ = ["Finding", "Thresholds", "ModuleSeries", "CHECKS", "check_module", "check_loss", "check_scalars"]


@dataclass(frozen=True)
class Finding:
    severity: str        # "error" (the run is broken) | "warning" (look at it)
    module: str | None   # None for run-level findings such as the loss
    matrix: str | None   # "A", "B", "dW" or None
    step: int | None     # the first step at which it holds
    message: str
    run: str | None = None  # the run it belongs to; None where only one run is in view

    def __str__(self) -> str:
        where = " ".join(x for x in (self.module, self.matrix) if x)
        if self.run is not None:  # several recordings print their findings together
            where = f"{where} of run {self.run}" if where else f"run {self.run}"
        at = f" at step {self.step}" if self.step is not None else ""
        return f"{self.severity}: {where}{at}: {self.message}" if where else f"{self.severity}{at}: {self.message}"


@dataclass(frozen=True)
class Thresholds:
    zero_b_after: int = 10            # optimizer steps after which B = 0 means it is not training
    rank_collapse_fraction: float = 0.25  # ΔW's effective rank below this fraction of the rank
    spike_share: float = 0.9          # one singular value holding this share of ΔW's energy
    blowup_factor: float = 100.0      # a norm this many times its first non-zero value


@dataclass
class ModuleSeries:
    """What the checks read for one module: its optimizer steps (T,) and, per matrix ("A", "B",
    "dW"), named (T,) metric arrays such as 'max_abs', 'nonfinite', 'frobenius',
    'distance_from_first', 'effective_rank', 'energy_top1'."""
    module: str
    rank: int
    steps: np.ndarray
    metrics: dict[str, dict[str, np.ndarray]]
    a_trainable: bool = True
    b_trainable: bool = True
    notes: dict[str, object] = field(default_factory=dict)

    def get(self, matrix: str, metric: str) -> np.ndarray | None:
        return self.metrics.get(matrix, {}).get(metric)


Check = Callable[[ModuleSeries, Thresholds], list[Finding]]
CHECKS: Registry[Check] = Registry("health check")


def _first(mask: np.ndarray) -> int | None:
    idx = np.flatnonzero(mask)
    return int(idx[0]) if len(idx) else None


@CHECKS.register("nonfinite_weights")
def _nonfinite(s: ModuleSeries, th: Thresholds) -> list[Finding]:
    out = []
    for matrix in ("A", "B"):
        bad = s.get(matrix, "nonfinite")
        if bad is None:
            continue
        i = _first(np.asarray(bad) > 0)
        if i is not None:
            out.append(Finding("error", s.module, matrix, int(s.steps[i]),
                               f"{int(bad[i])} NaN/Inf values in {matrix}; lower the learning rate, "
                               "check the loss scale, or enable gradient clipping"))
    return out


@CHECKS.register("b_still_zero")
def _b_zero(s: ModuleSeries, th: Thresholds) -> list[Finding]:
    mx = s.get("B", "max_abs")
    if mx is None or not s.b_trainable:
        return []
    late = (s.steps >= th.zero_b_after) & (np.asarray(mx) == 0)
    if late.any() and (np.asarray(mx)[s.steps >= th.zero_b_after] == 0).all():
        i = _first(late)
        return [Finding("error", s.module, "B", int(s.steps[i]),
                        f"B is still exactly zero after {int(s.steps[i])} optimizer steps, so ΔW = 0: "
                        "B receives no gradient (is it trainable and in the optimizer?) or the learning rate is 0")]
    return []


@CHECKS.register("a_not_moving")
def _a_static(s: ModuleSeries, th: Thresholds) -> list[Finding]:
    dist = s.get("A", "distance_from_first")
    if dist is None or not s.a_trainable or len(s.steps) < 2 or s.steps[-1] < th.zero_b_after:
        return []  # LoRA-FA freezes A on purpose
    if np.nanmax(np.asarray(dist, dtype=np.float64), initial=0.0) == 0:
        return [Finding("warning", s.module, "A", int(s.steps[-1]),
                        "A has not changed since the first snapshot although it is trainable; "
                        "check that it is in the optimizer (or record a_trainable=False for LoRA-FA)")]
    return []


@CHECKS.register("rank_collapse")
def _rank_collapse(s: ModuleSeries, th: Thresholds) -> list[Finding]:
    er = s.get("dW", "effective_rank")
    if er is None or s.rank < 2:
        return []
    limit = th.rank_collapse_fraction * s.rank
    with np.errstate(invalid="ignore"):
        i = _first(np.asarray(er) < limit)  # NaN (ΔW = 0) never counts as a collapse
    if i is None:
        return []
    return [Finding("warning", s.module, "dW", int(s.steps[i]),
                    f"effective rank of ΔW fell to {er[i]:.2f}, below {th.rank_collapse_fraction:g} of rank "
                    f"{s.rank}: the adapter uses few of its directions; a smaller rank would do, or the "
                    "learning rate of B is too high")]


@CHECKS.register("spectral_spike")
def _spike(s: ModuleSeries, th: Thresholds) -> list[Finding]:
    e = s.get("dW", "energy_top1")
    if e is None or s.rank < 2:
        return []
    with np.errstate(invalid="ignore"):
        i = _first(np.asarray(e) > th.spike_share)
    if i is None:
        return []
    return [Finding("warning", s.module, "dW", int(s.steps[i]),
                    f"one singular direction holds {100 * e[i]:.1f}% of ΔW's energy: a single spike "
                    "dominates the update")]


@CHECKS.register("norm_blowup")
def _blowup(s: ModuleSeries, th: Thresholds) -> list[Finding]:
    out = []
    for matrix in ("A", "B", "dW"):
        f = s.get(matrix, "frobenius")
        if f is None:
            continue
        f = np.asarray(f, dtype=np.float64)
        nz = np.flatnonzero(np.isfinite(f) & (f > 0))
        if not len(nz):
            continue
        ref = f[nz[0]]
        with np.errstate(invalid="ignore"):
            i = _first(f > th.blowup_factor * ref)
        if i is not None:
            out.append(Finding("warning", s.module, matrix, int(s.steps[i]),
                               f"‖{matrix}‖_F grew to {f[i]:.3g}, over {th.blowup_factor:g}× its first "
                               f"non-zero value {ref:.3g}; the learning rate may be too high"))
    return out


def check_module(series: ModuleSeries, thresholds: Thresholds | None = None,
                 checks: tuple[str, ...] | None = None) -> list[Finding]:
    """Runs the named checks (all registered ones by default) on one module's series."""
    th = thresholds or Thresholds()
    found: list[Finding] = []
    for name in checks or CHECKS.names():
        found.extend(CHECKS.get(name)(series, th))
    return found


def check_loss(steps: np.ndarray, loss: np.ndarray, skipped: np.ndarray | None = None,
               loss_scale: np.ndarray | None = None) -> list[Finding]:
    """NaN/Inf in the training loss. A step skipped under fp16 loss scaling (loss_scale > 1: the
    scaler met an overflow, lowered its scale and retries) is expected now and then and is
    reported only when every step was skipped. Without loss scaling a skipped step means the loss
    itself was NaN/Inf: the trainer kept the weights, and that is reported."""
    steps, loss = np.asarray(steps), np.asarray(loss, dtype=np.float64)
    bad = ~np.isfinite(loss)
    if skipped is not None:
        # NaN means "not reported" (a loop that does not say), not "skipped"
        sk = np.nan_to_num(np.asarray(skipped, dtype=np.float64), nan=0.0) != 0
        scaled = (np.nan_to_num(np.asarray(loss_scale, dtype=np.float64), nan=1.0) > 1
                  if loss_scale is not None else np.ones_like(sk))
        if len(sk) and (sk & scaled).all():
            return [Finding("error", None, None, None, "every optimizer step was skipped for fp16 "
                            "overflow; lower the learning rate or train in bfloat16/float32")]
        bad &= ~(sk & scaled)
    i = _first(bad)
    if i is None:
        return []
    return [Finding("error", None, None, int(steps[i]),
                    f"the loss is {loss[i]} at step {int(steps[i])} ({int(bad.sum())} steps in all); lower the "
                    "learning rate, enable gradient clipping, or check the data for empty targets")]


def check_scalars(scalars) -> list[Finding]:
    """check_loss over a recording's scalars (`rec.scalar_columns`, or the `rec.scalars`
    DataFrame: columns step, loss and, when the trainer reports them, skipped and loss_scale)."""
    if "loss" not in scalars or "step" not in scalars:
        return []
    column = lambda name: np.asarray(scalars[name]) if name in scalars else None  # noqa: E731
    return check_loss(column("step"), column("loss"), column("skipped"), column("loss_scale"))
