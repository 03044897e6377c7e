"""What makes reports fast must not change what they show: a figure drawn on a reused canvas (whose
axes were emptied, not cleared) has the same pixels as the same figure drawn on a fresh canvas,
for every figure kind, after a module that exercised log axes, fixed ticks, imshow and NaN."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
from matplotlib.image import imread

from lorascope.report import MODULE_FIGURES, figures
from lorascope.report.canvas import Canvas
from lorascope.report.module_figures import FigureContext
from lorascope.report.view import module_view, panel_steps, report_options
from report_fakes import fake_recording


class _FreshCanvas(Canvas):
    """A new figure for every grid: what the reused canvas must look like."""

    def grid(self, *args, **kwargs):
        self._layouts.clear()
        return super().grid(*args, **kwargs)


def _module(name: str, seed: int, shape: tuple[int, int], rank: int, steps: int, edit=None):
    runs = [fake_recording(run, seed=seed + k, modules=(name,), shape=shape, rank=rank, steps=steps)
            for k, run in enumerate(("a", "b"))]
    if edit is not None:
        edit([r.modules[name] for r in runs])
    tables = sorted({t for k in MODULE_FIGURES.names() for t in MODULE_FIGURES.get(k).tables})
    return module_view(runs, name, tables, report_options(8, 16, panel_steps(runs)))


def _nan_tail(mods):
    mods[1].A[-4:] = np.nan


def _untrained_b(mods):  # B still zero: its spectrum and β panels have nothing to put on a log axis
    for m in mods:
        m.B[:] = 0.0


def _datas():
    """Three modules whose figures differ in every way the canvas must forget: NaN weights (empty
    panels), log axes followed by linear ones and back, other shapes, ranges and step counts."""
    return (_module("h.0.q", 0, (12, 20), 3, 9, _nan_tail),
            _module("h.1.v", 2, (24, 16), 4, 14, _untrained_b),
            _module("h.2.o", 4, (16, 16), 2, 11))


@pytest.mark.parametrize("kind", MODULE_FIGURES.names())
def test_reused_canvas_draws_the_same_pixels_as_a_fresh_one(kind, tmp_path):
    datas = _datas()
    colors = figures.run_colors(["a", "b"])
    draw = MODULE_FIGURES.get(kind).draw
    used = FigureContext(tmp_path / "used", Canvas(), colors)
    used.out_dir.mkdir()
    refs = [draw(data, f"m{i}", used) for i, data in enumerate(datas)]
    for i in (1, 2):
        fresh = FigureContext(tmp_path / f"fresh{i}", _FreshCanvas(), colors)
        fresh.out_dir.mkdir()
        assert [r.file for r in draw(datas[i], f"m{i}", fresh)] == [r.file for r in refs[i]]
        for ref in refs[i]:
            np.testing.assert_array_equal(
                imread(used.out_dir / ref.file), imread(fresh.out_dir / ref.file),
                err_msg=f"{kind}: {ref.file} differs on a reused canvas")


def test_shared_x_labels_only_the_bottom_shown_row():
    panels = Canvas().grid(2, 3, share_x=True)
    axes = panels.flat(4)  # the bottom row keeps one panel: columns 1 and 2 end in row 0
    for ax in axes:
        ax.set_xlabel("optimizer step")
    panels.label_outer_x()
    labelled = [ax.get_xlabel() == "optimizer step" for ax in axes]
    assert labelled == [False, True, True, True]
    shown = [ax.xaxis.get_major_ticks()[0].label1.get_visible() for ax in axes]
    assert shown == labelled


def test_worker_processes_write_the_same_report(tmp_path):
    """Modules drawn by two worker processes give the same page and the same PNG bytes as modules
    drawn here, one after another (duplicate run names included: workers must use the same
    renamed runs)."""
    from report_recordings import record_tiny_run
    from lorascope.report import build_report

    runs = [record_tiny_run(tmp_path / "a.h5", "same", seed=0, steps=3),
            record_tiny_run(tmp_path / "b.h5", "same", optimizer="sgd", seed=1, steps=3)]
    kw = dict(figure_kinds=["histograms", "moments"], max_modules=4)
    serial = build_report(runs, tmp_path / "serial", workers=1, **kw)
    parallel = build_report(runs, tmp_path / "parallel", workers=2, **kw)

    def page(index):
        return [line for line in index.read_text(encoding="utf-8").splitlines() if "generated" not in line]

    assert page(serial) == page(parallel) and "same #2" in serial.read_text(encoding="utf-8")
    pngs = sorted(p.name for p in serial.parent.glob("*.png"))
    assert len(pngs) == 1 + 4 * 3 and pngs == sorted(p.name for p in parallel.parent.glob("*.png"))
    for name in pngs:
        assert (serial.parent / name).read_bytes() == (parallel.parent / name).read_bytes(), name


def _threads_seen(_: int) -> tuple[str | None, str | None]:
    import os

    return os.environ.get("OMP_NUM_THREADS"), os.environ.get("OPENBLAS_NUM_THREADS")


def test_report_workers_start_with_their_share_of_the_math_threads(monkeypatch):
    """Each of n workers gets cores // n BLAS/OpenMP threads (at least one), not the parent's
    count: several workers' BLAS threads spinning for the same cores slow every one of them.
    The parent's own settings come back afterwards, unset ones unset."""
    import multiprocessing
    import os
    from concurrent.futures import ProcessPoolExecutor

    from lorascope.workers import math_threads

    monkeypatch.setenv("OMP_NUM_THREADS", "8")
    monkeypatch.delenv("OPENBLAS_NUM_THREADS", raising=False)
    with math_threads(3), ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        assert pool.submit(_threads_seen, 0).result() == ("3", "3")
    assert os.environ["OMP_NUM_THREADS"] == "8" and "OPENBLAS_NUM_THREADS" not in os.environ
