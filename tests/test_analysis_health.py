"""Health checks: each failure users report is named, at the right step, and a healthy run is quiet."""
from __future__ import annotations

import numpy as np
import pytest

from lorascope.analysis import health
from lorascope.analysis.health import ModuleSeries, Thresholds
from lorascope.analysis.health import series as series_stats

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


def test_rank_collapse():
    s = series(dW__effective_rank=[np.nan, 6, 4, 1.5, 1.2, 1.1])
    (found,) = health.check_module(s, checks=("rank_collapse",))
    assert names([found]) == [("dW", 40)] and "fell to 1.20 (rank 8)" in found.message
    # a rank-8 update that concentrates in two or three directions is LoRA as usual (the default run ends near 2.8)
    assert health.check_module(series(dW__effective_rank=[np.nan, 6, 4, 3, 2.5, 1.6]), checks=("rank_collapse",)) == []


def test_norm_blowup_of_a_matrix_that_starts_non_zero():
    # A's start is its scale: 100 times it is a blow-up, 50 times is not
    grown = health.check_module(series(A__frobenius=[1, 2, 5, 20, 150, 300]), checks=("norm_blowup",))
    assert names(grown) == [("A", 40)] and "over 100× its value at the start 1" in grown[0].message
    assert health.check_module(series(A__frobenius=[1, 2, 5, 20, 40, 50]), checks=("norm_blowup",)) == []


def test_b_growing_100x_its_first_step_is_training_not_a_blowup():
    # The old false alarm: B and ΔW start at zero, so their first non-zero value is one update;
    # steady training grows them 100-fold and more (linearly in the steps), which is no blow-up.
    steps = np.arange(0, 601, 10)
    linear = steps * 1e-4
    s = long_series(steps, B__frobenius=linear, dW__frobenius=1.2 * linear)
    assert linear[-1] / linear[1] == pytest.approx(60) and health.check_module(s, checks=("norm_blowup",)) == []
    # warmup: the lr rises linearly for 100 steps, so the norm grows as steps² (×4 when they double)
    warm = np.cumsum(np.minimum(steps, 100)) * 1e-6
    assert health.check_module(long_series(steps, B__frobenius=warm), checks=("norm_blowup",)) == []


def test_a_norm_that_outgrows_what_steps_can_add_is_a_blowup():
    # SGD running away: from step 300 the norm multiplies by 1.5 every 10 steps
    steps = np.arange(0, 601, 10)
    norm = steps * 1e-4 * np.where(steps > 300, 1.5 ** ((steps - 300) / 10), 1.0)
    (found,) = health.check_module(long_series(steps, B__frobenius=norm), checks=("norm_blowup",))
    # by hand: the reference of step s is the last snapshot at or before s/2 (snapshots every 10 steps)
    exponents = {s: np.log(norm[s // 10] / norm[(s // 2) // 10]) / np.log(s / ((s // 2) // 10 * 10))
                 for s in range(20, 601, 10)}
    want = min(s for s, p in exponents.items() if p > 3)
    assert (found.matrix, found.step, found.severity) == ("B", want, "warning")
    assert f"from step {(want // 2) // 10 * 10} to step {want}" in found.message
    assert f"as steps^{exponents[want]:.1f}" in found.message


def long_series(steps, **metrics) -> ModuleSeries:
    """A healthy long run of a rank-8 adapter: B and ΔW grow linearly from zero, ΔW's top
    direction takes a steadily rising share (0.4 → 0.91) with small noise."""
    T = len(steps)
    rng = np.random.default_rng(0)
    grow = steps * 1e-4
    base = {
        "A": {"nonfinite": np.zeros(T), "max_abs": np.ones(T), "frobenius": np.ones(T) + grow,
              "distance_from_first": grow},
        "B": {"nonfinite": np.zeros(T), "max_abs": grow, "frobenius": grow},
        "dW": {"frobenius": grow, "effective_rank": np.r_[np.nan, np.linspace(7, 3, T - 1)],
               "energy_top1": np.r_[np.nan, 0.91 - 0.51 * np.exp(-steps[1:] / 30) + 0.002 * rng.normal(size=T - 1)]},
    }
    for key, value in metrics.items():
        matrix, metric = key.split("__")
        base[matrix][metric] = np.asarray(value, dtype=np.float64)
    return ModuleSeries("h.0.attn", 8, np.asarray(steps), base)


def test_a_long_healthy_run_is_quiet():
    assert health.check_module(long_series(np.arange(0, 601, 10))) == []


def test_a_share_above_90_percent_is_no_spike():
    # The old false alarm: the default run's ΔW holds 90.1–90.7% in one direction all along.
    steps = np.arange(61)
    share = np.r_[np.nan, 0.901 + 0.006 * np.random.default_rng(1).random(60)]
    assert health.check_module(long_series(steps, dW__energy_top1=share), checks=("spectral_spike",)) == []


def test_a_spike_is_an_outlier_against_the_series_history():
    steps = np.arange(61)
    healthy = long_series(steps).get("dW", "energy_top1")
    spiked = healthy.copy()
    spiked[35:] = 0.97  # from step 35 one direction holds 97% of the energy
    (found,) = health.check_module(long_series(steps, dW__energy_top1=spiked), checks=("spectral_spike",))
    assert (found.matrix, found.step) == ("dW", 35)
    assert "to 97.0% of ΔW's energy since step 34" in found.message
    # its healthy twin, and the same jump inside the first settling steps (ΔW is a few updates)
    assert health.check_module(long_series(steps, dW__energy_top1=healthy), checks=("spectral_spike",)) == []
    early = healthy.copy()
    early[5:] = np.maximum(early[5:], 0.97)
    assert health.check_module(long_series(steps, dW__energy_top1=early), checks=("spectral_spike",)) == []


def test_a_fast_early_rise_seen_through_sparse_snapshots_is_no_spike():
    # a quick look reads 50 snapshots of 2000 steps: the share's early climb comes in big steps,
    # each shared by its neighbours, so none stands out
    steps = np.linspace(0, 2000, 50).astype(int)
    share = np.r_[np.nan, 0.95 - 0.6 * np.exp(-steps[1:] / 200)]
    assert np.diff(share[1:]).max() > 0.08
    assert health.check_module(long_series(steps, dW__energy_top1=share), checks=("spectral_spike",)) == []


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


# --- the series statistics, against independent references ---------------------------------

def test_robust_z_is_scipys_normal_scaled_mad():
    from scipy.stats import median_abs_deviation

    x = np.random.default_rng(2).standard_t(3, size=200)
    want = (x - np.median(x)) / median_abs_deviation(x, scale="normal")
    np.testing.assert_allclose(series_stats.robust_z(x, floor=1e-12), want, rtol=1e-4)
    # a constant series has no spread: the floor is its scale
    np.testing.assert_array_equal(series_stats.robust_z(np.r_[np.ones(9), 3.0], floor=0.5), np.r_[np.zeros(9), 4.0])


def test_running_median_is_pandas_rolling_median():
    import pandas as pd

    x = np.random.default_rng(3).normal(size=50)
    want = pd.Series(x).rolling(7).median().to_numpy()[6:]
    np.testing.assert_allclose(series_stats.running_median(x, 7), want)


def test_growth_exponent_of_a_power_law():
    steps = np.array([0, 1, 2, 3, 5, 8, 13, 21, 34, 55, 89])
    ref, p = series_stats.growth_exponents(steps, np.r_[0.0, steps[1:] ** 2.5])
    # the reference of step s is the last snapshot at or before s/2, from step 1 on
    assert ref.tolist() == [0, 0, 1, 1, 2, 3, 4, 5, 6, 7, 8]  # 5 → 2, 8 → 3, 13 → 5, ..., 89 → 34
    np.testing.assert_allclose(p[2:], 2.5)
    assert np.isnan(p[:2]).all()  # step 0 and 1: no reference at step ≥ 1 at or before half their steps


def test_outlying_rises_sees_a_jump_but_not_a_trend():
    trend = 1 - np.exp(-np.arange(40) / 8)  # fast early rises, then slow ones
    rise, z = series_stats.outlying_rises(trend)
    np.testing.assert_allclose(rise, np.diff(trend))
    assert np.abs(z).max() < 3
    jumped = trend + 0.3 * (np.arange(40) >= 25)
    rise, z = series_stats.outlying_rises(jumped)
    assert np.argmax(z) == 24 and z[24] > 100 and np.sort(np.abs(z))[-2] < 3


def test_logging_cadence():
    steps = np.arange(1, 31)
    every5 = np.where(steps % 5 == 0, 2.0, np.nan)
    assert steps[series_stats.logging_cadence(steps, every5)].tolist() == [5, 10, 15, 20, 25, 30]
    every5[steps == 20] = np.nan  # a log that came as NaN is still a step on the cadence
    assert 20 in steps[series_stats.logging_cadence(steps, every5)]
    assert series_stats.logging_cadence(steps, np.ones(30)).all()
    # an evaluation before training adds a row at step 0 that logged no loss
    before = series_stats.logging_cadence(np.arange(0, 31), np.r_[np.nan, np.ones(30)])
    assert not before[0] and before[1:].all()
    one = np.where(steps == 25, 2.0, np.nan)  # a single log: no cadence to be due on
    assert steps[series_stats.logging_cadence(steps, one)].tolist() == [25]
    assert series_stats.logging_cadence(steps, np.full(30, np.nan)).all()  # a column given only NaN


# --- the loss checks on synthetic series ----------------------------------------------------

def loss_curve(n=60, start=3.8, end=2.4, noise=0.15, seed=0):
    rng = np.random.default_rng(seed)
    return np.arange(1, n + 1), np.geomspace(start, end, n) + noise * rng.normal(size=n)


def test_a_loss_that_grows_several_fold_diverges():
    steps, _ = loss_curve()
    loss = np.geomspace(3.8, 15.8, 60) * (1 + 0.05 * np.random.default_rng(1).normal(size=60))  # the CAME 1e-2 run's ends
    (found,) = health.check_loss(steps, loss)
    level = np.array([np.median(loss[i:i + 6]) for i in range(55)])  # by hand: windows of 6 of 60 values
    start = np.median(loss[:3])
    i = int(np.flatnonzero(level > 2 * start)[0])
    assert (found.severity, found.step) == ("warning", steps[i + 5]) and "the loss diverges" in found.message
    assert f"{level[i] / start:.1f}× its start {start:.4g}" in found.message
    assert f"ends at {level[-1]:.4g}" in found.message
    assert health.check_loss(steps, loss, thresholds=Thresholds(divergence_factor=5)) == []


def test_a_loss_that_diverges_within_its_first_window_is_measured_from_its_start():
    # the real CAME lr 1e-2 run's first 27 losses: 5.0, then 76 at step 7, then ~11-12
    loss = np.array([5.02, 2.91, 13.0, 23.19, 32.14, 15.88, 76.1, 38.64, 26.17, 18.0, 15.63, 13.12, 13.67, 13.0,
                     14.38, 13.84, 14.01, 12.76, 11.93, 12.53, 11.39, 12.45, 12.32, 12.07, 11.24, 10.35, 11.38])
    (found,) = health.check_loss(np.arange(1, 28), loss)
    assert "its start 5.02" in found.message and found.step == 5  # median(5.0, 2.9, 13, 23, 32) = 13 > 10.04


def test_healthy_and_noisy_losses_do_not_diverge():
    assert health.check_loss(*loss_curve()) == []
    # a classification loss starts at chance (about log 2 for every example while the head is
    # untrained) and then jumps between batches (0.2 … 1.4): no divergence
    rng = np.random.default_rng(4)
    noisy = np.r_[np.log(2) + 0.02 * rng.normal(size=3), -np.log(rng.uniform(0.25, 0.82, size=37))]
    assert noisy.max() / noisy.min() > 5 and health.check_loss(np.arange(1, 41), noisy) == []
    # a loss that is not positive has no scale to be a multiple of
    assert health.check_loss(np.arange(1, 41), np.linspace(-1, 5, 40)) == []


def test_nan_between_sparse_loss_logs_is_no_nan_loss():
    steps = np.arange(1, 61)
    loss = np.where(steps % 10 == 0, 2.0, np.nan)  # Hugging Face's logging_steps=10
    assert health.check_loss(steps, loss) == []
    loss[steps == 40] = np.nan
    loss[steps == 50] = np.nan  # the logs at 40 and 50 came as NaN (logging_nan_inf_filter off)
    (error,) = health.check_loss(steps, loss)
    assert (error.severity, error.step) == ("error", 40) and "(2 steps in all)" in error.message
    loss[steps == 43] = np.inf  # an infinite value is always a logged one
    assert health.check_loss(steps, loss)[0].step == 40 and "(3 steps in all)" in health.check_loss(steps, loss)[0].message


def test_each_finding_names_its_check():
    s = series(B__max_abs=np.zeros(6), dW__effective_rank=[np.nan, 6, 4, 1.2, 1.1, 1.0])
    assert [f.check for f in health.check_module(s)] == ["b_still_zero", "rank_collapse"]
    assert [f.check for f in health.check_loss(np.arange(1, 6), [3, 2, np.nan, 2, 1])] == ["nonfinite_loss"]
    assert set(health.CHECKS.names()) | set(health.LOSS_CHECKS.names()) == {
        "nonfinite_weights", "b_still_zero", "a_not_moving", "rank_collapse", "spectral_spike", "norm_blowup",
        "nonfinite_loss", "fp16_skips", "loss_divergence"}  # each documented in docs/health.md


def test_every_check_is_documented():
    from pathlib import Path

    doc = (Path(__file__).parents[1] / "docs" / "health.md").read_text()
    for name in (*health.CHECKS.names(), *health.LOSS_CHECKS.names()):
        assert f"| `{name}` |" in doc, name
    for name in Thresholds.__dataclass_fields__:
        assert f"`{name} = {getattr(Thresholds(), name):g}`" in doc, name


def test_a_rank_collapse_in_one_module_of_many_is_a_note():
    """Known answer both ways: one collapsed module of 24 is a note (a one-directional gradient,
    as the last block's query of a [CLS] classifier has); collapses in a quarter of them or more
    are warnings, each with its message unchanged."""
    s = series(dW__effective_rank=[np.nan, 3, 1.4, 1.3, 1.3, 1.3])
    collapsed = health.check_module(s, checks=("rank_collapse",))
    other = health.Finding("warning", "m1", "B", 30, "something else", check="norm_blowup")
    (note, kept) = health.scope_across_modules(collapsed + [other], modules=24)
    assert note.severity == "note" and "1 of the run's 24 modules" in note.message and "fell to 1.40" in note.message
    assert kept == other
    assert health.scope_across_modules(collapsed * 6, modules=24) == collapsed * 6
    assert health.scope_across_modules(collapsed, modules=2) == collapsed
    assert health.scope_across_modules([], modules=24) == []
