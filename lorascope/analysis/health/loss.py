"""The checks on a run's training loss and the steps its trainer skipped, registered by name in
`LOSS_CHECKS`: a NaN/Inf loss, fp16-overflow skips that persist, and a loss that diverges."""
from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cached_property
from typing import Callable

import numpy as np

from lorascope.analysis.health.base import Finding, Thresholds
from lorascope.analysis.health.series import first, logging_cadence, longest_run, running_median
from lorascope.registry import Registry

__all__ = ["LOSS_CHECKS", "LossSeries", "check_loss", "check_scalars"]


@dataclass(frozen=True)
class LossSeries:
    """A run's loss per optimizer step, with the trainer's `skipped` flags and GradScaler
    `loss_scale` where it reports them (None: not reported)."""
    steps: np.ndarray
    loss: np.ndarray
    skipped: np.ndarray | None = None
    loss_scale: np.ndarray | None = None

    @cached_property
    def skips(self) -> np.ndarray:
        """Steps the trainer skipped (bool); NaN means "not reported", not "skipped"."""
        if self.skipped is None:
            return np.zeros(len(self.steps), dtype=bool)
        return np.nan_to_num(np.asarray(self.skipped, dtype=np.float64), nan=0.0) != 0

    @cached_property
    def scaled(self) -> bool:
        """Whether the run used fp16 loss scaling: some step's scale is not 1, or it reports
        skips without a scale column (then nothing says it did not)."""
        if self.skipped is None:
            return False
        if self.loss_scale is None:
            return True
        scale = np.asarray(self.loss_scale, dtype=np.float64)
        return bool((np.isfinite(scale) & (scale != 1)).any())

    @cached_property
    def due(self) -> np.ndarray:
        """Steps that logged a loss: see `logging_cadence` (a trainer that logs every k steps
        leaves NaN between its logs, which is no NaN loss)."""
        return logging_cadence(self.steps, self.loss)


LossCheck = Callable[[LossSeries, Thresholds], list[Finding]]
LOSS_CHECKS: Registry[LossCheck] = Registry("loss check")


@LOSS_CHECKS.register("nonfinite_loss")
def _nonfinite(s: LossSeries, th: Thresholds) -> list[Finding]:
    """A NaN/Inf loss at a step that logged one (a step the trainer says it skipped did). Under
    fp16 loss scaling a skipped step is the scaler's, judged by `fp16_skips`; without it a
    skipped step with a NaN/Inf loss is that loss (the trainer kept the weights)."""
    bad = (s.due | s.skips) & ~np.isfinite(s.loss)
    if s.scaled:
        bad &= ~s.skips
    i = first(bad)
    if i is None:
        return []
    return [Finding("error", None, None, int(s.steps[i]),
                    f"the loss is {s.loss[i]} at step {int(s.steps[i])} ({int(bad.sum())} steps in all); "
                    "lower the learning rate, enable gradient clipping, or check the data for empty targets")]


@LOSS_CHECKS.register("fp16_skips")
def _fp16_skips(s: LossSeries, th: Thresholds) -> list[Finding]:
    """The rule for steps a GradScaler skipped. One overflow now and then is how fp16 loss
    scaling works (the scaler skips that update, halves its scale and goes on), so skipped steps
    are a note. They are a finding when they persist: an error when every step was skipped or the
    scale fell below ``min_loss_scale`` (float16 overflows even unscaled), a warning when
    ``max_skip_streak`` or more steps in a row were skipped."""
    sk = s.skips
    if not s.scaled or not sk.any():
        return []
    steps = np.asarray(s.steps)
    scale = None if s.loss_scale is None else np.asarray(s.loss_scale, dtype=np.float64)
    at = int(steps[first(sk)])
    if sk.all():
        return [Finding("error", None, None, at, "every optimizer step was skipped for fp16 "
                        "overflow; lower the learning rate or train in bfloat16/float32")]
    found = []
    if scale is not None:
        with np.errstate(invalid="ignore"):
            i = first(scale < th.min_loss_scale)
        if i is not None:
            found.append(Finding("error", None, None, int(steps[i]),
                                 f"the fp16 loss scale fell to {scale[i]:g}, below {th.min_loss_scale:g}: the "
                                 "gradients overflow float16 even unscaled; lower the learning rate or train in "
                                 "bfloat16/float32"))
    streak, start = longest_run(sk)
    if streak >= th.max_skip_streak:
        found.append(Finding("warning", None, None, int(steps[start]),
                             f"{streak} optimizer steps in a row were skipped for fp16 overflow although the "
                             "scaler lowered its scale after each; the gradients keep overflowing: lower the "
                             "learning rate or train in bfloat16"))
    if found:
        return found
    lowest = f", the loss scale lowered to {np.nanmin(scale):g}" if scale is not None else ""
    return [Finding("note", None, None, at,
                    f"{int(sk.sum())} optimizer step(s) skipped for fp16 overflow{lowest}: expected under "
                    "fp16 loss scaling (the scaler skips that update, halves its scale and goes on), "
                    "not a failure")]


START = 3  # logged losses whose median is the loss at the start


@LOSS_CHECKS.register("loss_divergence")
def _divergence(s: LossSeries, th: Thresholds) -> list[Finding]:
    """A loss that grew several-fold: the running median of the finite losses (over a tenth of
    them, at least 5) rising past `divergence_factor` times the loss at the start. The medians
    make a few noisy batches no divergence. The start is the median of the first three logged
    losses: the model before its updates have moved it far (B = 0 makes the first one the
    pretrained model's loss), and no single unusual batch. A longer start window would measure a
    run that diverges within it (CAME at lr 1e-2 climbs from 5.0 to 32 in four steps) from a level
    it had already lost. A loss whose start is not positive has no scale to be a multiple of: not
    checked. Needs two windows of finite losses."""
    finite = np.isfinite(s.loss)
    steps, loss = np.asarray(s.steps)[finite], np.asarray(s.loss, dtype=np.float64)[finite]
    window = max(5, len(loss) // 10)
    if len(loss) < 2 * window:
        return []
    level = running_median(loss, window)  # level[i]: the median of loss[i:i + window]
    start = float(np.median(loss[:START]))
    if start <= 0:
        return []
    i = first(level > th.divergence_factor * start)
    if i is None:
        return []
    span = lambda k: f"steps {int(steps[k])}–{int(steps[k + window - 1])}"  # noqa: E731
    peak = int(np.argmax(level))
    return [Finding("warning", None, None, int(steps[i + window - 1]),
                    f"the loss diverges: its median over {span(i)} is {level[i]:.4g}, {level[i] / start:.1f}× its "
                    f"start {start:.4g}; it peaks at {level[peak]:.4g} ({span(peak)}) and ends at {level[-1]:.4g}; "
                    "lower the learning rate or enable gradient clipping")]


def check_loss(steps: np.ndarray, loss: np.ndarray, skipped: np.ndarray | None = None,
               loss_scale: np.ndarray | None = None, thresholds: Thresholds | None = None) -> list[Finding]:
    """Runs every registered loss check on a run's loss (and, where the trainer reports them, its
    skipped steps and GradScaler loss scale), in registration order: NaN/Inf first."""
    th = thresholds or Thresholds()
    series = LossSeries(np.asarray(steps), np.asarray(loss, dtype=np.float64),
                        None if skipped is None else np.asarray(skipped, dtype=np.float64),
                        None if loss_scale is None else np.asarray(loss_scale, dtype=np.float64))
    found: list[Finding] = []
    for name in LOSS_CHECKS.names():
        found.extend(replace(f, check=name) for f in LOSS_CHECKS.get(name)(series, th))
    return found


def check_scalars(scalars, thresholds: Thresholds | None = None) -> list[Finding]:
    """check_loss over a recording's scalars (`rec.scalar_columns`, or the `rec.scalars`
    DataFrame: columns step, loss and, when the trainer reports them, skipped and loss_scale)."""
    if "loss" not in scalars or "step" not in scalars:
        return []
    column = lambda name: np.asarray(scalars[name]) if name in scalars else None  # noqa: E731
    return check_loss(column("step"), column("loss"), column("skipped"), column("loss_scale"), thresholds)
