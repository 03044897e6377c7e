"""Health checks that name what went wrong in a LoRA run, from the failures users report: B never
leaving zero, A frozen by accident, NaN/Inf, a collapsed rank, a sudden spectral spike, a norm
growing faster than training can grow it, a NaN or diverging loss, fp16 skips that persist.
Each check is a pure function of a module's metric series (`weights.CHECKS`) or of the run's
loss (`loss.LOSS_CHECKS`), registered by name; docs/health.md lists them with their thresholds
and why a healthy run stays quiet. Quiet means quiet: a check that fires on a healthy run
drowns the real alarms, so each compares a series with its own history or with what training
can do, not with a fixed share or a fixed multiple of a first value."""
from __future__ import annotations

from lorascope.analysis.health.base import Finding, ModuleSeries, Thresholds
from lorascope.analysis.health.loss import LOSS_CHECKS, check_loss, check_scalars
from lorascope.analysis.health.weights import CHECKS, check_module, scope_across_modules

__all__ = ["Finding", "Thresholds", "ModuleSeries", "CHECKS", "LOSS_CHECKS", "check_module", "check_loss",
           "check_scalars", "scope_across_modules"]
