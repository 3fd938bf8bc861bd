"""Fixtures shared by the widget tests."""

import time

import pytest


def wait_until_idle(widget, timeout: float = 20.0) -> None:
    """Cancel the widget's job and process events until its worker (and any file opening) ended."""
    from qtpy.QtWidgets import QApplication

    def busy() -> bool:
        opening = getattr(widget, "is_opening", None)
        return widget.is_running() or bool(opening and opening())

    if not busy():
        return
    widget.cancel()
    t0 = time.perf_counter()
    while busy() and time.perf_counter() - t0 < timeout:
        QApplication.processEvents()
        time.sleep(0.01)
    assert not busy(), f"a worker of the {type(widget).__name__} is still running"


@pytest.fixture
def docked_widget(make_napari_viewer, tiny_checkpoint):
    """``docked_widget(title)``: a new viewer with the plugin's widget ``title`` docked, set to the
    tiny test model on the CPU; returns ``(viewer, widget)``. Every widget's job is cancelled and
    waited for before the viewer closes."""
    made = []

    def dock(title: str):
        viewer = make_napari_viewer()
        _, widget = viewer.window.add_plugin_dock_widget("napari-pmt-iqa", title)
        widget.chooser.add_model(tiny_checkpoint)
        widget.chooser.device_combo.setCurrentText("cpu")
        made.append(widget)
        return viewer, widget

    yield dock
    for widget in made:
        wait_until_idle(widget)
