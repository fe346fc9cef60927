"""PNG charts drawn with PIL alone: a histogram (token lengths) and line plots (loss curves).

    save_histogram(lengths, "token_lengths.png", "Token lengths", "tokens", vlines={"--max-length": 2048})
    save_line_plot({"train": [(1, 2.3), (2, 2.1)], "eval": [(2, 2.2)]}, "loss.png", "Loss", "step", "loss")
    save_line_panels([("loss", {"train loss": [...]}), ("learning rate", {...})], "loss.png", "step")

All write the file atomically (a temporary file renamed over the target), so a chart
being redrawn during training is never seen half-written. Non-finite values are left out.
Line plots also store the plotted points in the PNG as a `vlmkit-series` text chunk (JSON
{title: {series: [[x, y], ...]}}), so the data behind a chart can be read back.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

SIZE = (800, 480)
MARGINS = (72, 40, 24, 56)  # left, top, right, bottom: room for tick labels, title and axis labels
BACKGROUND = (255, 255, 255)
INK = (40, 40, 40)
GRID = (225, 225, 225)
COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75)]
MARK = (214, 39, 40)


def _font(size: int = 13) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)  # Pillow's bundled TrueType font (needs FreeType)
    except (TypeError, ImportError, OSError):
        return ImageFont.load_default()


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """About `count` round values (steps of 1, 2 or 5 times a power of ten) within [low, high]."""
    if not high > low:
        return [low]
    raw = (high - low) / count
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.ceil(low / step - 1e-9) * step
    digits = max(12, 3 - math.floor(math.log10(step)))  # tiny ranges (learning rates) keep their digits
    return [round(first + i * step, digits) for i in range(int((high - first) / step + 1e-9) + 1)]


def _label(value: float, ticks: list[float]) -> str:
    step = ticks[1] - ticks[0] if len(ticks) > 1 else abs(value) or 1
    if step < 1e-3:  # learning rates: 2.0e-05 reads better than 0.00002
        return f"{value:.1e}"
    decimals = max(0, -math.floor(math.log10(step)))
    return f"{value:,.{decimals}f}"


def _padded(low: float, high: float, pad: float = 0.0) -> tuple[float, float]:
    if high == low:
        spread = abs(low) * 0.1 or 1.0
        return low - spread, high + spread
    return low - pad * (high - low), high + pad * (high - low)


class _Chart:
    """A canvas with data ranges, axes, ticks and labels; `x(v)` and `y(v)` map data to pixels."""

    def __init__(self, x_range, y_range, title: str, xlabel: str, ylabel: str, size=SIZE):
        self.image = Image.new("RGB", size, BACKGROUND)
        self.draw = ImageDraw.Draw(self.image)
        self.font = _font()
        left, top, right, bottom = MARGINS
        self.box = (left, top, size[0] - right, size[1] - bottom)
        (self.x0, self.x1), (self.y0, self.y1) = x_range, y_range
        self._axes(title, xlabel, ylabel)

    def x(self, value: float) -> float:
        left, _, right, _ = self.box
        return left + (value - self.x0) / (self.x1 - self.x0) * (right - left)

    def y(self, value: float) -> float:
        _, top, _, bottom = self.box
        return bottom - (value - self.y0) / (self.y1 - self.y0) * (bottom - top)

    def _text(self, xy, text: str, anchor: str, fill=INK) -> None:
        self.draw.text(xy, text, fill=fill, font=self.font, anchor=anchor)

    def _axes(self, title: str, xlabel: str, ylabel: str) -> None:
        left, top, right, bottom = self.box
        xticks, yticks = nice_ticks(self.x0, self.x1), nice_ticks(self.y0, self.y1)
        for value in xticks:
            self.draw.line([(self.x(value), top), (self.x(value), bottom)], fill=GRID)
            self.draw.line([(self.x(value), bottom), (self.x(value), bottom + 4)], fill=INK)
            self._text((self.x(value), bottom + 7), _label(value, xticks), "mt")
        for value in yticks:
            self.draw.line([(left, self.y(value)), (right, self.y(value))], fill=GRID)
            self.draw.line([(left - 4, self.y(value)), (left, self.y(value))], fill=INK)
            self._text((left - 7, self.y(value)), _label(value, yticks), "rm")
        self.draw.rectangle(self.box, outline=INK)
        self._text(((left + right) / 2, top / 2), title, "mm")
        self._text(((left + right) / 2, self.image.height - 12), xlabel, "mb")
        if ylabel:  # drawn sideways on its own strip, then rotated into place
            width = int(self.draw.textlength(ylabel, font=self.font)) + 4
            strip = Image.new("RGB", (width, 18), BACKGROUND)
            ImageDraw.Draw(strip).text((width / 2, 9), ylabel, fill=INK, font=self.font, anchor="mm")
            strip = strip.rotate(90, expand=True)
            self.image.paste(strip, (4, int((top + bottom - strip.height) / 2)))

    def vline(self, value: float, label: str) -> None:
        """A dashed vertical marker (e.g. --max-length) labelled at the top of the plot."""
        _, top, _, bottom = self.box
        x = self.x(value)
        for start in range(top, bottom, 10):
            self.draw.line([(x, start), (x, min(start + 5, bottom))], fill=MARK, width=2)
        self._text((x - 4, top + 4), label, "rt", fill=MARK)

    def save(self, path: str | Path) -> Path:
        return _save_png(self.image, path)


def _save_png(image: Image.Image, path: str | Path, series: dict | None = None) -> Path:
    from PIL.PngImagePlugin import PngInfo

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    info = None
    if series is not None:
        info = PngInfo()
        info.add_text("vlmkit-series", json.dumps(series))
    try:
        image.save(tmp, format="PNG", pnginfo=info)
        os.replace(tmp, path)
    except BaseException:  # a full disk, an interrupt: no half-written temporary file left behind
        tmp.unlink(missing_ok=True)
        raise
    return path


def plotted_series(path: str | Path) -> dict[str, dict[str, list[list[float]]]]:
    """The points a line plot drew, as stored in it: {title: {series name: [[x, y], ...]}}."""
    with Image.open(path, formats=["PNG"]) as image:  # our own plot; images from users go through vlmkit.media
        return json.loads(image.text.get("vlmkit-series", "{}"))


def save_histogram(
    values,
    path: str | Path,
    title: str,
    xlabel: str,
    ylabel: str = "rows",
    bins: int = 40,
    vlines: dict[str, float] | None = None,
) -> Path:
    """A histogram of `values` (at most `bins` bars; fewer when there are fewer distinct integer
    values), with a dashed labelled line at each of `vlines` ({label: x}). Returns the path."""
    data = np.asarray([v for v in values if math.isfinite(v)], dtype=float)
    vlines = vlines or {}
    low, high = (data.min(), data.max()) if data.size else (0.0, 1.0)
    if data.size and np.all(data == np.round(data)):
        bins = max(1, min(bins, int(high - low) + 1))
    low, high = _padded(float(low), float(high)) if high == low else (float(low), float(high))
    counts, edges = np.histogram(data, bins=bins, range=(low, high))
    x_low, x_high = min([low, *vlines.values()]), max([high, *vlines.values()])
    x_range = _padded(x_low, x_high, 0.02)
    chart = _Chart(x_range, (0, max(1, int(counts.max(initial=0))) * 1.08), title, xlabel, ylabel)
    for count, left, right in zip(counts, edges[:-1], edges[1:], strict=True):
        if count:
            box = (chart.x(left) + 1, chart.y(count), max(chart.x(right) - 1, chart.x(left) + 1), chart.y(0))
            chart.draw.rectangle(box, fill=COLOURS[0])
    for label, value in vlines.items():
        chart.vline(value, f"{label} {value:g}")
    if not data.size:
        chart._text(((chart.box[0] + chart.box[2]) / 2, (chart.box[1] + chart.box[3]) / 2), "no data", "mm")
    return chart.save(path)


def _clean(series: dict[str, list[tuple[float, float]]]) -> dict[str, list[tuple[float, float]]]:
    return {
        name: sorted((float(x), float(y)) for x, y in points if math.isfinite(x) and math.isfinite(y))
        for name, points in series.items()
    }


def _line_chart(clean, title: str, xlabel: str, ylabel: str, size=SIZE) -> _Chart:
    xs = [x for points in clean.values() for x, _ in points] or [0.0, 1.0]
    ys = [y for points in clean.values() for _, y in points] or [0.0, 1.0]
    chart = _Chart(_padded(min(xs), max(xs)), _padded(min(ys), max(ys), 0.05), title, xlabel, ylabel, size)
    right, top = chart.box[2], chart.box[1]
    for i, (name, points) in enumerate(clean.items()):
        colour = COLOURS[i % len(COLOURS)]
        pixels = [(chart.x(x), chart.y(y)) for x, y in points]
        if len(pixels) > 1:
            chart.draw.line(pixels, fill=colour, width=2, joint="curve")
        if len(pixels) <= 50:
            for px, py in pixels:
                chart.draw.ellipse((px - 3, py - 3, px + 3, py + 3), fill=colour)
        legend_y = top + 10 + 18 * i
        chart.draw.rectangle((right - 110, legend_y - 5, right - 100, legend_y + 5), fill=colour)
        chart._text((right - 94, legend_y), name, "lm")
    return chart


def save_line_plot(
    series: dict[str, list[tuple[float, float]]], path: str | Path, title: str, xlabel: str, ylabel: str
) -> Path:
    """One line per series (e.g. {"train": [(step, loss), ...], "eval": [...]}), each in its own colour,
    with a legend; points are drawn as dots too when a series has few of them. Returns the path."""
    clean = _clean(series)
    chart = _line_chart(clean, title, xlabel, ylabel)
    return _save_png(chart.image, path, {title: {name: [list(p) for p in pts] for name, pts in clean.items()}})


def save_line_panels(
    panels: list[tuple[str, dict[str, list[tuple[float, float]]]]], path: str | Path, xlabel: str
) -> Path:
    """Line plots stacked top to bottom, one per (title, series) of `panels` (e.g. loss, learning rate,
    grad norm), sharing `xlabel`. Returns the path."""
    height = SIZE[1] * 2 // 3
    image = Image.new("RGB", (SIZE[0], height * max(len(panels), 1)), BACKGROUND)
    stored = {}
    for i, (title, series) in enumerate(panels):
        clean = _clean(series)
        stored[title] = {name: [list(p) for p in pts] for name, pts in clean.items()}
        image.paste(_line_chart(clean, title, xlabel, title, size=(SIZE[0], height)).image, (0, i * height))
    return _save_png(image, path, stored)
