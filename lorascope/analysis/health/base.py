"""What the health checks hand out (`Finding`), the limits they apply (`Thresholds`) and what a
weight check reads of one module (`ModuleSeries`)."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["Finding", "Thresholds", "ModuleSeries"]


@dataclass(frozen=True)
class Finding:
    severity: str        # "error" (the run is broken) | "warning" (look at it) | "note" (expected, worth knowing)
    module: str | None   # None for run-level findings such as the loss
    matrix: str | None   # "A", "B", "dW" or None
    step: int | None     # the first step at which it holds
    message: str
    run: str | None = None  # the run it belongs to; None where only one run is in view
    check: str | None = None  # the registered check that found it (docs/health.md)

    def __str__(self) -> str:
        where = " ".join(x for x in (self.module, self.matrix) if x)
        if self.run is not None:  # several recordings print their findings together
            where = f"{where} of run {self.run}" if where else f"run {self.run}"
        at = f" at step {self.step}" if self.step is not None else ""
        return f"{self.severity}: {where}{at}: {self.message}" if where else f"{self.severity}{at}: {self.message}"


@dataclass(frozen=True)
class Thresholds:
    """The limits of the checks; docs/health.md says why each has its value."""
    zero_b_after: int = 10            # optimizer steps after which B = 0 means it is not training
    # The first steps build ΔW from a handful of updates: its spectrum and norm still settle, so
    # the spike and growth checks start after them.
    settling_steps: int = 10
    # ΔW's effective rank below this: it has collapsed onto about one direction (a fraction of the
    # rank would flag large ranks for being large: LoRA updates concentrate in a few directions)
    rank_collapse_below: float = 1.5
    # ... in at least this share of a run's modules: a warning (an lr that drives every update onto
    # one direction). Fewer: a note each, since one module can have a one-directional gradient by
    # construction (the last block's query under a [CLS] classifier sees the loss at one position).
    rank_collapse_share: float = 0.25
    # A spike: a rise of ΔW's top-direction energy share between two snapshots that is an outlier
    # (robust z-score) against the series' own step-to-step rises, and large in itself.
    spike_z: float = 10.0
    spike_min_rise: float = 0.2
    blowup_factor: float = 100.0      # a matrix that starts non-zero: its norm this many times its start
    # Any matrix, also one that starts at zero: its norm growing faster than steps^growth_exponent
    # between step s/2 and step s (3: more than 8x while the steps double).
    growth_exponent: float = 3.0
    divergence_factor: float = 2.0    # the loss's running median this many times its start
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
