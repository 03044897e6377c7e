"""The checks on a module's LoRA weights, registered by name in `CHECKS`: NaN/Inf, a B that never
leaves zero, an A that never moves, a collapsed rank, a spectral spike and a blown-up norm. Each
is a pure function of the module's metric series (`ModuleSeries`) and the `Thresholds`."""
from __future__ import annotations

from dataclasses import replace
from typing import Callable

import numpy as np

from lorascope.analysis.health.base import Finding, ModuleSeries, Thresholds
from lorascope.analysis.health.series import first, growth_exponents, outlying_rises
from lorascope.registry import Registry

__all__ = ["CHECKS", "check_module", "scope_across_modules"]

Check = Callable[[ModuleSeries, Thresholds], list[Finding]]
CHECKS: Registry[Check] = Registry("health check")


@CHECKS.register("nonfinite_weights")
def _nonfinite(s: ModuleSeries, th: Thresholds) -> list[Finding]:
    out = []
    for matrix in ("A", "B"):
        bad = s.get(matrix, "nonfinite")
        if bad is None:
            continue
        i = first(np.asarray(bad) > 0)
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
        i = first(late)
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
    """ΔW collapsed onto about one direction: its effective rank (Roy & Vetterli, between 1 and
    the rank) below `rank_collapse_below`. Not a fraction of the rank: a healthy update
    concentrates in a few directions whatever the rank (the default rank-8 run ends near 2.8),
    so that a fraction flags a rank-32 adapter for being large; one direction is a collapse
    at any rank."""
    er = s.get("dW", "effective_rank")
    if er is None or s.rank < 2:
        return []
    with np.errstate(invalid="ignore"):
        i = first(np.asarray(er) < th.rank_collapse_below)  # NaN (ΔW = 0) never counts as a collapse
    if i is None:
        return []
    return [Finding("warning", s.module, "dW", int(s.steps[i]),
                    f"effective rank of ΔW fell to {er[i]:.2f} (rank {s.rank}): the update has collapsed onto about "
                    "one direction; the learning rate of B may be too high")]


@CHECKS.register("spectral_spike")
def _spike(s: ModuleSeries, th: Thresholds) -> list[Finding]:
    """A spike is one direction taking over ΔW between two snapshots. How much of ΔW's energy
    its top direction holds is no test by itself: a healthy LoRA update is often nearly rank one
    (the default run's ΔW holds ~90% in one direction for the whole run). What is not healthy is
    a sudden jump of that share that the series' own history does not show: a rise that is a
    robust outlier against its step-to-step rises (`outlying_rises`) and large in itself, after
    the first `settling_steps`, while ΔW is still being built from a few updates."""
    e = s.get("dW", "energy_top1")
    if e is None or s.rank < 2:
        return []
    e = np.asarray(e, dtype=np.float64)
    keep = np.isfinite(e) & (s.steps >= th.settling_steps)
    values, steps = e[keep], s.steps[keep]
    rise, z = outlying_rises(values)
    i = first((z > th.spike_z) & (rise >= th.spike_min_rise))
    if i is None:
        return []
    return [Finding("warning", s.module, "dW", int(steps[i + 1]),
                    f"one singular direction jumped from {100 * values[i]:.1f}% to {100 * values[i + 1]:.1f}% of ΔW's "
                    f"energy since step {int(steps[i])}, {z[i]:.0f} robust deviations beyond the series' other "
                    "step-to-step changes: a single update dominates the adapter; look for a loss or gradient "
                    "spike at that step")]


def _growth(s: ModuleSeries, matrix: str, f: np.ndarray, th: Thresholds) -> Finding | None:
    """The norm growing faster than the steps could make it: see `growth_exponents`."""
    ref, p = growth_exponents(s.steps, f)
    with np.errstate(invalid="ignore"):
        i = first((p > th.growth_exponent) & (s.steps >= th.settling_steps))
    if i is None:
        return None
    r = ref[i]
    return Finding("warning", s.module, matrix, int(s.steps[i]),
                   f"‖{matrix}‖_F grew {f[i] / f[r]:.3g}× from step {int(s.steps[r])} to step {int(s.steps[i])} "
                   f"({f[r]:.3g} → {f[i]:.3g}), as steps^{p[i]:.1f}: faster than bounded steps can grow it "
                   f"(at most ~steps^1, steps^2 under warmup); the learning rate may be too high")


@CHECKS.register("norm_blowup")
def _blowup(s: ModuleSeries, th: Thresholds) -> list[Finding]:
    """A norm that grew out of scale. A matrix that starts non-zero (A, B under some inits) has
    its start as its scale: `blowup_factor` times it is a blow-up. A matrix that starts at zero
    (B, ΔW under the usual inits) has no such scale, and its first non-zero value is one
    update, so that any training grows it 100-fold; its reference is its own norm at half the
    steps (`growth_exponents`). The growth test applies to both."""
    out = []
    for matrix in ("A", "B", "dW"):
        f = s.get(matrix, "frobenius")
        if f is None:
            continue
        f = np.asarray(f, dtype=np.float64)
        start = f[0]
        if np.isfinite(start) and start > 0:
            with np.errstate(invalid="ignore"):
                i = first(f > th.blowup_factor * start)
            if i is not None:
                out.append(Finding("warning", s.module, matrix, int(s.steps[i]),
                                   f"‖{matrix}‖_F grew to {f[i]:.3g}, over {th.blowup_factor:g}× its value at the "
                                   f"start {start:.3g}; the learning rate may be too high"))
                continue
        found = _growth(s, matrix, f, th)
        if found is not None:
            out.append(found)
    return out


def check_module(series: ModuleSeries, thresholds: Thresholds | None = None,
                 checks: tuple[str, ...] | None = None) -> list[Finding]:
    """Runs the named checks (all registered ones by default) on one module's series."""
    th = thresholds or Thresholds()
    found: list[Finding] = []
    for name in checks or CHECKS.names():
        found.extend(replace(f, check=name) for f in CHECKS.get(name)(series, th))
    return found


def scope_across_modules(findings: list[Finding], modules: int, thresholds: Thresholds | None = None) -> list[Finding]:
    """One run's module findings, with what only the run as a whole tells: a rank collapse in
    fewer than `rank_collapse_share` of the run's `modules` is a note, not a warning. An lr too
    high for B collapses the updates across the run; an isolated one-directional ΔW is usually a
    one-directional gradient (in a classifier the last block's query reaches the loss only at
    the [CLS] position, so its update is nearly rank one in a healthy run)."""
    th = thresholds or Thresholds()
    collapsed = sum(f.check == "rank_collapse" for f in findings)
    if not collapsed or collapsed >= th.rank_collapse_share * modules:
        return findings
    isolated = (f": about one direction holds the update, in {collapsed} of the run's {modules} modules (a warning "
                f"from {th.rank_collapse_share:.0%} of them: an lr too high for B collapses the updates across the "
                "run, while one module alone usually has a one-directional gradient)")
    return [replace(f, severity="note", message=f.message.split(": the update")[0] + isolated)
            if f.check == "rank_collapse" else f for f in findings]
