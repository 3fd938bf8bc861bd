"""The data-set widget: load a generic CSV data set, score it, plot predicted vs MOS, jump to images."""

import time

import numpy as np
import pytest

from napari_pmt_iqa._widgets.dataset_widget import DATASET_KEY

WIDGET = "Score an IQA data set"


def make_dataset(root, n=6, shape=(232, 240)):
    from PIL import Image

    from napari_pmt_iqa._sample_data import distort

    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (*shape, 3), dtype=np.uint8)
    lines = ["image,mos"]
    for k in range(n):
        img = distort(base, "blur", 0.7 * k)
        Image.fromarray(img).save(root / f"img{k}.png")
        lines.append(f"img{k}.png,{90 - 12 * k}")
    (root / "mos.csv").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture
def viewer_widget(make_napari_viewer, tiny_checkpoint):
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-pmt-iqa", WIDGET)
    widget.chooser.add_model(tiny_checkpoint)
    widget.chooser.device_combo.setCurrentText("cpu")
    yield viewer, widget
    t0 = time.perf_counter()
    widget.cancel()
    from qtpy.QtWidgets import QApplication

    while widget.is_running() and time.perf_counter() - t0 < 20:
        QApplication.processEvents()
        time.sleep(0.01)
    assert not widget.is_running(), "a worker is still running"


def wait(qtbot, widget, timeout=30000):
    qtbot.waitUntil(lambda: not widget.is_running(), timeout=timeout)


@pytest.mark.parametrize("as_stack", [False, True])
def test_load_score_plot_and_jump(qtbot, viewer_widget, tmp_path, as_stack):
    viewer, widget = viewer_widget
    root = make_dataset(tmp_path)
    widget.limit_spin.setValue(5)  # a limit below the data set's size
    widget.stack_check.setChecked(as_stack)
    widget.load(str(root))
    wait(qtbot, widget)
    assert widget.last_error == ""
    assert len(widget.samples) == 5 and "5 of 6" in widget.status.text()
    if as_stack:
        assert widget.stack_layer is not None and widget.stack_layer.data.shape[0] == 5
        assert widget.stack_layer.metadata[DATASET_KEY]["mos"] == [90, 78, 66, 54, 42]
    else:
        assert len(widget.layers) == 5 and widget.layers[2].metadata[DATASET_KEY]["mos"] == 66
    widget.score_all()
    wait(qtbot, widget)
    assert widget.last_error == "", widget.last_error
    assert np.isfinite(widget.pred).all() and widget.pred.size == 5
    assert set(widget.metrics) >= {"srcc", "plcc"} and widget.metrics["n"] == 5
    assert "SRCC" in widget.metrics_label.text() and "PLCC" in widget.metrics_label.text()
    np.testing.assert_array_equal(widget.plot.x, widget.mos)
    # click on point 3 (its position on the plot) -> jump to image 3
    widget.plot.resize(300, 220)
    q = widget.plot.point_position(3)
    assert widget.plot.point_at(q.x(), q.y()) == 3
    widget.plot.clicked.emit(3)
    if as_stack:
        assert viewer.dims.current_step[0] == 3
    else:
        assert viewer.layers.selection.active == widget.layers[3]
        assert [lay.visible for lay in widget.layers] == [False, False, False, True, False]


def test_cancel_scoring_and_bad_folder(qtbot, viewer_widget, tmp_path):
    viewer, widget = viewer_widget
    # a folder that is not a data set: a message, no traceback
    empty = tmp_path / "empty"
    empty.mkdir()
    widget.load(str(empty))
    wait(qtbot, widget)
    assert "Could not load" in widget.last_error
    root = make_dataset(tmp_path, n=4, shape=(900, 900))
    widget.load(str(root))
    wait(qtbot, widget)
    widget.chooser.memory_spin.setValue(16)  # many tiles per image: slow enough to cancel
    widget.score_all()
    qtbot.waitUntil(lambda: widget.state.done > 0.05, timeout=20000)
    widget.cancel_button.click()
    wait(qtbot, widget)
    assert "cancelled" in widget.last_error.lower()
    assert np.isnan(widget.pred).any()


def test_reader_opens_dataset_in_viewer(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    root = make_dataset(tmp_path, n=3, shape=(64, 80))
    layers = viewer.open(str(root), plugin="napari-pmt-iqa")
    assert len(layers) == 3
    assert [lay.metadata[DATASET_KEY]["mos"] for lay in layers] == [90, 78, 66]


def test_export_predictions_and_mos(qtbot, viewer_widget, tmp_path):
    import csv

    viewer, widget = viewer_widget
    root = make_dataset(tmp_path, n=4)
    assert widget.export_predictions(str(tmp_path / "early.csv")) is None  # nothing scored yet
    widget.load(str(root))
    wait(qtbot, widget)
    widget.score_all()
    wait(qtbot, widget)
    assert widget.export_button.isEnabled()
    out = widget.export_predictions(str(tmp_path / "pred.csv"))
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [float(r["mos"]) for r in rows] == [90, 78, 66, 54]
    np.testing.assert_array_equal([float(r["predicted"]) for r in rows], widget.pred)
    assert rows[0]["path"].endswith("img0.png") and rows[0]["units"] and not rows[0]["error"]
