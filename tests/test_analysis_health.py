"""Health checks: each failure users report is named, at the right step, and a healthy run is quiet."""
from __future__ import annotations

import numpy as np

from lorascope.analysis import health
from lorascope.analysis.health import ModuleSeries, Thresholds

STEPS = np.arange(0, 60, 10)


def series(**metrics) -> ModuleSeries:
    base = {
        "A": {"nonfinite": np.zeros(6), "max_abs": np.ones(6), "frobenius": np.ones(6),
              "distance_from_first": np.linspace(0, 1, 6)},
        "B": {"nonfinite": np.zeros(6), "max_abs": np.r_[0, np.ones(5)], "frobenius": np.r_[0, np.ones(5)]},
        "dW": {"frobenius": np.r_[0, np.ones(5)], "effective_rank": np.r_[np.nan, np.full(5, 6.0)],
               "energy_top1": np.r_[np.nan, np.full(5, 0.3)]},
    }
    for key, value in metrics.items():
        matrix, metric = key.split("__")
        base[matrix][metric] = np.asarray(value, dtype=np.float64)
    return ModuleSeries("h.0.attn", 8, STEPS, base)


def names(findings):
    return [(f.matrix, f.step) for f in findings]


def test_healthy_module_is_quiet():
    assert health.check_module(series()) == []


def test_b_still_zero():
    f = health.check_module(series(B__max_abs=np.zeros(6)), checks=("b_still_zero",))
    assert names(f) == [("B", 10)] and f[0].severity == "error" and "still exactly zero" in f[0].message


def test_b_zero_only_early_is_fine():
    assert health.check_module(series(B__max_abs=[0, 0, 1, 1, 1, 1]), checks=("b_still_zero",)) == []


def test_a_not_moving_unless_frozen_on_purpose():
    s = series(A__distance_from_first=np.zeros(6))
    assert names(health.check_module(s, checks=("a_not_moving",))) == [("A", 50)]
    s.a_trainable = False  # LoRA-FA
    assert health.check_module(s, checks=("a_not_moving",)) == []


def test_nonfinite_weights():
    f = health.check_module(series(B__nonfinite=[0, 0, 0, 3, 3, 3]), checks=("nonfinite_weights",))
    assert names(f) == [("B", 30)] and "3 NaN/Inf" in f[0].message


def test_rank_collapse_and_spike():
    s = series(dW__effective_rank=[np.nan, 6, 4, 1.5, 1.2, 1.1], dW__energy_top1=[np.nan, .3, .5, .95, .97, .99])
    assert names(health.check_module(s, checks=("rank_collapse",))) == [("dW", 30)]
    assert names(health.check_module(s, checks=("spectral_spike",))) == [("dW", 30)]


def test_norm_blowup_uses_first_nonzero_norm():
    s = series(dW__frobenius=[0, 0.01, 0.02, 0.5, 2.0, 3.0])
    f = health.check_module(s, Thresholds(blowup_factor=100), checks=("norm_blowup",))
    assert names(f) == [("dW", 40)]


def test_loss_nan_and_skipped_steps():
    steps = np.arange(1, 6)
    assert names(health.check_loss(steps, [3, 2, np.nan, 2, 1])) == [(None, 3)]
    # an fp16 overflow step that the scaler skipped is expected, not a finding
    assert health.check_loss(steps, [3, np.inf, 2, 2, 1], skipped=[0, 1, 0, 0, 0]) == []
    assert health.check_loss(steps, [np.inf] * 5, skipped=[1] * 5)[0].severity == "error"
    # a column of NaN means the loop did not report skips: nothing was skipped
    assert names(health.check_loss(steps, [3, np.inf, 2, 2, 1], skipped=[np.nan] * 5)) == [(None, 2)]
    assert health.check_loss(steps, [3, 2, 2, 2, 1], skipped=[np.nan] * 5) == []


def test_finding_reads_as_a_sentence():
    f = health.Finding("warning", "h.0.attn", "dW", 30, "one direction holds 95% of the energy")
    assert str(f) == "warning: h.0.attn dW at step 30: one direction holds 95% of the energy"


def test_finding_names_its_run():
    f = health.Finding("error", "h.0.attn", "B", 10, "B is still exactly zero", run="adamw")
    assert str(f) == "error: h.0.attn B of run adamw at step 10: B is still exactly zero"
    loss = health.Finding("error", None, None, 5, "the loss is nan", run="came")
    assert str(loss) == "error: run came at step 5: the loss is nan"
