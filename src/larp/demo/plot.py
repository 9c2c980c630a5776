"""Line plots for the demo's report, drawn with matplotlib and written as PNG.

matplotlib is optional (``pip install "larp[plots]"``): the report checks :func:`matplotlib_available` and,
without it, renders everything but the plots and says how to get them. The figures are drawn on matplotlib's
Agg canvas directly (never through ``pyplot``), so no display and no global figure state are involved.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from larp.files import atomic_path

__all__ = ["PLOTS_NEED_MATPLOTLIB", "Series", "line_plot", "matplotlib_available"]

PLOTS_NEED_MATPLOTLIB = 'the plots need matplotlib: pip install "larp[plots]"'


def matplotlib_available() -> bool:
    """Whether matplotlib can be imported here."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


@dataclass(frozen=True)
class Series:
    """One line of a plot: ``y`` against ``x`` (equal lengths; NaNs leave gaps)."""

    name: str
    x: Sequence[float]
    y: Sequence[float]
    marker: bool = False  # a dot at every point (for short series, such as held-out scores)
    color: str | None = None  # any matplotlib colour; None: the next colour of the default cycle
    dashed: bool = False  # for reference lines (chance)


def line_plot(
    path: str | os.PathLike,
    series: Sequence[Series],
    *,
    title: str = "",
    xlabel: str = "",
    ylabel: str = "",
    ylim: tuple[float, float] | None = None,
    size: tuple[int, int] = (640, 400),
) -> Path:
    """Draw ``series`` on one pair of axes and write the figure as a PNG of ``size`` (width, height) pixels.

    ``ylim`` fixes the y range (fractions: (0, 1.05)); by default it fits the data. The file is written
    atomically. A legend is drawn when there is more than one series.
    Raises ImportError (with the install command) when matplotlib is missing.
    """
    for s in series:
        if len(s.x) != len(s.y):
            raise ValueError(f"series {s.name!r}: x and y differ in length ({len(s.x)} vs {len(s.y)})")
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ImportError(PLOTS_NEED_MATPLOTLIB) from error

    dpi = 100
    figure = Figure(figsize=(size[0] / dpi, size[1] / dpi), dpi=dpi, layout="constrained")
    canvas = FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for s in series:
        axes.plot(list(s.x), list(s.y), label=s.name, color=s.color, marker="o" if s.marker else None,
                  markersize=4, linestyle="--" if s.dashed else "-", linewidth=1.5)
    axes.set_title(title)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    if ylim is not None:
        axes.set_ylim(*ylim)
    axes.grid(True, color="0.9")
    if len(series) > 1:
        axes.legend(fontsize="small")
    path = Path(path)
    with atomic_path(path) as tmp:
        canvas.print_png(tmp)  # no bbox_inches="tight": the PNG keeps exactly `size` pixels
    return path
