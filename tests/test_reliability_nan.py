"""A NaN loss on CPU in a real recorded run: a learning rate of 1e6 makes tiny-gpt2's logits
overflow within a few steps. The trainer skips every step whose loss or gradient is not finite,
the recording says so (the `skipped` scalar), no NaN reaches A or B, and `lorascope info` and
`lorascope analyze` tell the user."""
from __future__ import annotations

import numpy as np
import pytest

import lorascope
from tests.cli_process import LAUNCH, QUICK_RECORD, run_cli, warm  # noqa: F401 - fixture

STEPS = 12


@pytest.fixture(scope="module")
def diverged(warm):
    """One recording whose loss became NaN part-way (shared by the tests below)."""
    path = warm / "diverged.h5"
    done = run_cli(["record", "-o", path, *QUICK_RECORD, "--steps", STEPS, "--lr", "1e6"], warm)
    assert done.code == 0 and "Traceback" not in done.output, done.output
    return path


def test_nan_steps_are_skipped_and_flagged(diverged):
    with lorascope.open(diverged) as rec:
        s = rec.scalars
        assert s["step"].tolist() == list(range(1, STEPS + 1))
        bad = ~(np.isfinite(s["loss"].to_numpy()) & np.isfinite(s["grad_norm"].to_numpy()))
        skipped = s["skipped"].to_numpy() == 1
        assert bad.any() and not bad.all()  # the run diverged part-way: the test sees both kinds
        assert (skipped == bad).all()  # every non-finite step is flagged, and only those
        assert (s.loc[skipped, "loss_scale"] == 1).all()  # fp32: no GradScaler to blame
        steps = rec.steps.tolist()
        for m in rec.modules.values():
            A, B = m.A[:], m.B[:]
            assert np.isfinite(A).all() and np.isfinite(B).all()  # no NaN entered the weights
            for step in s.loc[skipped, "step"]:
                t = steps.index(int(step))  # a skipped update left A and B as they were
                np.testing.assert_array_equal(A[t], A[t - 1])
                np.testing.assert_array_equal(B[t], B[t - 1])


@pytest.mark.parametrize("launcher", LAUNCH)
def test_info_and_analyze_run_on_a_diverged_recording(diverged, tmp_path, launcher):
    info = run_cli(["info", diverged], tmp_path, launcher)
    assert info.code == 0 and "Traceback" not in info.output, info.output
    assert "health" in info.stdout and "no findings" not in info.stdout  # the blow-up is reported
    table = tmp_path / "stats.csv"
    analyzed = run_cli(["analyze", diverged, "-o", table], tmp_path, launcher)
    assert analyzed.code == 0 and "Traceback" not in analyzed.output, analyzed.output
    assert table.stat().st_size > 0 and "warning" in analyzed.stderr


def test_info_and_analyze_report_the_skipped_nan_steps(diverged, tmp_path):
    info = run_cli(["info", diverged], tmp_path)
    health = info.stdout.split("\nhealth\n", 1)[1].lower()
    assert "skipped" in health or "nan" in health, health
    analyzed = run_cli(["analyze", diverged, "-o", tmp_path / "stats.csv"], tmp_path)
    assert "skipped" in analyzed.stderr.lower() or "nan" in analyzed.stderr.lower()
