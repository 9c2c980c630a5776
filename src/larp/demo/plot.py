"""Line plots rendered straight to PNG, with numpy and zlib only.

The demo's report must be written on a fresh install, where matplotlib and Pillow are not dependencies
(DESIGN.md). A line chart needs little: axes with "nice" ticks, polylines, a 5x7 bitmap font for the
labels, and a PNG encoder (one IDAT chunk of unfiltered rows).
"""

from __future__ import annotations

import math
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["Series", "encode_png", "write_png", "line_plot", "draw_text"]

# 5x7 glyphs, one 5-bit row per entry, top row first (bit 4 = leftmost column). Lower case is drawn as
# upper case; characters missing here are drawn as a hollow box.
_GLYPHS: dict[str, tuple[int, ...]] = {
    "0": (0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E), "1": (0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E),
    "2": (0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F), "3": (0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E),
    "4": (0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02), "5": (0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E),
    "6": (0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E), "7": (0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08),
    "8": (0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E), "9": (0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C),
    "A": (0x0E, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11), "B": (0x1E, 0x11, 0x11, 0x1E, 0x11, 0x11, 0x1E),
    "C": (0x0E, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0E), "D": (0x1C, 0x12, 0x11, 0x11, 0x11, 0x12, 0x1C),
    "E": (0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x1F), "F": (0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x10),
    "G": (0x0E, 0x11, 0x10, 0x17, 0x11, 0x11, 0x0F), "H": (0x11, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11),
    "I": (0x0E, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E), "J": (0x07, 0x02, 0x02, 0x02, 0x02, 0x12, 0x0C),
    "K": (0x11, 0x12, 0x14, 0x18, 0x14, 0x12, 0x11), "L": (0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1F),
    "M": (0x11, 0x1B, 0x15, 0x15, 0x11, 0x11, 0x11), "N": (0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11),
    "O": (0x0E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E), "P": (0x1E, 0x11, 0x11, 0x1E, 0x10, 0x10, 0x10),
    "Q": (0x0E, 0x11, 0x11, 0x11, 0x15, 0x12, 0x0D), "R": (0x1E, 0x11, 0x11, 0x1E, 0x14, 0x12, 0x11),
    "S": (0x0F, 0x10, 0x10, 0x0E, 0x01, 0x01, 0x1E), "T": (0x1F, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04),
    "U": (0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E), "V": (0x11, 0x11, 0x11, 0x11, 0x11, 0x0A, 0x04),
    "W": (0x11, 0x11, 0x11, 0x15, 0x15, 0x15, 0x0A), "X": (0x11, 0x11, 0x0A, 0x04, 0x0A, 0x11, 0x11),
    "Y": (0x11, 0x11, 0x11, 0x0A, 0x04, 0x04, 0x04), "Z": (0x1F, 0x01, 0x02, 0x04, 0x08, 0x10, 0x1F),
    " ": (0, 0, 0, 0, 0, 0, 0), ".": (0, 0, 0, 0, 0, 0x0C, 0x0C), ",": (0, 0, 0, 0, 0x0C, 0x04, 0x08),
    "-": (0, 0, 0, 0x1F, 0, 0, 0), "+": (0, 0x04, 0x04, 0x1F, 0x04, 0x04, 0), ":": (0, 0x0C, 0x0C, 0, 0x0C, 0x0C, 0),
    "/": (0, 0x01, 0x02, 0x04, 0x08, 0x10, 0), "(": (0x02, 0x04, 0x08, 0x08, 0x08, 0x04, 0x02),
    ")": (0x08, 0x04, 0x02, 0x02, 0x02, 0x04, 0x08), "%": (0x18, 0x19, 0x02, 0x04, 0x08, 0x13, 0x03),
    "=": (0, 0, 0x1F, 0, 0x1F, 0, 0), "_": (0, 0, 0, 0, 0, 0, 0x1F),
}
_BOX = (0x1F, 0x11, 0x11, 0x11, 0x11, 0x11, 0x1F)
_GLYPH_W, _GLYPH_H, _ADVANCE = 5, 7, 6

# A colour-blind-safe cycle (Okabe-Ito), then grey for the axes.
PALETTE: tuple[tuple[int, int, int], ...] = (
    (0, 114, 178), (213, 94, 0), (0, 158, 115), (204, 121, 167), (230, 159, 0), (86, 180, 233), (0, 0, 0),
)
_AXIS = (90, 90, 90)
_GRID = (228, 228, 228)


# ------------------------------------------------------------------------------------------ PNG
def encode_png(image: np.ndarray) -> bytes:
    """(h, w, 3) uint8 RGB -> the bytes of an 8-bit truecolour PNG."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an (h, w, 3) uint8 image, got {image.dtype} {tuple(image.shape)}")
    h, w, _ = image.shape

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    rows = np.concatenate([np.zeros((h, 1), np.uint8), image.reshape(h, w * 3)], axis=1)  # filter byte 0 per row
    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows.tobytes(), 9)) + chunk(b"IEND", b"")


def write_png(path: str | Path, image: np.ndarray) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode_png(image))
    return path


# ------------------------------------------------------------------------------------------ drawing
def text_width(text: str, scale: int = 1) -> int:
    return max(len(text) * _ADVANCE - 1, 0) * scale


def draw_text(canvas: np.ndarray, text: str, x: int, y: int, color=(0, 0, 0), scale: int = 1) -> None:
    """Draw ``text`` with its top-left corner at (x, y); pixels outside the canvas are dropped."""
    h, w, _ = canvas.shape
    for i, char in enumerate(text):
        rows = _GLYPHS.get(char.upper(), _BOX)
        for r, bits in enumerate(rows):
            for c in range(_GLYPH_W):
                if bits >> (_GLYPH_W - 1 - c) & 1:
                    x0, y0 = x + (i * _ADVANCE + c) * scale, y + r * scale
                    if 0 <= x0 and x0 + scale <= w and 0 <= y0 and y0 + scale <= h:
                        canvas[y0 : y0 + scale, x0 : x0 + scale] = color


def _draw_polyline(canvas: np.ndarray, xs: np.ndarray, ys: np.ndarray, color, width: int = 2) -> None:
    h, w, _ = canvas.shape
    for x0, y0, x1, y1 in zip(xs[:-1], ys[:-1], xs[1:], ys[1:]):
        n = int(max(abs(x1 - x0), abs(y1 - y0))) + 1
        px = np.rint(np.linspace(x0, x1, n)).astype(int)
        py = np.rint(np.linspace(y0, y1, n)).astype(int)
        for dx in range(width):
            for dy in range(width):
                qx, qy = px + dx - width // 2, py + dy - width // 2
                keep = (qx >= 0) & (qx < w) & (qy >= 0) & (qy < h)
                canvas[qy[keep], qx[keep]] = color
    if len(xs) == 1:  # a single point: a small square
        x, y = int(round(xs[0])), int(round(ys[0]))
        canvas[max(y - 2, 0) : y + 3, max(x - 2, 0) : x + 3] = color


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """About ``count`` round tick values covering [lo, hi] (steps of 1, 2 or 5 times a power of ten)."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"tick range must be finite, got [{lo}, {hi}]")
    if hi <= lo:
        hi = lo + (abs(lo) or 1.0)
    raw = (hi - lo) / max(count, 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.floor(lo / step) * step
    ticks, value = [], first
    while value <= hi + step * 1e-9:
        ticks.append(round(value, 12))
        value += step
    if ticks[-1] < hi:
        ticks.append(round(value, 12))
    return ticks


def _tick_label(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 1e5 or abs(value) < 1e-3:
        return f"{value:.0e}".replace("e+0", "e").replace("e-0", "e-")
    return f"{value:g}"


@dataclass
class Series:
    """One line of a plot: y against x, drawn in the palette's next colour unless given one."""

    name: str
    x: Sequence[float]
    y: Sequence[float]
    color: tuple[int, int, int] | None = None
    marker: bool = False  # draw a dot at every point (for short series)


def line_plot(
    series: Sequence[Series],
    *,
    title: str = "",
    xlabel: str = "",
    ylabel: str = "",
    size: tuple[int, int] = (640, 400),
    scale: int = 2,
) -> np.ndarray:
    """Render line series to an (h, w, 3) uint8 image: axes with round ticks, a light grid, a legend.

    Non-finite points are dropped. Series with no finite point are listed in the legend but not drawn.
    """
    width, height = size
    canvas = np.full((height, width, 3), 255, np.uint8)
    glyph_h = _GLYPH_H * scale
    points = []
    for s in series:
        x, y = np.asarray(s.x, np.float64), np.asarray(s.y, np.float64)
        if x.shape != y.shape:
            raise ValueError(f"series {s.name!r}: x and y differ in length ({x.size} vs {y.size})")
        keep = np.isfinite(x) & np.isfinite(y)
        points.append((x[keep], y[keep]))
    all_x = np.concatenate([p[0] for p in points]) if points else np.zeros(0)
    all_y = np.concatenate([p[1] for p in points]) if points else np.zeros(0)
    if all_x.size == 0:
        all_x, all_y = np.array([0.0, 1.0]), np.array([0.0, 1.0])
    xt = nice_ticks(float(all_x.min()), float(all_x.max()))
    yt = nice_ticks(float(all_y.min()), float(all_y.max()))

    ytick_w = max(text_width(_tick_label(v), scale) for v in yt)
    left = ytick_w + 12 + (glyph_h + 8 if ylabel else 0)
    top = glyph_h + 16 if title else 10
    right = width - max(16, text_width(_tick_label(xt[-1]), scale) // 2 + 4)
    bottom = height - (2 * glyph_h + 22 if xlabel else glyph_h + 14)
    if right - left < 40 or bottom - top < 40:
        raise ValueError(f"plot size {size} is too small for its labels")

    def sx(v):
        return left + (np.asarray(v) - xt[0]) / (xt[-1] - xt[0]) * (right - left)

    def sy(v):
        return bottom - (np.asarray(v) - yt[0]) / (yt[-1] - yt[0]) * (bottom - top)

    for v in yt:  # grid and y ticks
        y = int(round(float(sy(v))))
        canvas[y, left:right] = _GRID
        label = _tick_label(v)
        draw_text(canvas, label, left - 8 - text_width(label, scale), y - glyph_h // 2, _AXIS, scale)
    for v in xt:
        x = int(round(float(sx(v))))
        canvas[top:bottom, x] = _GRID
        label = _tick_label(v)
        draw_text(canvas, label, x - text_width(label, scale) // 2, bottom + 6, _AXIS, scale)
    canvas[top:bottom + 1, left] = _AXIS
    canvas[bottom, left:right + 1] = _AXIS

    colors = [s.color or PALETTE[i % len(PALETTE)] for i, s in enumerate(series)]
    for s, color, (x, y) in zip(series, colors, points):
        if x.size:
            _draw_polyline(canvas, sx(x), sy(y), color)
            if s.marker:
                for px, py in zip(sx(x), sy(y)):
                    _draw_polyline(canvas, np.array([px]), np.array([py]), color)
    legend_y = top + 6
    if len(series) > 1:  # the legend sits on a white box, over the lines
        box_w = max(text_width(s.name, scale) for s in series) + 34
        canvas[top + 2 : top + 8 + len(series) * (glyph_h + 6), right - box_w - 4 : right - 2] = 255
    for s, color in zip(series, colors):
        if len(series) > 1 or s.name:
            lx = right - text_width(s.name, scale) - 8
            canvas[legend_y + glyph_h // 2 - 2 : legend_y + glyph_h // 2 + 2, lx - 22 : lx - 6] = color
            draw_text(canvas, s.name, lx, legend_y, (40, 40, 40), scale)
            legend_y += glyph_h + 6

    if title:
        draw_text(canvas, title, (width - text_width(title, scale)) // 2, 6, (0, 0, 0), scale)
    if xlabel:
        draw_text(canvas, xlabel, (left + right - text_width(xlabel, scale)) // 2, height - glyph_h - 6, _AXIS, scale)
    if ylabel:  # drawn vertically: render horizontally, then rotate a quarter turn
        strip = np.full((glyph_h, text_width(ylabel, scale), 3), 255, np.uint8)
        draw_text(strip, ylabel, 0, 0, _AXIS, scale)
        strip = np.rot90(strip)
        y0 = max((top + bottom - strip.shape[0]) // 2, 0)
        h = min(strip.shape[0], height - y0)
        canvas[y0 : y0 + h, 4 : 4 + strip.shape[1]] = strip[:h]
    return canvas
