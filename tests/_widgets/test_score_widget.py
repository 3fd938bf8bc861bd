"""The Score widget, created from the manifest, in a real viewer (pytest-xvfb provides the display)."""

import time

import numpy as np
import pytest

from napari_pmt_iqa._widgets.overlays import METADATA_KEY, OVERLAY_KEY, map_transform
from napari_pmt_iqa.scoring import get_model, score

WIDGET = "Score image quality"


@pytest.fixture
def viewer_widget(docked_widget):
    return docked_widget(WIDGET)


def run(qtbot, widget, layer=None, timeout=30000):
    widget.score(layer)
    assert widget.worker is not None, widget.last_error
    # the widget's own `finished` slot (connected before the start) clears widget.worker; the map
    # layers are put in place one per turn of the event loop after that
    qtbot.waitUntil(
        lambda: not widget.is_running() and not widget.overlays_pending(), timeout=timeout
    )


def overlays(viewer, name):
    return {
        lay.metadata[OVERLAY_KEY]["key"]: lay
        for lay in viewer.layers
        if lay.metadata.get(OVERLAY_KEY, {}).get("source") == name
    }


def test_score_2d_image_adds_registered_overlays(qtbot, viewer_widget, rgb_image, tiny_checkpoint):
    viewer, widget = viewer_widget
    layer = viewer.add_image(rgb_image, name="photo", scale=(2.0, 0.5), translate=(10.0, -5.0))
    run(qtbot, widget, layer)
    assert widget.last_error == ""
    ref = score(rgb_image, get_model(str(tiny_checkpoint), "cpu"), device="cpu")
    meta = layer.metadata[METADATA_KEY]
    assert meta["score"] == pytest.approx(ref.score, rel=1e-5)
    assert meta["units"] == ref.units and len(meta["class_probs"]) == 10
    assert (
        "higher is better" in widget.score_label.text()
        and f"{ref.score:.2f}" in widget.score_label.text()
    )
    assert "Most likely class" in widget.class_label.text()
    ov = overlays(viewer, "photo")
    assert set(ov) == {"quality", "class", "confidence", "scale0", "scale1", "scale2", "scale3"}
    scale, translate = map_transform(ref.maps.geometry, (2.0, 0.5), (10.0, -5.0))
    for lay in ov.values():
        np.testing.assert_allclose(lay.scale, scale)
        np.testing.assert_allclose(lay.translate, translate)
        assert lay.data.shape == ref.maps.quality.shape  # one value per cell: not upsampled
    assert type(ov["class"]).__name__ == "Image"  # a Labels layer costs napari more to add
    assert ov["class"].data.min() >= 1 and ov["class"].data.max() <= 10
    assert tuple(ov["quality"].contrast_limits) == tuple(ref.score_range)
    np.testing.assert_allclose(ref.maps.crop_grid(ov["quality"].data), ref.crop_scores, rtol=1e-5)
    # toggling a map only changes its visibility: nothing is recomputed, no worker starts
    ov["scale0"].visible = True
    ov["quality"].visible = False
    assert widget.worker is None and len(overlays(viewer, "photo")) == 7
    # scoring again replaces the overlays instead of piling them up
    run(qtbot, widget, layer)
    assert len(overlays(viewer, "photo")) == 7
    # scored again without maps: the earlier maps go (they would not match the new score)
    widget.maps_check.setChecked(False)
    run(qtbot, widget, layer)
    assert overlays(viewer, "photo") == {} and "maps of an earlier score were removed" in (
        widget.status.text()
    )
    assert [lay.name for lay in viewer.layers] == ["photo"]


@pytest.mark.parametrize(
    "placement",
    [
        {"rotate": 30.0, "scale": (2.0, 0.5), "translate": (10.0, -5.0)},
        {"shear": [0.3], "scale": (1.5, 1.0), "translate": (3.0, 4.0)},
        {"affine": [[1.0, 0.2, 5.0], [0.0, 1.0, -2.0], [0.0, 0.0, 1.0]], "scale": (2.0, 2.0)},
    ],
    ids=["rotated", "sheared", "affine"],
)
def test_overlays_follow_rotated_sheared_and_affine_layers(
    qtbot, viewer_widget, rgb_image, tiny_checkpoint, placement
):
    viewer, widget = viewer_widget
    layer = viewer.add_image(rgb_image, name="photo", **placement)
    run(qtbot, widget, layer)
    assert widget.last_error == ""
    ov = overlays(viewer, "photo")
    q = ov["quality"]
    ny, nx = q.data.shape
    g = score(rgb_image, get_model(str(tiny_checkpoint), "cpu"), device="cpu").maps.geometry
    for i, j in [(0, 0), (ny - 1, 0), (0, nx - 1), (ny - 1, nx - 1)]:
        # centre of map cell (i, j) in the image's pixel (data) coordinates
        centre = [g.translate[k] + g.scale[k] * ((i, j)[k] + 0.5) - 0.5 for k in range(2)]
        np.testing.assert_allclose(q.data_to_world((i, j)), layer.data_to_world(centre), atol=1e-6)
        for lay in ov.values():
            np.testing.assert_allclose(
                lay.data_to_world((i, j)), q.data_to_world((i, j)), atol=1e-9
            )


def test_score_stack_plot_follows_slice(qtbot, viewer_widget, rgb_image):
    viewer, widget = viewer_widget
    stack = np.stack([rgb_image, rgb_image // 2 + 60, rgb_image[::-1]])
    layer = viewer.add_image(stack, name="stack", rgb=True)
    run(qtbot, widget, layer)
    meta = layer.metadata[METADATA_KEY]
    assert len(meta["scores"]) == 3 and len(meta["planes"]) == 3
    assert not widget.stack_plot.isHidden()
    np.testing.assert_allclose(widget.stack_plot.values, meta["scores"])
    ov = overlays(viewer, "stack")
    assert ov["quality"].data.shape[0] == 3 and ov["scale2"].data.ndim == 3
    viewer.dims.set_current_step(0, 2)
    assert widget.stack_plot.current == 2
    widget.stack_plot.clicked.emit(1)  # a click on the plot moves the viewer
    assert viewer.dims.current_step[0] == 1 and widget.stack_plot.current == 1


def test_large_image_tiles_with_progress_and_cancel(qtbot, viewer_widget):
    viewer, widget = viewer_widget
    img = np.random.default_rng(1).integers(0, 255, (1500, 1500, 3), dtype=np.uint8)
    layer = viewer.add_image(img, name="big")
    widget.chooser.memory_spin.setValue(16)  # 1 crop per tile: many tiles, slow enough to cancel
    widget.score(layer)
    qtbot.waitUntil(lambda: widget.state.done > 2, timeout=20000)
    assert 0 < widget.state.fraction < 1
    widget.cancel_button.click()
    qtbot.waitUntil(lambda: not widget.is_running(), timeout=20000)
    assert "cancelled" in widget.last_error.lower()
    assert METADATA_KEY not in layer.metadata and not overlays(viewer, "big")
    assert widget.score_button.isEnabled()


def test_gui_responsive_and_worker_full_speed(qtbot, viewer_widget):
    """The event loop never stalls over 100 ms while a worker scores, and the worker is not slower
    than the main thread (the micro-sam slowdown)."""
    from qtpy.QtCore import QTimer

    viewer, widget = viewer_widget
    # large enough that the worker runs for a while (the tiny model scores 1200 px in ~0.06 s)
    img = np.random.default_rng(2).integers(0, 255, (3000, 3000, 3), dtype=np.uint8)
    layer = viewer.add_image(img, name="big")
    widget.chooser.memory_spin.setValue(128)
    widget.maps_check.setChecked(False)
    net = get_model(widget.chooser.current_model(), "cpu")
    score(img[:300, :300], net, device="cpu")  # warm-up
    t0 = time.perf_counter()
    score(img, net, device="cpu", maps=False, memory_mb=128)
    main_s = time.perf_counter() - t0

    ticks = []
    timer = QTimer()
    timer.setInterval(10)
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start()
    run(qtbot, widget, layer)
    timer.stop()
    worker_s = widget.last_seconds
    gaps = np.diff(ticks)
    print(
        f"main thread {main_s:.3f} s, worker {worker_s:.3f} s, longest GUI stall {gaps.max() * 1000:.1f} ms over {len(ticks)} ticks"
    )
    assert len(ticks) > 10
    assert gaps.max() < 0.100
    assert worker_s <= 1.5 * main_s + 0.05


def test_no_stall_from_click_to_maps_in_place(qtbot, viewer_widget):
    """The whole user action, Score pressed until the seven map layers are in place, keeps the
    event loop free: for the first score (layers added) and for scoring again (updated in place).

    benchmarks/bench_gui_stall.py measures the same with the default model (target 100 ms there);
    the bound here is looser so that CI does not flake. Two measures: the wall-clock gap between
    ticks of a 10 ms timer, and the GUI thread's own CPU time in a gap (``time.thread_time``). On a
    machine whose load is above its core count the wall clock measures the scheduler more than this
    code, so there only the CPU bound is asserted (and the wall-clock value printed).
    """
    import os

    from qtpy.QtCore import QTimer

    viewer, widget = viewer_widget
    img = np.random.default_rng(8).integers(0, 255, (512, 512, 3), dtype=np.uint8)
    layer = viewer.add_image(img, name="photo512")
    widget.maps_check.setChecked(True)
    net = get_model(widget.chooser.current_model(), "cpu")
    score(img[:256, :256], net, device="cpu")  # warm-up (first model load and first inference)
    qtbot.wait(300)

    ticks = []
    timer = QTimer()
    timer.setInterval(10)
    timer.timeout.connect(lambda: ticks.append((time.perf_counter(), time.thread_time())))
    wall, cpu = [], []
    for _ in range(2):
        ticks.clear()
        timer.start()
        ticks.append((time.perf_counter(), time.thread_time()))
        widget.score_button.click()
        qtbot.waitUntil(
            lambda: not widget.is_running() and not widget.overlays_pending(), timeout=30000
        )
        qtbot.wait(300)  # the last repaints
        timer.stop()
        t = np.asarray(ticks)
        wall.append(float(np.max(np.diff(t[:, 0]))))
        cpu.append(float(np.max(np.diff(t[:, 1]))))
    assert len(overlays(viewer, "photo512")) == 7 and METADATA_KEY in layer.metadata
    load = os.getloadavg()[0]
    print(
        f"longest stall: first score {wall[0] * 1000:.0f} ms (GUI-thread CPU {cpu[0] * 1000:.0f}"
        f" ms), re-score {wall[1] * 1000:.0f} ms (CPU {cpu[1] * 1000:.0f} ms); load {load:.1f}"
    )
    checked = [("first score", cpu[0], wall[0]), ("re-score", cpu[1], wall[1])]
    import napari

    if tuple(int(p) for p in napari.__version__.split(".")[:2]) < (0, 6):
        # napari 0.5 builds the first map layers in one block of ~0.7 s on the GUI thread
        # (measured in the oldest environment, docs/ci.md): there only re-scoring is bounded
        checked = checked[1:]
    for what, c, w in checked:
        assert c <= 0.250, f"{what}: the GUI thread worked {c * 1000:.0f} ms without a break"
        if load <= (os.cpu_count() or 1):
            assert w <= 0.250, f"{what} stalled the viewer {w * 1000:.0f} ms"


def test_bad_layers_give_messages(qtbot, viewer_widget, monkeypatch):
    from napari_pmt_iqa._widgets import _common

    shown = []
    monkeypatch.setattr(_common, "notify", lambda msg, error: shown.append(msg) if error else None)
    viewer, widget = viewer_widget
    good = viewer.add_image(np.random.default_rng(0).random((64, 64)), name="good")
    run(qtbot, widget, good)
    assert "'good'" in widget.score_label.text() and widget.class_plot.isVisibleTo(widget)
    labels = viewer.add_labels(np.zeros((50, 50), int), name="lab")
    widget.score(labels)
    assert "Labels layer" in widget.last_error and widget.worker is None and shown
    pts = viewer.add_points(np.zeros((3, 2)), name="pts")
    widget.score(pts)
    assert "Points layer" in widget.last_error and widget.worker is None
    # a 1-pixel-thick stack: a message from the worker, no traceback
    thin = viewer.add_image(np.zeros((3, 1, 300), np.uint8), name="thin")
    run(qtbot, widget, thin)
    assert "1 x 300" in widget.last_error and METADATA_KEY not in thin.metadata
    # the failed score leaves no stale result of the previous layer on show
    assert "scoring failed" in widget.score_label.text() and widget.result is None
    assert not widget.class_plot.isVisibleTo(widget)


def test_small_image_and_single_plane_stack(qtbot, viewer_widget):
    viewer, widget = viewer_widget
    small = viewer.add_image(np.random.default_rng(3).random((40, 60)), name="small")
    run(qtbot, widget, small)
    assert widget.last_error == "" and np.isfinite(small.metadata[METADATA_KEY]["score"])
    one = viewer.add_image(
        np.random.default_rng(4).integers(0, 255, (1, 230, 240), dtype=np.uint8), name="one"
    )
    run(qtbot, widget, one)
    assert widget.last_error == "" and len(one.metadata[METADATA_KEY]["scores"]) == 1


def test_layer_removed_while_scoring(qtbot, viewer_widget):
    viewer, widget = viewer_widget
    img = np.random.default_rng(5).integers(0, 255, (1200, 1200, 3), dtype=np.uint8)
    layer = viewer.add_image(img, name="doomed")
    widget.chooser.memory_spin.setValue(16)
    widget.score(layer)
    qtbot.waitUntil(lambda: widget.state.done > 1, timeout=20000)
    viewer.layers.remove(layer)
    qtbot.waitUntil(lambda: not widget.is_running(), timeout=20000)
    assert "removed" in widget.last_error and not overlays(viewer, "doomed")


def test_broken_checkpoint_and_missing_model(qtbot, viewer_widget, tmp_path, tiny_checkpoint):
    from napari_pmt_iqa.weights import CheckpointError

    viewer, widget = viewer_widget
    layer = viewer.add_image(np.zeros((240, 240), np.uint8), name="img")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError):
        widget.chooser.add_model(junk)
    # a checkpoint that passes the header check but fails to load in the worker
    broken = tmp_path / "broken.safetensors"
    data = tiny_checkpoint.read_bytes()
    broken.write_bytes(data[: len(data) // 2])
    widget.chooser.add_model(broken)
    run(qtbot, widget, layer)
    assert "Scoring 'img' failed" in widget.last_error and METADATA_KEY not in layer.metadata
    assert "Choose another model" in widget.last_error
    # nothing chosen (the default model is not shipped yet): a clear message, no worker
    widget.chooser.model_combo.setCurrentIndex(widget.chooser.model_combo.count() - 1)
    widget.score(layer)
    assert widget.worker is None and "Choose file" in widget.last_error


def _start_slow_score(qtbot, viewer, widget, name="big"):
    img = np.random.default_rng(7).integers(0, 255, (1500, 1500, 3), dtype=np.uint8)
    layer = viewer.add_image(img, name=name)
    widget.chooser.memory_spin.setValue(16)  # 1 crop per tile: many tiles, slow enough to cancel
    widget.score(layer)
    qtbot.waitUntil(lambda: widget.state.done > 2, timeout=20000)
    return layer


def test_napari_activity_dock_cancels_a_2d_score(qtbot, viewer_widget):
    """The job shows in napari's activity dock; its Cancel stops a 2D score between tiles."""
    from napari.utils import progress

    viewer, widget = viewer_widget
    layer = _start_slow_score(qtbot, viewer, widget)
    bar = widget.activity
    assert bar in progress._all_instances and "PMT-IQA: Scoring 'big'" in bar.desc
    qtbot.waitUntil(lambda: bar.n > 0, timeout=10000)  # the dock's bar follows the tiles
    bar.cancel()  # what the activity dock's Cancel button calls
    qtbot.waitUntil(lambda: not widget.is_running(), timeout=20000)
    assert "activity dock" in widget.last_error
    assert METADATA_KEY not in layer.metadata and not overlays(viewer, "big")
    assert bar not in progress._all_instances and widget.score_button.isEnabled()


def test_napari_task_cancel_stops_a_2d_score(qtbot, viewer_widget):
    """napari cancels the tasks it knows (``worker.quit()``) when its window closes while busy: a 2D
    score stops at its next tile, although the worker yields only once before it."""
    viewer, widget = viewer_widget
    if not hasattr(viewer.window, "_task_status_manager"):
        import napari

        pytest.skip(f"napari {napari.__version__} does not cancel tasks when its window closes")
    layer = _start_slow_score(qtbot, viewer, widget)
    done = widget.state.done
    viewer.window._task_status_manager.cancel_all()
    qtbot.waitUntil(lambda: not widget.is_running(), timeout=20000)
    assert widget.state.done < widget.state.total and widget.state.done >= done
    assert "Cancelled in napari" in widget.last_error
    assert "cancelled" in widget.score_label.text() and METADATA_KEY not in layer.metadata
    assert widget.score_button.isEnabled()


def test_closing_the_viewer_mid_score_leaves_no_thread(make_napari_viewer, qtbot, tiny_checkpoint):
    from qtpy.QtCore import QThreadPool

    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-pmt-iqa", WIDGET)
    widget.chooser.add_model(tiny_checkpoint)
    widget.chooser.device_combo.setCurrentText("cpu")
    _start_slow_score(qtbot, viewer, widget)
    state = widget.state
    viewer.close()
    # no thread left running; pytest-qt fails the test on an exception in any Qt slot
    assert QThreadPool.globalInstance().waitForDone(20000)
    qtbot.wait(200)  # the worker's last signals reach their (gone) receivers
    assert state.cancelled() and state.done < state.total


@pytest.mark.parametrize("case", ["nan", "thin planes", "too many axes"])
def test_score_errors_say_what_to_do_in_the_viewer(qtbot, viewer_widget, case):
    """The scoring core's messages name Python arguments (rgb=, channel_axis=, np.nan_to_num);
    the widget says what to do in the viewer instead, and names the layer."""
    viewer, widget = viewer_widget
    data = {
        "nan": np.where(np.eye(64, dtype=bool), np.nan, 0.5).astype(np.float32),
        "thin planes": np.zeros((64, 3, 300), np.uint8),
        "too many axes": np.zeros((2, 2, 2, 2, 64, 64), np.uint8),
    }[case]
    layer = viewer.add_image(data, name=case)
    run(qtbot, widget, layer)
    msg = widget.last_error
    assert msg.startswith(f"Scoring '{case}' failed: "), msg
    for python in ("rgb=", "channel_axis=", "np.", "sub-array", "pass ["):
        assert python not in msg, msg
    expect = {
        "nan": "replace them before opening the image",
        "thin planes": "open the file again with File > Open",
        "too many axes": "Split Stack",
    }[case]
    assert expect in msg and METADATA_KEY not in layer.metadata


def test_deleting_the_scored_layer_clears_its_score(qtbot, viewer_widget, rgb_image):
    viewer, widget = viewer_widget
    layer = viewer.add_image(rgb_image, name="gone soon")
    run(qtbot, widget, layer)
    assert "'gone soon'" in widget.score_label.text() and widget.class_plot.isVisibleTo(widget)
    viewer.layers.remove(layer)
    assert "was deleted" in widget.score_label.text() and widget.result is None
    assert not widget.class_plot.isVisibleTo(widget) and widget.class_label.text() == ""


def test_a_model_trained_after_the_widget_was_deleted_raises_nothing(
    viewer_widget, tiny_checkpoint
):
    # a score widget whose Qt side is gone (viewer closed) but whose Python wrapper lives on must
    # ignore model_trained; with psygnal 0.9 its disconnect raised inside the emit loop
    from qtpy import sip

    from napari_pmt_iqa._widgets.training_worker import model_trained

    _, widget = viewer_widget
    detached = type(widget)(widget.viewer)
    sip.delete(detached)
    model_trained.emit(str(tiny_checkpoint), {})


def test_score_follows_the_image_just_opened_or_selected(qtbot, viewer_widget, tmp_path):
    from PIL import Image

    viewer, widget = viewer_widget
    rng = np.random.default_rng(0)
    for name in ("first", "second"):
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(
            tmp_path / f"{name}.png"
        )
    viewer._open_or_raise_error([str(tmp_path / "first.png")])  # File > Open
    run(qtbot, widget)
    assert widget._scored_layer.name == "first"
    viewer._open_or_raise_error([str(tmp_path / "second.png")])
    assert widget.layer_combo.currentText() == "second"  # the new image, as the rating widget
    run(qtbot, widget)
    assert widget._scored_layer.name == "second"
    viewer.layers.selection.active = viewer.layers["first"]  # a click in the layer list
    assert widget.layer_combo.currentText() == "first"
    # a map layer selected is not an image to score: the choice stays
    viewer.layers.selection.active = next(iter(overlays(viewer, "second").values()))
    assert widget.layer_combo.currentText() == "first"


def test_a_small_colour_image_read_as_a_stack_gets_a_message_that_says_so(qtbot, viewer_widget):
    viewer, widget = viewer_widget
    data = np.random.default_rng(0).integers(0, 255, (20, 20, 3), dtype=np.uint8)
    layer = viewer.add_image(data, name="tiny")  # napari >= 0.6: 20 planes of 20 x 3 pixels
    if layer.rgb:  # older napari reads it as colour: it is simply scored
        run(qtbot, widget, layer)
        assert widget.result is not None and not widget.last_error
        return
    run(qtbot, widget, viewer.add_image(data[..., 0], name="grey"))  # a result is shown
    assert widget.result is not None
    widget.score(layer)
    assert widget.worker is None
    assert widget.result is None and "No score" in widget.score_label.text()  # nothing stale
    msg = widget.last_error
    assert "20 x 20 RGB image" in msg and "20 planes of 20 x 3 pixels" in msg
    assert "rgb=True" in msg and "File > Open" not in msg  # advice that works
    # opened as colour, as the message says, it is scored
    run(qtbot, widget, viewer.add_image(data, name="tiny rgb", rgb=True))
    assert widget.result is not None
