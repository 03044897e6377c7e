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


def severities(findings):
    return [(f.severity, f.step) for f in findings]


def test_loss_nan_and_skipped_steps():
    steps = np.arange(1, 6)
    assert names(health.check_loss(steps, [3, 2, np.nan, 2, 1])) == [(None, 3)]
    # an fp16 overflow step that the scaler skipped is expected: a note, not a failure (a loop
    # that reports skips but no loss_scale column is taken to scale the loss)
    assert severities(health.check_loss(steps, [3, np.inf, 2, 2, 1], skipped=[0, 1, 0, 0, 0])) == [("note", 2)]
    assert health.check_loss(steps, [np.inf] * 5, skipped=[1] * 5)[0].severity == "error"
    # a column of NaN means the loop did not report skips: nothing was skipped
    assert names(health.check_loss(steps, [3, np.inf, 2, 2, 1], skipped=[np.nan] * 5)) == [(None, 2)]
    assert health.check_loss(steps, [3, 2, 2, 2, 1], skipped=[np.nan] * 5) == []


S = 2.0 ** 16


def fp16_run(skipped_steps, n=40, scale=S):
    """The scalars of an n-step fp16 run: the loss scale after each step halves at each skip."""
    steps = np.arange(1, n + 1)
    skipped = np.isin(steps, skipped_steps).astype(float)
    loss_scale = scale * 0.5 ** np.cumsum(skipped)
    return steps, np.full(n, 2.0), skipped, loss_scale


def test_an_occasional_fp16_skip_is_a_note_that_calls_it_expected():
    steps, loss, skipped, scale = fp16_run([3, 17])
    (note,) = health.check_loss(steps, loss, skipped, scale)
    assert (note.severity, note.step) == ("note", 3)
    assert "2 optimizer step(s) skipped for fp16 overflow" in note.message
    assert "lowered to 16384" in note.message and "expected" in note.message
    # the loss of an overflowing step may itself be inf: still the scaler's skip, not an error
    loss[2] = np.inf
    assert severities(health.check_loss(steps, loss, skipped, scale)) == [("note", 3)]
    # but a non-finite loss at a step that was not skipped is one
    loss[9] = np.nan
    assert severities(health.check_loss(steps, loss, skipped, scale)) == [("error", 10), ("note", 3)]


def test_a_streak_of_fp16_skips_is_a_warning():
    steps, loss, skipped, scale = fp16_run(range(5, 15))  # 10 in a row: 65536 → 64, still overflowing
    (warning,) = health.check_loss(steps, loss, skipped, scale)
    assert (warning.severity, warning.step) == ("warning", 5)
    assert "10 optimizer steps in a row" in warning.message
    steps, loss, skipped, scale = fp16_run(range(5, 14))  # 9 in a row: a scaler finding its scale
    assert severities(health.check_loss(steps, loss, skipped, scale)) == [("note", 5)]
    assert severities(health.check_loss(steps, loss, skipped, scale, Thresholds(max_skip_streak=9))) == [("warning", 5)]


def test_a_loss_scale_below_one_is_an_error():
    steps, loss, skipped, scale = fp16_run([4, 8, 12], scale=4.0)  # 4 → 2 → 1 → 0.5 at step 12
    (error,) = health.check_loss(steps, loss, skipped, scale)
    assert (error.severity, error.step) == ("error", 12)
    assert "fell to 0.5" in error.message and "even unscaled" in error.message
    assert severities(health.check_loss(steps, loss, skipped, scale, Thresholds(min_loss_scale=0.25))) == [("note", 4)]


def test_every_step_skipped_under_fp16_is_an_error():
    steps, loss, skipped, scale = fp16_run(range(1, 6), n=5)
    assert severities(health.check_loss(steps, loss, skipped, scale)) == [("error", 1)]
    assert "every optimizer step" in health.check_loss(steps, loss, skipped, scale)[0].message


def test_a_skip_without_loss_scaling_is_the_nan_loss_error():
    steps = np.arange(1, 6)
    loss = np.array([3, np.nan, 2, 2, 1])
    found = health.check_loss(steps, loss, skipped=[0, 1, 0, 0, 0], loss_scale=[1.0] * 5)
    assert severities(found) == [("error", 2)] and "the loss is nan" in found[0].message
    # a healthy fp16 run without skips is quiet
    assert health.check_loss(*fp16_run([])) == []


def test_check_scalars_reads_the_columns_and_passes_the_thresholds():
    import pandas as pd

    steps, loss, skipped, scale = fp16_run(range(5, 10))
    table = pd.DataFrame({"step": steps, "loss": loss, "skipped": skipped, "loss_scale": scale})
    assert severities(health.check_scalars(table)) == [("note", 5)]
    assert severities(health.check_scalars(table, Thresholds(max_skip_streak=5))) == [("warning", 5)]


def test_finding_reads_as_a_sentence():
    f = health.Finding("warning", "h.0.attn", "dW", 30, "one direction holds 95% of the energy")
    assert str(f) == "warning: h.0.attn dW at step 30: one direction holds 95% of the energy"


def test_finding_names_its_run():
    f = health.Finding("error", "h.0.attn", "B", 10, "B is still exactly zero", run="adamw")
    assert str(f) == "error: h.0.attn B of run adamw at step 10: B is still exactly zero"
    loss = health.Finding("error", None, None, 5, "the loss is nan", run="came")
    assert str(loss) == "error: run came at step 5: the loss is nan"
