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
    severity: str        # "error" (the run is broken) | "warning" (look at it) | "note" (expected, worth knowing)
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
    max_skip_streak: int = 10         # consecutive fp16-overflow skips: the scale fell 2^10-fold, still overflowing
    min_loss_scale: float = 1.0       # an fp16 loss scale below 1: float16 overflows even unscaled


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


def _longest_run(mask: np.ndarray) -> tuple[int, int]:
    """(length, start index) of the longest run of True in ``mask``; (0, -1) when there is none."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(np.int8), [0]])))
    starts, ends = edges[::2], edges[1::2]  # each run is [start, end)
    if not len(starts):
        return 0, -1
    k = int(np.argmax(ends - starts))  # the first of the longest
    return int(ends[k] - starts[k]), int(starts[k])


def _fp16_skips(steps: np.ndarray, sk: np.ndarray, scale: np.ndarray | None, th: Thresholds) -> list[Finding]:
    """The rule for steps a GradScaler skipped. One overflow now and then is how fp16 loss
    scaling works (the scaler skips that update, halves its scale and goes on), so skipped steps
    are a note. They are a finding when they persist: an error when every step was skipped or the
    scale fell below ``min_loss_scale`` (float16 overflows even unscaled), a warning when
    ``max_skip_streak`` or more steps in a row were skipped."""
    if not sk.any():
        return []
    first = int(steps[_first(sk)])
    if sk.all():
        return [Finding("error", None, None, first, "every optimizer step was skipped for fp16 "
                        "overflow; lower the learning rate or train in bfloat16/float32")]
    found = []
    if scale is not None:
        with np.errstate(invalid="ignore"):
            i = _first(scale < th.min_loss_scale)
        if i is not None:
            found.append(Finding("error", None, None, int(steps[i]),
                                 f"the fp16 loss scale fell to {scale[i]:g}, below {th.min_loss_scale:g}: the "
                                 "gradients overflow float16 even unscaled; lower the learning rate or train in "
                                 "bfloat16/float32"))
    streak, at = _longest_run(sk)
    if streak >= th.max_skip_streak:
        found.append(Finding("warning", None, None, int(steps[at]),
                             f"{streak} optimizer steps in a row were skipped for fp16 overflow although the "
                             "scaler lowered its scale after each; the gradients keep overflowing: lower the "
                             "learning rate or train in bfloat16"))
    if found:
        return found
    lowest = f", the loss scale lowered to {np.nanmin(scale):g}" if scale is not None else ""
    return [Finding("note", None, None, first,
                    f"{int(sk.sum())} optimizer step(s) skipped for fp16 overflow{lowest}: expected under "
                    "fp16 loss scaling (the scaler skips that update, halves its scale and goes on), "
                    "not a failure")]


def check_loss(steps: np.ndarray, loss: np.ndarray, skipped: np.ndarray | None = None,
               loss_scale: np.ndarray | None = None, thresholds: Thresholds | None = None) -> list[Finding]:
    """NaN/Inf in the training loss, and the steps the trainer skipped. A run used fp16 loss
    scaling when some step's ``loss_scale`` is not 1 (or the column is missing: not said); its
    skipped steps are the scaler's and follow ``_fp16_skips``. Without loss scaling a skipped step
    means the loss itself was NaN/Inf: the trainer kept the weights, and that is an error."""
    th = thresholds or Thresholds()
    steps, loss = np.asarray(steps), np.asarray(loss, dtype=np.float64)
    bad = ~np.isfinite(loss)
    found: list[Finding] = []
    if skipped is not None:
        # NaN means "not reported" (a loop that does not say), not "skipped"
        sk = np.nan_to_num(np.asarray(skipped, dtype=np.float64), nan=0.0) != 0
        scale = None if loss_scale is None else np.asarray(loss_scale, dtype=np.float64)
        with np.errstate(invalid="ignore"):
            scaled = scale is None or bool((np.isfinite(scale) & (scale != 1)).any())
        if scaled:
            found = _fp16_skips(steps, sk, scale, th)
            bad &= ~sk
    i = _first(bad)
    if i is not None:
        found.insert(0, Finding("error", None, None, int(steps[i]),
                                f"the loss is {loss[i]} at step {int(steps[i])} ({int(bad.sum())} steps in all); "
                                "lower the learning rate, enable gradient clipping, or check the data for empty "
                                "targets"))
    return found


def check_scalars(scalars, thresholds: Thresholds | None = None) -> list[Finding]:
    """check_loss over a recording's scalars (`rec.scalar_columns`, or the `rec.scalars`
    DataFrame: columns step, loss and, when the trainer reports them, skipped and loss_scale)."""
    if "loss" not in scalars or "step" not in scalars:
        return []
    column = lambda name: np.asarray(scalars[name]) if name in scalars else None  # noqa: E731
    return check_loss(column("step"), column("loss"), column("skipped"), column("loss_scale"), thresholds)
