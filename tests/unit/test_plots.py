"""PNG charts: they open, have the expected size, and their ink sits where the data is."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vlmkit.train.plots import (
    COLOURS,
    MARGINS,
    SIZE,
    nice_ticks,
    plotted_series,
    save_histogram,
    save_line_plot,
)


def pixels_of(path, colour) -> tuple[np.ndarray, np.ndarray]:
    """(ys, xs) of the pixels painted exactly `colour`."""
    image = np.asarray(Image.open(path).convert("RGB"))
    return np.nonzero((image == np.asarray(colour, dtype=np.uint8)).all(-1))


def test_nice_ticks():
    assert nice_ticks(0, 100) == [0, 20, 40, 60, 80, 100]
    assert nice_ticks(0.13, 0.97) == [0.2, 0.4, 0.6, 0.8]
    assert nice_ticks(2043, 2049, 3) == [2044, 2046, 2048]
    assert nice_ticks(5, 5) == [5]


def test_rising_line_goes_up_from_left_to_right(tmp_path):
    path = save_line_plot(
        {"train": [(step, 0.5 * step) for step in range(100)]}, tmp_path / "loss.png", "Loss", "step", "loss"
    )
    image = Image.open(path)
    assert image.format == "PNG" and image.size == SIZE
    ys, xs = pixels_of(path, COLOURS[0])
    line = xs < SIZE[0] - MARGINS[2] - 120  # leave out the legend's colour box at the top right
    ys, xs = ys[line], xs[line]
    left, right = ys[xs < xs.min() + 20].mean(), ys[xs > xs.max() - 20].mean()
    assert left - right > 200  # image rows grow downwards: the line ends far above where it starts


def test_falling_series_and_sparse_points_have_their_own_colours(tmp_path):
    path = save_line_plot(
        {"train": [(s, 3 - 0.02 * s) for s in range(100)], "eval": [(0, 3.1), (50, 2.2), (99, 1.2)]},
        tmp_path / "loss.png",
        "Loss",
        "step",
        "loss",
    )
    train_ys, train_xs = pixels_of(path, COLOURS[0])
    eval_ys, eval_xs = pixels_of(path, COLOURS[1])
    assert len(train_ys) and len(eval_ys)
    keep = train_xs < SIZE[0] - MARGINS[2] - 120
    train_ys, train_xs = train_ys[keep], train_xs[keep]
    assert train_ys[train_xs < train_xs.min() + 20].mean() < train_ys[train_xs > train_xs.max() - 20].mean()


def test_histogram_bars_sit_over_the_values(tmp_path):
    values = [100] * 50 + [900] * 10
    path = save_histogram(values, tmp_path / "h.png", "Token lengths", "tokens", vlines={"--max-length": 500})
    assert Image.open(path).size == SIZE
    ys, xs = pixels_of(path, COLOURS[0])
    left, right, bottom = MARGINS[0], SIZE[0] - MARGINS[2], SIZE[1] - MARGINS[3]
    plot_width = right - left
    low_bar = xs < left + plot_width * 0.2
    high_bar = xs > left + plot_width * 0.8
    assert low_bar.any() and high_bar.any() and (low_bar | high_bar).all()
    # 50 rows reach about five times as high as 10 rows.
    low_height, high_height = bottom - ys[low_bar].min(), bottom - ys[high_bar].min()
    assert 4 < low_height / high_height < 6
    mark_ys, mark_xs = pixels_of(path, (214, 39, 40))
    assert abs(np.median(mark_xs) - (left + plot_width / 2)) < plot_width * 0.05


def test_empty_and_constant_data_still_draw(tmp_path):
    left, top, right, bottom = MARGINS[0], MARGINS[1], SIZE[0] - MARGINS[2], SIZE[1] - MARGINS[3]
    empty = save_histogram([], tmp_path / "empty.png", "t", "x")
    assert Image.open(empty).size == SIZE and not len(pixels_of(empty, COLOURS[0])[0])  # no bar
    ys, xs = pixels_of(empty, (40, 40, 40))  # the ink of the axes, ticks and the "no data" note
    inside = (xs > left + 2) & (xs < right - 2) & (ys > top + 2) & (ys < bottom - 2)
    assert inside.any() and abs(np.median(xs[inside]) - (left + right) / 2) < 40  # the note, centred

    same = save_histogram([7, 7, 7], tmp_path / "same.png", "t", "x")
    ys, xs = pixels_of(same, COLOURS[0])  # one bar, in the middle of a padded range, up to the top
    assert len(xs) and abs(xs.mean() - (left + right) / 2) < (right - left) * 0.1
    assert ys.max() >= bottom - 2 and ys.min() < top + (bottom - top) * 0.2

    one = save_line_plot({"a": [(1, float("nan")), (2, 1.0)]}, tmp_path / "one.png", "t", "x", "y")
    assert plotted_series(one) == {"t": {"a": [[2.0, 1.0]]}}  # the NaN point is left out
    ys, xs = pixels_of(one, COLOURS[0])
    dot = xs < right - 120  # the point's dot, not the legend's colour box
    assert dot.any() and abs(xs[dot].mean() - (left + right) / 2) < 5 and abs(ys[dot].mean() - (top + bottom) / 2) < 5


def test_a_redraw_replaces_the_chart_and_a_failed_one_leaves_it_whole(tmp_path, monkeypatch):
    """The chart is written to a temporary file and renamed over the old one: a write that dies half-way
    (disk full, the run killed while training redraws loss.png) leaves the previous chart complete."""
    target = tmp_path / "sub" / "chart.png"
    save_line_plot({"a": [(0, 0), (1, 1)]}, target, "t", "x", "y")
    save_line_plot({"a": [(0, 1), (1, 0)]}, target, "t", "x", "y")  # replaces it
    assert [p.name for p in target.parent.iterdir()] == ["chart.png"]  # no temporary file left
    assert plotted_series(target) == {"t": {"a": [[0.0, 1.0], [1.0, 0.0]]}}
    before = target.read_bytes()

    def dies_half_way(image, fp, *args, **kwargs):
        Path(fp).write_bytes(before[: len(before) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", dies_half_way)
    with pytest.raises(OSError, match="No space left"):
        save_line_plot({"a": [(0, 5), (1, 6)]}, target, "t", "x", "y")
    monkeypatch.undo()
    assert target.read_bytes() == before
    with Image.open(target) as image:
        image.load()  # decodes completely: not a half-written file
    assert plotted_series(target) == {"t": {"a": [[0.0, 1.0], [1.0, 0.0]]}}


def test_panels_store_the_points_they_plot_and_draw_each_panel(tmp_path):
    from vlmkit.train.plots import save_line_panels

    panels = [
        ("loss", {"train loss": [(1, 2.0), (2, 1.5)], "eval loss": [(2, 1.7)]}),
        ("learning rate", {"learning rate": [(1, 1e-4), (2, 5e-5)]}),
        ("grad norm", {"grad norm": [(1, 3.0), (2, float("nan"))]}),  # non-finite points are left out
    ]
    path = save_line_panels(panels, tmp_path / "loss.png", xlabel="step")
    assert plotted_series(path) == {
        "loss": {"train loss": [[1.0, 2.0], [2.0, 1.5]], "eval loss": [[2.0, 1.7]]},
        "learning rate": {"learning rate": [[1.0, 1e-4], [2.0, 5e-5]]},
        "grad norm": {"grad norm": [[1.0, 3.0]]},
    }
    image = Image.open(path)
    height = image.height // 3
    assert image.width == SIZE[0] and height == SIZE[1] * 2 // 3
    ys, _ = pixels_of(path, COLOURS[0])
    assert all(((ys >= i * height) & (ys < (i + 1) * height)).any() for i in range(3))  # ink in every panel
