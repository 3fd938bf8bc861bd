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
