"""Reused matplotlib figures. A report draws hundreds of figures of a handful of layouts; clearing
the axes of a figure that already exists costs about half of building a fresh one (PERF_NOTES.md:
12.9 ms vs 24 ms per panel), so the Canvas keeps one Figure per layout and hands out cleared axes."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # reports render off-screen, with no display, in any thread

import numpy as np  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

__all__ = ["Canvas", "Panels"]

# Margins in inches, so that labels keep their room whatever the number of panels.
_LEFT, _RIGHT, _BOTTOM, _TOP = 0.95, 0.2, 0.6, 0.55
_WSPACE_IN, _HSPACE_IN = 0.95, 0.7
_COLORBAR_IN = 0.6
_LEGEND_IN = 2.2  # room right of the grid for the run legend (names cut to 28 characters)


@dataclass
class Panels:
    """One layout handed out by the Canvas: the figure, its grid of axes (row-major, shape
    (nrows, ncols)) and the colorbar axes when asked for."""

    figure: Figure
    axes: np.ndarray  # (nrows, ncols) of Axes
    colorbar_ax: Axes | None
    legend_at: tuple[float, float] | None = None  # figure fraction of the run legend's top left

    def flat(self, count: int) -> list[Axes]:
        """The first `count` axes, row-major; the rest of the grid is hidden."""
        cells = list(self.axes.flat)
        for ax in cells[count:]:
            ax.set_visible(False)
        return cells[:count]


class Canvas:
    """Hands out cleared axes of a reused figure per layout, and saves it as PNG."""

    def __init__(self, dpi: int = 100) -> None:
        self.dpi = dpi
        self._layouts: dict[tuple, Panels] = {}

    def grid(
        self,
        nrows: int,
        ncols: int,
        *,
        panel: tuple[float, float] = (4.0, 3.0),
        colorbar: bool = False,
        legend: bool = False,
        margins: tuple[float, float] = (_LEFT, _BOTTOM),
    ) -> Panels:
        """Cleared axes in a grid of `panel`-sized (inches) cells, with room on the right for a
        colorbar and/or the run legend; `margins` = (left, bottom) in inches, wider for long
        tick labels."""
        key = (nrows, ncols, panel, colorbar, legend, margins)
        panels = self._layouts.get(key)
        if panels is None:
            panels = self._layouts[key] = _new_panels(nrows, ncols, panel, colorbar, legend, margins)
        else:
            for old in list(panels.figure.legends):
                old.remove()
            for ax in panels.axes.flat:
                ax.cla()
                ax.set_visible(True)
            if panels.colorbar_ax is not None:
                panels.colorbar_ax.cla()
        panels.figure.suptitle("")
        return panels

    def save(self, panels: Panels, path: Path) -> Path:
        # zlib level 3 instead of 6: PNGs ~7% larger, saving ~25% faster (measured here)
        panels.figure.savefig(path, format="png", dpi=self.dpi, pil_kwargs={"compress_level": 3})
        return path

    def close(self) -> None:
        self._layouts.clear()


def _new_panels(
    nrows: int, ncols: int, panel: tuple[float, float], colorbar: bool, legend: bool,
    margins: tuple[float, float],
) -> Panels:
    pw, ph = panel
    left, bottom = margins
    extra = (_COLORBAR_IN if colorbar else 0.0) + (_LEGEND_IN if legend else 0.0)
    width = left + _RIGHT + ncols * pw + (ncols - 1) * _WSPACE_IN + extra
    height = bottom + _TOP + nrows * ph + (nrows - 1) * _HSPACE_IN
    figure = Figure(figsize=(width, height))
    FigureCanvasAgg(figure)
    grid_right = 1 - (_RIGHT + extra) / width
    axes = figure.subplots(nrows, ncols, squeeze=False)
    figure.subplots_adjust(
        left=left / width,
        right=grid_right,
        bottom=bottom / height,
        top=1 - _TOP / height,
        wspace=_WSPACE_IN / pw,
        hspace=_HSPACE_IN / ph,
    )
    colorbar_ax = None
    legend_at = (1 - (_RIGHT + _LEGEND_IN - 0.15) / width, 1 - _TOP / height) if legend else None
    if colorbar:
        colorbar_ax = figure.add_axes(
            (grid_right + 0.1 / width, bottom / height, 0.15 / width, 1 - (bottom + _TOP) / height)
        )
    return Panels(figure, axes, colorbar_ax, legend_at)
