"""The QPainter charts: texts that fit their widget and never overlap, clicks that pick a point."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from qtpy.QtGui import QFontMetricsF

from napari_pmt_iqa._widgets.charts import BarPlot, CurvesPlot, LinePlot, ScatterPlot


@pytest.mark.parametrize("width", [170, 260, 420])
@pytest.mark.parametrize("cls", [ScatterPlot, LinePlot, BarPlot, CurvesPlot])
def test_axis_texts_fit_and_do_not_overlap(qtbot, cls, width):
    plot = cls()
    qtbot.addWidget(plot)
    plot.title = "predicted (quality (0-100; LIVE-C MOS scale)) vs MOS, click a point"
    plot.x_label = "MOS (LIVE-C, 0-100)"
    if isinstance(plot, ScatterPlot):
        plot.set_points([3.2, 50.0, 97.5], [10.0, 55.5, 80.25])
    elif isinstance(plot, (LinePlot, BarPlot)):
        plot.set_values(np.linspace(0.0, 1.0, 10))
    plot.resize(width, plot.height())
    plot.grab()  # paints once (sets the value ranges)
    layout = plot.text_layout()
    fm = QFontMetricsF(plot._label_font())
    for name, (rect, _, text) in layout.items():
        assert rect.left() >= 0 and rect.right() <= width, name  # not cut at the widget's edges
        if text:
            assert fm.horizontalAdvance(text) <= rect.width() + 1, (name, text)
    shown = [(n, r) for n, (r, _, t) in layout.items() if t]
    for (n1, r1), (n2, r2) in itertools.combinations(shown, 2):
        assert not r1.intersects(r2), (n1, n2)
    assert "…" in layout["title"][2] or width >= 420  # a long title is elided, not cut


def test_units_are_not_repeated_in_the_scatter_axis_label(qtbot):
    """The data-set widget labels the x axis with the score scale's name once."""
    from napari_pmt_iqa.data.datasets import LIVEC_SCALE

    plot = ScatterPlot()
    qtbot.addWidget(plot)
    plot.x_label = LIVEC_SCALE.name
    assert plot.x_label.count("MOS") == 1


def test_bar_plot_labels_the_classes(qtbot):
    plot = BarPlot()
    qtbot.addWidget(plot)
    plot.set_values([0.1, 0.2, 0.7])
    plot.resize(300, plot.height())
    plot.grab()
    layout = plot.text_layout()
    assert layout["x_min"][2] == "class 1" and layout["x_max"][2] == "class 3"


def test_scatter_click_selects_the_nearest_point(qtbot):
    plot = ScatterPlot()
    qtbot.addWidget(plot)
    plot.resize(300, 220)
    plot.set_points([0.0, 1.0, 2.0], [0.0, 2.0, 1.0])
    q = plot.point_position(2)
    assert plot.point_at(q.x(), q.y()) == 2
    assert plot.point_at(q.x() + 100, q.y() + 100) is None


def test_curves_are_polylines_broken_at_nan_and_painted_without_error(qtbot):
    plot = CurvesPlot()
    qtbot.addWidget(plot)
    plot.resize(400, 170)
    plot.clear(epochs=4)
    for i, y in enumerate([1.0, 0.8, float("nan"), 0.6, 0.5, 0.4]):
        plot.add("batch loss", i * 0.5, y)
    plot.add("val SRCC", 1, 2.0)  # beyond the right axis: clipped to its top
    assert plot.total_points() == 7
    runs = plot.polylines("batch loss", (0.0, 1.0))
    assert [len(r) for r in runs] == [2, 3]
    a = plot._area()
    assert runs[0][0].x() == pytest.approx(a.left()) and runs[0][0].y() == pytest.approx(a.top())
    (top,) = plot.polylines("val SRCC", (-1.0, 1.0))
    assert top[0].y() == pytest.approx(a.top())
    assert plot.polylines("train loss", (0.0, 1.0)) == []
    plot.grab()  # paints every series


def test_progress_repaints_the_chart_only_when_it_gained_points(qtbot, monkeypatch):
    from napari_pmt_iqa._widgets.finetune_progress import RunView
    from napari_pmt_iqa.training.events import BatchEnd
    from napari_pmt_iqa.training.finetune_config import Refitting

    prog = RunView()
    qtbot.addWidget(prog)
    calls = []
    monkeypatch.setattr(prog.plot, "update", lambda *a: calls.append(1))
    prog.on_events([Refitting(1, 10, 3, 20)], show_progress=True)
    assert calls == []  # the bars moved, the chart did not change
    prog.on_events([BatchEnd(0, 0, 5, 1.0, 1.0, 0.1)], show_progress=True)
    assert calls == [1]


@pytest.mark.parametrize("width", [260, 420])
def test_the_curves_legend_sits_above_the_plot_and_epochs_are_whole(qtbot, width):
    plot = CurvesPlot()
    qtbot.addWidget(plot)
    plot.resize(width, plot.height())
    plot.clear(epochs=3)
    plot.add("train loss", 1, 0.5)
    plot.grab()
    a = plot._area()
    fm = QFontMetricsF(plot._label_font())
    title = plot.text_layout()["title"][0]
    entries = plot.legend_layout()
    assert list(entries) == ["batch loss", "train loss", "val SRCC", "val PLCC"]
    for name, (x, y) in entries.items():
        right = x + 15 + fm.horizontalAdvance(name)
        assert right <= width and y - fm.ascent() >= title.bottom() - 1, name  # under the title
        assert y + fm.descent() <= a.top(), name  # above the curves, never over them
    layout = plot.text_layout()
    assert (layout["x_min"][2], layout["x_max"][2]) == ("0", "3")


def test_scatter_points_at_the_ends_lie_inside_the_plot(qtbot):
    plot = ScatterPlot()
    qtbot.addWidget(plot)
    plot.resize(300, 220)
    plot.set_points([0.0, 50.0, 100.0], [10.0, 20.0, 90.0])
    a = plot._area()
    for i in (0, 2):
        q = plot.point_position(i)
        assert a.left() + 3 <= q.x() <= a.right() - 3 and a.top() + 3 <= q.y() <= a.bottom() - 3
