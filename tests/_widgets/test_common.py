"""Pieces shared by the widgets: messages for the viewer, the dock's scroll area, job state."""

from __future__ import annotations

import logging

import pytest
from qtpy.QtWidgets import QLabel, QPushButton, QScrollArea, QVBoxLayout, QWidget

from napari_pmt_iqa._widgets._common import (
    SCROLL_AREA_NAME,
    JobState,
    error_text,
    for_viewer,
    make_scrollable,
)


def test_error_text_for_the_viewer(caplog):
    from napari_pmt_iqa.devices import DeviceError
    from napari_pmt_iqa.imaging import ImageError

    two = ImageError(
        "The last axis of shape (5, 5, 2) has 2 entries: two channels cannot be shown as colour. "
        "Select one channel (e.g. image[..., 0]), or pass rgb=False to score the array as a stack "
        "of 2D planes, or channel_axis= to name the colour axis."
    )
    assert "rgb=" not in error_text(two) and "Split Stack" in error_text(two)
    assert "Device list" in error_text(DeviceError("'cuda' was asked for, but no GPU."))
    missing = FileNotFoundError(2, "No such file or directory", "/data/x.png")
    assert error_text(missing) == (
        "Could not read /data/x.png: No such file or directory. Check the path in the widget."
    )
    folder = IsADirectoryError(21, "a folder, not a file", "/data/out")
    assert error_text(folder) == "/data/out is a folder, not a file: give a file name in it."
    with caplog.at_level(logging.ERROR, logger="napari_pmt_iqa"):
        text = error_text(KeyError("frame 3"))
    assert "Unexpected error (KeyError)" in text and "in the log" in text
    assert "frame 3" not in text  # the Python detail goes to the log only
    assert "frame 3" in caplog.text
    assert for_viewer("plain text") == "plain text"


def test_make_scrollable_keeps_the_widget_and_its_children(qtbot):
    w = QWidget()
    qtbot.addWidget(w)
    lay = QVBoxLayout(w)
    label, button = QLabel("a label " * 20), QPushButton("Go")
    label.setWordWrap(True)
    lay.addWidget(label)
    lay.addWidget(button)
    area = make_scrollable(w, min_height=120)
    assert w.findChild(QScrollArea, SCROLL_AREA_NAME) is area and make_scrollable(w) is area
    assert label.window() is w and button.parentWidget() is area.widget()
    assert area.minimumHeight() == 120 and w.minimumSizeHint().height() <= 130
    w.resize(300, 130)
    w.show()
    qtbot.waitExposed(w)
    # the contents keep their preferred height and scroll instead of being squashed
    assert button.height() >= button.sizeHint().height()
    assert area.widget().height() >= area.widget().sizeHint().height()
    with pytest.raises(ValueError, match="needs a widget with a layout"):
        make_scrollable(QWidget())


def test_job_state_counts_napari_s_quit_as_cancel():
    class Worker:
        abort_requested = False

    state, worker = JobState(), Worker()
    state.watch(worker)
    assert not state.cancelled()
    worker.abort_requested = True
    assert state.cancelled() and "napari" in state.reason
