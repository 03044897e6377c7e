"""The report's `grad_noise` figure kind: what it draws (each run's ratio from the grad_noise table,
gaps where it is undefined, the pure-noise level K dashed) and when it is left out (no recording
with two or more micro-step gradients of a step)."""
from __future__ import annotations

import numpy as np

from lorascope.report import build_report
from lorascope.report.canvas import Canvas
from lorascope.report.gradient_figures import NO_MICRO_STEPS, grad_noise, missing_micro_steps, noise_panel
from lorascope.report.module_figures import FigureContext
from lorascope.report.view import module_view, panel_steps, report_options

from analysis_fakes import with_gradients
from report_fakes import fake_recording

MODULE = "h.0.attn.c_attn"


def _runs():
    """Run a: four micro-steps per step and a last step of two (the end of an epoch), A's first
    step all zeros (B = 0) and an Inf in step 3; run b: no gradients."""
    a = with_gradients(fake_recording("a"), {1: 4, 2: 4, 3: 4, 4: 4, 5: 2})
    for m in a.modules.values():
        m.grad_A[:4] = 0.0
        m.grad_A[9, 0, 0] = np.inf
    return [a, fake_recording("b", seed=1, optimizer="came")]


def _view(recs):
    return module_view(recs, MODULE, ("grad_noise",), report_options(8, 16, panel_steps(recs)))


class _Kept(Canvas):
    """A Canvas that keeps the panels it saved, to look at what was drawn."""

    def __init__(self) -> None:
        super().__init__()
        self.saved = []

    def save(self, panels, path):
        self.saved.append(panels)
        return super().save(panels, path)


def test_the_panel_holds_each_runs_ratio_and_the_pure_noise_level():
    recs = _runs()
    view = _view(recs)
    table = view.tables["grad_noise"]
    for matrix in ("A", "B"):
        panel = noise_panel(view, matrix)
        rows = table[(table.run == "a") & (table.matrix == matrix)]
        steps, ratio = panel.ratio["a"]
        assert steps.tolist() == [1, 2, 3, 4, 5]
        np.testing.assert_array_equal(ratio, rows.ratio.to_numpy(dtype=float))
        assert panel.without == ["b"] and list(panel.ratio) == ["a"]
        assert len(panel.levels) == 1 and panel.levels[0][1].tolist() == [4, 4, 4, 4, 2]
    # A's undefined steps are gaps: a zero mean at step 1, an Inf at step 3
    _, ratio_a = noise_panel(view, "A").ratio["a"]
    assert np.isnan(ratio_a[[0, 2]]).all() and np.isfinite(ratio_a[[1, 3, 4]]).all()


def test_the_figure_draws_the_ratio_on_a_log_axis_with_k_dashed(tmp_path):
    recs = _runs()
    view = _view(recs)
    canvas = _Kept()
    refs = grad_noise(view, "m000", FigureContext(tmp_path, canvas, {"a": "#1f77b4", "b": "#ff7f0e"}))
    assert [r.file for r in refs] == ["m000-grad-noise.png"] and (tmp_path / refs[0].file).is_file()
    assert "Runs without micro-step gradients: b." in refs[0].caption
    axes = canvas.saved[0].axes.flat
    for ax, matrix in zip(axes, ("A", "B")):
        assert ax.get_yscale() == "log"
        run_line, level = ax.get_lines()
        np.testing.assert_array_equal(run_line.get_ydata(), noise_panel(view, matrix).ratio["a"][1])
        assert level.get_linestyle() == "--" and list(level.get_ydata()) == [4, 4, 4, 4, 2]
        assert [t.get_text() for t in ax.texts] == ["dashed: pure noise, K = 2–4"]


def test_pure_noise_draws_near_its_level():
    # Gaussian micro-gradients with no common direction: the ratio sits near K = 4
    rec = with_gradients(fake_recording("a", shape=(96, 64)), {s: 4 for s in range(1, 13)}, seed=3)
    view = _view([rec])
    _, ratio = noise_panel(view, "B").ratio["a"]
    assert 3.0 < np.median(ratio) < 5.0


def test_left_out_without_micro_step_gradients(tmp_path):
    plain = [fake_recording("a"), fake_recording("b", seed=1, optimizer="came")]
    assert missing_micro_steps(plain) == NO_MICRO_STEPS
    assert missing_micro_steps([with_gradients(fake_recording("c"), {1: 1, 2: 1})]) == NO_MICRO_STEPS
    assert missing_micro_steps([plain[0], with_gradients(fake_recording("c"), {1: 1, 2: 2})]) is None
    index = build_report(plain, tmp_path / "default", max_modules=1)
    assert not list((tmp_path / "default").glob("*grad-noise*"))
    assert "micro-step gradients" not in index.read_text(encoding="utf-8")  # not asked for: no note
    index = build_report(plain, tmp_path / "asked", max_modules=1, figure_kinds=["grad_noise", "moments"])
    assert not list((tmp_path / "asked").glob("*grad-noise*"))
    assert "No grad_noise figures: no recording holds two or more micro-step gradients" in index.read_text(encoding="utf-8")


def test_drawn_in_a_report_of_a_recording_with_micro_steps(tmp_path):
    build_report(_runs(), tmp_path, max_modules=1, figure_kinds=["grad_noise"])
    assert [p.name for p in tmp_path.glob("*grad-noise*")] == ["m000-h.0.attn.c_attn-grad-noise.png"]


def test_a_reused_canvas_draws_the_same_pixels_as_a_fresh_one(tmp_path):
    """After a module with gradients and gaps, one without any, then one with: the canvas the
    report reuses forgets the dashed levels, the texts and the log axis."""
    from matplotlib.image import imread

    class Fresh(Canvas):
        def grid(self, *args, **kwargs):
            self._layouts.clear()
            return super().grid(*args, **kwargs)

    views = [_view(_runs()), _view([fake_recording("a"), fake_recording("b", seed=1, optimizer="came")]),
             _view([with_gradients(fake_recording("a", shape=(32, 8)), {1: 3, 2: 3, 3: 2}, seed=5),
                    fake_recording("b", seed=1, optimizer="came")])]
    colors = {"a": "#1f77b4", "b": "#ff7f0e"}
    (tmp_path / "used").mkdir()
    used = FigureContext(tmp_path / "used", Canvas(), colors)
    files = [grad_noise(view, f"m{i}", used)[0].file for i, view in enumerate(views)]
    for i in (1, 2):
        (tmp_path / f"fresh{i}").mkdir()
        grad_noise(views[i], f"m{i}", FigureContext(tmp_path / f"fresh{i}", Fresh(), colors))
        np.testing.assert_array_equal(imread(tmp_path / "used" / files[i]), imread(tmp_path / f"fresh{i}" / files[i]))
