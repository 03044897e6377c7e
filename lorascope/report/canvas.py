"""Reused matplotlib figures. A report draws hundreds of figures of a handful of layouts; updating
a figure that already exists costs about half of building a fresh one (PERF_NOTES.md: 12.9 ms vs
24 ms per panel), so the Canvas keeps one Figure per layout and hands out emptied axes.

Emptied, not cleared: `Axes.cla()` also throws away every tick (two lines, two texts and a
gridline each), and re-creating the ticks on the next draw was a quarter of a report's time. The
Canvas instead removes what the figure functions add (lines, meshes, images, texts, legends) and
puts back what they change (scales, locators, limits, labels, aspect, tick-label style), keeping
the ticks. A test draws every figure kind on a used canvas and on a fresh one and compares pixels."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # reports render off-screen, with no display, in any thread

import numpy as np  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.transforms import Bbox  # noqa: E402

__all__ = ["Canvas", "Panels", "empty_axes", "SLIDE_IN", "MAX_COLUMNS", "figure_width", "columns_that_fit"]

# Margins in inches, so that labels keep their room whatever the number of panels.
_LEFT, _RIGHT, _BOTTOM, _TOP = 0.95, 0.2, 0.6, 0.55
_WSPACE_IN, _HSPACE_IN = 0.95, 0.7
_SUPTITLE_IN = 0.08  # the figure title's top below the figure's top edge
_COLORBAR_IN = 0.9  # the bar, its tick labels and its rotated label, which 0.6 clipped
_LEGEND_IN = 2.2  # room right of the grid for the run legend (labels wrapped at 24 characters)
# A 16:9 slide's width in inches; at the report's 100 dpi also about the page's width in pixels
# (1400 less its padding), so a figure no wider shows in the browser at its own size.
SLIDE_IN = 13.33
MAX_COLUMNS = 5  # panels in a row, at most: more and each is too small to read on a slide
MIN_PANEL_IN = 2.6  # a panel is not narrowed below this to fit a slide: its tick labels would collide


def figure_width(ncols: int, panel_width: float, *, colorbar: bool = False, legend: bool = False,
                 left: float = _LEFT) -> float:
    """The width in inches of a grid of `ncols` panels with these extras (as `Canvas.grid` lays it out)."""
    extra = (_COLORBAR_IN if colorbar else 0.0) + (_LEGEND_IN if legend else 0.0)
    return left + _RIGHT + ncols * panel_width + (ncols - 1) * _WSPACE_IN + extra


def fitted_panel_width(ncols: int, panel_width: float, *, colorbar: bool = False, legend: bool = False,
                       left: float = _LEFT) -> float:
    """`panel_width`, narrowed (to `MIN_PANEL_IN` at the least) where `ncols` of them would make
    the figure wider than a slide."""
    if figure_width(ncols, panel_width, colorbar=colorbar, legend=legend, left=left) <= SLIDE_IN:
        return panel_width
    room = SLIDE_IN - figure_width(ncols, 0.0, colorbar=colorbar, legend=legend, left=left)
    return max(room / ncols, min(panel_width, MIN_PANEL_IN))


def columns_that_fit(count: int, panel_width: float, *, colorbar: bool = False, legend: bool = False,
                     left: float = _LEFT, most: int = MAX_COLUMNS) -> int:
    """How many of `count` panels to put in a row: at most as many as fit a slide's width
    (`SLIDE_IN`) with panels narrowed no further than `MIN_PANEL_IN`, at most `most`, at least
    one; the rest wrap to more rows, which are balanced (4 panels where 3 fit: 2 + 2, not 3 + 1
    with a row left mostly empty)."""
    width = min(panel_width, MIN_PANEL_IN)
    fits = [n for n in range(1, min(count, most) + 1)
            if figure_width(n, width, colorbar=colorbar, legend=legend, left=left) <= SLIDE_IN]
    widest = max(fits, default=1)
    rows = math.ceil(max(count, 1) / widest)
    return math.ceil(max(count, 1) / rows)


@dataclass
class Panels:
    """One layout handed out by the Canvas: the figure, its grid of axes (row-major, shape
    (nrows, ncols)) and the colorbar axes when asked for."""

    figure: Figure
    axes: np.ndarray  # (nrows, ncols) of Axes
    colorbar_ax: Axes | None
    legend_at: tuple[float, float] | None = None  # figure fraction of the run legend's top left
    share_x: bool = False  # every panel has the same x axis (optimizer steps): label it once

    def flat(self, count: int) -> list[Axes]:
        """The first `count` axes, row-major; the rest of the grid is hidden."""
        return self.cells(range(count))

    def cells(self, indices) -> list[Axes]:
        """The axes at these row-major positions, in that order; the rest of the grid is hidden."""
        cells = list(self.axes.flat)
        wanted = list(indices)
        for k in set(range(len(cells))) - set(wanted):
            cells[k].set_visible(False)
        return [cells[k] for k in wanted]

    def label_outer_x(self) -> None:
        """With a shared x axis, only the lowest shown panel of each column keeps its x tick labels
        and x label: the rows above repeat them, and text is most of a figure's drawing time."""
        if not self.share_x:
            return
        nrows, ncols = self.axes.shape
        for col in range(ncols):
            shown = [r for r in range(nrows) if self.axes[r, col].get_visible()]
            for r in shown[:-1]:
                ax = self.axes[r, col]
                ax.xaxis.set_tick_params(labelbottom=False)
                ax.set_xlabel("")


class Canvas:
    """Hands out emptied axes of a reused figure per layout, and saves it as PNG."""

    def __init__(self, dpi: int = 100, compress_level: int = 1) -> None:
        self.dpi = dpi
        # zlib level 1: a report's PNGs are mostly flat colour, so they come out only slightly
        # larger than at the default 6 while encoding costs a fraction
        self.compress_level = compress_level
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
        share_x: bool = False,
    ) -> Panels:
        """Empty axes in a grid of `panel`-sized (inches) cells, with room on the right for a
        colorbar and/or the run legend; `margins` = (left, bottom) in inches, wider for long
        tick labels. `share_x`: every panel's x axis is the same quantity (optimizer steps), so
        the panels share one range and only the bottom row is labelled."""
        # as wide as asked where the figure fits a slide, narrower panels where it would not
        width = fitted_panel_width(ncols, panel[0], colorbar=colorbar, legend=legend, left=margins[0])
        panel = (width, panel[1])
        key = (nrows, ncols, panel, colorbar, legend, margins, share_x)
        panels = self._layouts.get(key)
        if panels is None:
            panels = self._layouts[key] = _new_panels(nrows, ncols, panel, colorbar, legend,
                                                      margins, share_x)
        else:
            for old in list(panels.figure.legends):
                old.remove()
            for ax in panels.axes.flat:
                empty_axes(ax)
            if panels.colorbar_ax is not None:
                panels.colorbar_ax.cla()  # one axis, and a colorbar sets up more state than it's worth
        panels.figure.suptitle("")
        return panels

    def save(self, panels: Panels, path: Path) -> Path:
        panels.label_outer_x()
        _pin_suptitle(panels.figure)
        panels.figure.savefig(path, format="png", dpi=self.dpi,
                              pil_kwargs={"compress_level": self.compress_level})
        return path

    def close(self) -> None:
        self._layouts.clear()


def _pin_suptitle(figure: Figure) -> None:
    """The figure's title a fixed distance below its top edge, inside the top margin, whatever the
    figure's height: matplotlib places it at 98% of the height, which on a figure of several rows
    is low enough to run into the first row's panel titles."""
    title = getattr(figure, "_suptitle", None)  # the Text that Figure.suptitle made, if any
    if title is not None:
        title.set(y=1 - _SUPTITLE_IN / figure.get_figheight(), va="top")


def empty_axes(ax: Axes) -> None:
    """`ax` as a fresh subplot would be, for everything the figure functions draw or set, but with
    its ticks kept (see the module docstring)."""
    for artist in (*ax.lines, *ax.collections, *ax.images, *ax.texts, *ax.patches):
        artist.remove()
    if ax.legend_ is not None:
        ax.legend_.remove()
    ax.set_visible(True)
    ax.set_axis_on()
    ax.set_title("")
    ax.set_xlabel("")
    ax.set_ylabel("")
    ax.grid(False)
    # Scales back to linear also put back the default locators and formatters, replacing fixed
    # ticks (family names, similarity run names) and log locators.
    ax.set_xscale("linear")
    ax.set_yscale("linear")
    ax.set_aspect("auto")
    for axis in (ax.xaxis, ax.yaxis):
        for tick in axis.get_major_ticks():
            tick.label1.set(rotation=0, fontsize=_TICK_FONTSIZE[axis.axis_name],
                            ha="center" if axis is ax.xaxis else "right")
    ax.xaxis.set_tick_params(labelbottom=True)
    # Limits: forget the last figure's data; increasing limits undo imshow's inverted y axis.
    # auto=None: with a shared x axis, the default (auto=False) would turn autoscaling off in
    # every sibling already emptied
    ax.set_xlim(0.0, 1.0, auto=None)
    ax.set_ylim(0.0, 1.0, auto=None)
    ax.dataLim.set_points(Bbox.null().get_points())
    ax.ignore_existing_data_limits = True
    ax.set_autoscale_on(True)


_TICK_FONTSIZE = {
    "x": matplotlib.rcParams["xtick.labelsize"],
    "y": matplotlib.rcParams["ytick.labelsize"],
}


def _new_panels(
    nrows: int, ncols: int, panel: tuple[float, float], colorbar: bool, legend: bool,
    margins: tuple[float, float], share_x: bool = False,
) -> Panels:
    pw, ph = panel
    left, bottom = margins
    extra = (_COLORBAR_IN if colorbar else 0.0) + (_LEGEND_IN if legend else 0.0)
    width = figure_width(ncols, pw, colorbar=colorbar, legend=legend, left=left)
    height = bottom + _TOP + nrows * ph + (nrows - 1) * _HSPACE_IN
    figure = Figure(figsize=(width, height))
    FigureCanvasAgg(figure)
    grid_right = 1 - (_RIGHT + extra) / width
    axes = figure.subplots(nrows, ncols, squeeze=False, sharex="all" if share_x else "none")
    if share_x:  # subplots hid the inner tick labels once; label_outer_x decides per figure
        for ax in axes.flat:
            ax.xaxis.set_tick_params(labelbottom=True)
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
    return Panels(figure, axes, colorbar_ax, legend_at, share_x)
