"""The four widgets docked together on a 1600 x 1000 screen: the window fits, nothing overlaps or is
squashed, before and after a result is shown."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from qtpy.QtCore import QPoint
from qtpy.QtWidgets import (
    QAbstractButton,
    QAbstractSpinBox,
    QApplication,
    QComboBox,
    QLabel,
    QLineEdit,
    QProgressBar,
    QScrollArea,
    QWidget,
)

from napari_pmt_iqa._widgets._common import SCROLL_AREA_NAME
from napari_pmt_iqa._widgets.charts import _PlotBase

PLUGIN = "napari-pmt-iqa"
WIDGETS = (
    "Score image quality",
    "Score an IQA data set",
    "Fine-tune a quality model",
    "Rate image quality",
)
SCREEN = (1600, 1000)
CONTROLS = (
    QLabel,
    QAbstractButton,
    QComboBox,
    QAbstractSpinBox,
    QLineEdit,
    QProgressBar,
    _PlotBase,
)


def _controls(widget: QWidget) -> list[QWidget]:
    """The visible controls of ``widget`` (not the parts inside a control, e.g. a spin box's edit)."""
    out = []
    for c in widget.findChildren(QWidget):
        if not isinstance(c, CONTROLS) or not c.isVisibleTo(widget):
            continue
        parent, inside = c.parentWidget(), False
        while parent is not None and parent is not widget:
            inside = inside or isinstance(parent, CONTROLS)
            parent = parent.parentWidget()
        if not inside:
            out.append(c)
    return out


def geometry_problems(widget: QWidget) -> list[str]:
    """Controls of ``widget`` squashed below their size hint or overlapping another control."""
    contents = widget.findChild(QScrollArea, SCROLL_AREA_NAME).widget()
    problems, rects = [], []
    for c in _controls(contents):
        if isinstance(c, QLabel) and not c.text():
            continue
        name = f"{type(c).__name__} {c.text()[:30] if hasattr(c, 'text') else ''!r}"
        need_h = (
            c.heightForWidth(c.width())
            if c.hasHeightForWidth()
            else max(c.minimumSizeHint().height(), c.sizeHint().height())
        )
        if c.height() < need_h:
            problems.append(f"{name} is {c.height()} px high, needs {need_h}")
        if c.width() < c.minimumSizeHint().width():
            problems.append(f"{name} is {c.width()} px wide, needs {c.minimumSizeHint().width()}")
        rects.append(
            (name, c.geometry().translated(c.parentWidget().mapTo(contents, QPoint(0, 0))))
        )
    for (n1, r1), (n2, r2) in itertools.combinations(rects, 2):
        if r1.intersects(r2):
            problems.append(f"{n1} overlaps {n2}")
    return problems


@pytest.fixture
def four(make_napari_viewer, tiny_checkpoint):
    viewer = make_napari_viewer(show=True)
    window = viewer.window._qt_window
    window.resize(*SCREEN)
    viewer.add_image(
        np.random.default_rng(0).integers(0, 255, (512, 512, 3), np.uint8), name="photo"
    )
    widgets = {name: viewer.window.add_plugin_dock_widget(PLUGIN, name)[1] for name in WIDGETS}
    scorer = widgets["Score image quality"]
    scorer.chooser.add_model(tiny_checkpoint)
    scorer.chooser.device_combo.setCurrentText("cpu")
    QApplication.processEvents()
    # not the Qt window itself: a fixture value outlives the viewer's teardown, and the window
    # holds napari's QtViewer (make_napari_viewer would report it as leaked)
    yield viewer, widgets


def _check(window, widgets, when):
    QApplication.processEvents()
    assert window.minimumSizeHint().height() <= SCREEN[1], when
    assert window.width() <= SCREEN[0] and window.height() <= SCREEN[1], (when, window.size())
    for name, w in widgets.items():
        assert w.findChild(QScrollArea, SCROLL_AREA_NAME) is not None, name
        assert w.isVisible() and w.height() > 0, (when, name)
        assert geometry_problems(w) == [], (when, name)


def test_four_widgets_fit_a_1600_x_1000_screen(qtbot, four):
    viewer, widgets = four
    window = viewer.window._qt_window
    _check(window, widgets, "docked")
    scorer = widgets["Score image quality"]
    scorer.score()
    qtbot.waitUntil(
        lambda: not scorer.is_running() and not scorer.overlays_pending(), timeout=30000
    )
    assert scorer.result is not None and scorer.class_plot.isVisibleTo(scorer)
    widgets["Rate image quality"].star_buttons[3].click()
    _check(window, widgets, "after a result")


def test_a_long_layer_name_does_not_push_a_widget_past_its_dock(qtbot, four):
    viewer, widgets = four
    viewer.add_image(
        np.zeros((64, 64), np.uint8),
        name="a very long layer name, as a microscope's export gives it: "
        "2026-11-30_slide-04_region-12_channel-DAPI_maximum-projection_stitched.ome.tif",
    )
    QApplication.processEvents()
    for name, w in widgets.items():
        area = w.findChild(QScrollArea, SCROLL_AREA_NAME)
        need = area.widget().minimumSizeHint().width()
        assert need <= area.viewport().width(), (name, need, area.viewport().width())


def test_a_long_intensity_rule_is_not_cut(qtbot, four):
    """A 16-bit image's rule takes three lines in the score widget: all of them are shown."""
    viewer, widgets = four
    rng = np.random.default_rng(0)
    layer = viewer.add_image(rng.integers(600, 51000, (256, 256)).astype(np.uint16), name="16-bit")
    scorer = widgets["Score image quality"]
    scorer.score(layer)
    qtbot.waitUntil(
        lambda: not scorer.is_running() and not scorer.overlays_pending(), timeout=30000
    )
    assert "percentile" in scorer.options.rule_label.text()
    _check(viewer.window._qt_window, widgets, "after a 16-bit score")
