"""Folder triage: a generated folder with a broken file: rows, sort, filter, click opens, cancel,
export; memory stays flat over many images."""

import csv

import numpy as np
import pytest

from napari_pmt_iqa._widgets.overlays import METADATA_KEY, OVERLAY_KEY
from napari_pmt_iqa._widgets.triage_widget import TRIAGE_KEY
from napari_pmt_iqa.imaging import read_image
from napari_pmt_iqa.scoring import get_model, score

WIDGET = "Score a folder of images"


def make_folder(root, n=6, shape=(240, 256)):
    from PIL import Image

    from napari_pmt_iqa._sample_data import distort

    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (*shape, 3), dtype=np.uint8)
    for k in range(n):
        Image.fromarray(distort(base, "blur", 0.8 * k)).save(root / f"img{k}.png")
    (root / "broken.jpg").write_text("not an image\n")
    (root / "notes.txt").write_text("not an image file at all\n")
    sub = root / "sub"
    sub.mkdir()
    Image.fromarray(base).save(sub / "deep.png")
    return root


@pytest.fixture
def viewer_widget(docked_widget):
    return docked_widget(WIDGET)


def wait(qtbot, widget, timeout=60000):
    qtbot.waitUntil(lambda: not widget.is_running(), timeout=timeout)


def _scores_in_table(widget):
    return [widget.table.item(r, 1).value for r in range(widget.table.rowCount())]


def test_rows_sort_filter_open_and_export(qtbot, viewer_widget, tmp_path, tiny_checkpoint):
    viewer, widget = viewer_widget
    folder = tmp_path / "photos"
    folder.mkdir()
    make_folder(folder)
    widget.score_folder(str(folder))
    wait(qtbot, widget)
    assert widget.n_files == 7  # 6 images + broken.jpg; notes.txt is not an image file
    assert len(widget.rows) == 7 and widget.table.rowCount() == 7
    bad = [r for r in widget.rows if r.get("error")]
    assert [r["path"].split("/")[-1] for r in bad] == ["broken.jpg"]
    assert "not a readable image" in bad[0]["error"]
    assert "1 could not be read" in widget.summary_label.text()
    assert "7 of 7 images" in widget.eta_label.text()
    net = get_model(str(tiny_checkpoint), "cpu")
    ok = [r for r in widget.rows if not r.get("error")]
    for r in ok[:2]:
        assert r["score"] == pytest.approx(
            score(read_image(r["path"]), net, "cpu", maps=False).score
        )
    # sorted by score from the start (ascending: the worst first), the unreadable file last
    shown = _scores_in_table(widget)
    assert shown[:-1] == sorted(r["score"] for r in ok) and shown[-1] is None
    # the Error column gives the reason, not the path again (the tooltip has the whole message)
    err_item = widget.table.item(widget.table.rowCount() - 1, 3)
    assert err_item.text().startswith("not a readable image") and str(folder) not in err_item.text()
    assert err_item.toolTip() == bad[0]["error"]
    # filter by score
    mid = float(np.median([r["score"] for r in ok]))
    # the untrained tiny model scores every image within 0.01 of 50: finer steps than the box's
    # two decimals are needed to filter between them
    widget.min_spin.setDecimals(6)
    widget.min_spin.setValue(mid)
    low = widget.min_spin.value()  # the box rounds to its decimals; the filter uses what it shows
    visible = widget.shown_rows()
    assert all(r.get("error") or r["score"] >= low for r in visible)
    assert 0 < len(visible) < 7
    widget.errors_check.setChecked(False)
    assert all(not r.get("error") for r in widget.shown_rows())
    widget.min_spin.setValue(-1e9)
    # export the table as shown
    assert widget.export_table(str(tmp_path)) is None  # a folder: said so, nothing written
    assert widget.last_error == (
        f"Could not export the table: {tmp_path} is a folder, not a file: give a file name in it."
    )
    out = widget.export_table(str(tmp_path / "table.csv"))
    with open(out, newline="") as f:
        table = list(csv.DictReader(f))
    assert [float(t["score"]) for t in table] == sorted(r["score"] for r in ok)
    assert {"path", "score", "units", "quality_class", "error"} <= set(table[0])
    # a click opens the image with its maps; the next click replaces it
    widget.table.cellClicked.emit(0, 0)
    qtbot.waitUntil(lambda: not widget.is_opening(), timeout=30000)
    first = widget.shown_rows()[0]
    img_layers = [lay for lay in viewer.layers if TRIAGE_KEY in lay.metadata]
    assert len(img_layers) == 1 and img_layers[0].metadata[TRIAGE_KEY]["path"] == first["path"]
    assert img_layers[0].metadata[METADATA_KEY]["score"] == pytest.approx(first["score"])
    n_maps = sum(1 for lay in viewer.layers if OVERLAY_KEY in lay.metadata)
    assert n_maps == 7
    widget.table.cellClicked.emit(1, 0)
    qtbot.waitUntil(lambda: not widget.is_opening(), timeout=30000)
    assert len(viewer.layers) == 8  # the first image and its maps were closed

    # the maps go in one per turn of the event loop; a row opened before they are all in place
    # still closes every layer of the rows before it
    def open_with_maps_pending(r):
        widget.table.cellClicked.emit(r, 0)
        qtbot.waitUntil(lambda: widget._open_worker is None, timeout=30000)
        widget._layer_jobs.timer.stop()  # (its maps wait)
        assert widget.is_opening()

    def shown_paths():
        return [
            lay.metadata[TRIAGE_KEY]["path"] for lay in viewer.layers if TRIAGE_KEY in lay.metadata
        ]

    open_with_maps_pending(0)
    widget.table.cellClicked.emit(2, 0)
    qtbot.waitUntil(lambda: not widget.is_opening(), timeout=30000)
    assert len(viewer.layers) == 8 and shown_paths() == [widget.shown_rows()[2]["path"]]
    shown = [lay for lay in viewer.layers if TRIAGE_KEY in lay.metadata]
    assert viewer.layers.selection.active is shown[0]  # the maps did not take the selection
    # the same row again: its maps are replaced, not renamed "... [1]" beside the old ones
    names = sorted(lay.name for lay in viewer.layers)
    open_with_maps_pending(2)
    widget.table.cellClicked.emit(2, 0)
    qtbot.waitUntil(lambda: not widget.is_opening(), timeout=30000)
    assert sorted(lay.name for lay in viewer.layers) == names
    # with "keep" ticked, an image opened before stays with all its maps
    widget.keep_check.setChecked(True)
    open_with_maps_pending(0)
    widget.table.cellClicked.emit(1, 0)
    qtbot.waitUntil(lambda: not widget.is_opening(), timeout=30000)
    assert len(shown_paths()) == 3 and len(viewer.layers) == 3 * 8
    widget.keep_check.setChecked(False)
    # the broken file cannot be opened: a message
    widget.errors_check.setChecked(True)
    widget.open_row(widget.table.rowCount() - 1)
    assert "cannot be opened" in widget.last_error


def test_recursive_cancel_and_bad_folders(qtbot, viewer_widget, tmp_path):
    viewer, widget = viewer_widget
    folder = tmp_path / "f"
    folder.mkdir()
    make_folder(folder, n=3)
    widget.recursive_check.setChecked(True)
    widget.score_folder(str(folder))
    wait(qtbot, widget)
    assert any(r["path"].endswith("deep.png") for r in widget.rows) and len(widget.rows) == 5
    # cancel: stops at the next image, the rows so far stay
    many = tmp_path / "many"
    many.mkdir()
    make_folder(many, n=30)
    widget.score_folder(str(many))
    qtbot.waitUntil(lambda: len(widget.rows) >= 2, timeout=30000)
    widget.cancel_button.click()
    wait(qtbot, widget)
    assert "cancelled" in widget.last_error.lower() and 2 <= len(widget.rows) < 32
    assert widget.export_button.isEnabled()
    widget.score_folder(str(tmp_path / "nope"))
    wait(qtbot, widget)
    assert "not a folder" in widget.last_error
    empty = tmp_path / "empty"
    empty.mkdir()
    widget.recursive_check.setChecked(False)
    widget.score_folder(str(empty))
    wait(qtbot, widget)
    assert "holds no image files" in widget.last_error and "sub-folders" in widget.last_error


def test_memory_stays_flat_over_many_images(qtbot, viewer_widget, tmp_path):
    """Only the rows are kept: scoring 150 images of 0.75 MB each grows the process far less."""
    from PIL import Image

    viewer, widget = viewer_widget
    rng = np.random.default_rng(1)
    folder = tmp_path / "flat"
    folder.mkdir()
    img = rng.integers(0, 255, (512, 512, 3), dtype=np.uint8)
    for k in range(150):
        Image.fromarray(np.roll(img, k, axis=1)).save(folder / f"{k:03d}.bmp")
    widget.score_folder(str(folder / ".."))  # warm-up on a folder without images
    wait(qtbot, widget)

    def rss():
        with open("/proc/self/status") as f:
            return next(int(ln.split()[1]) / 1024 for ln in f if ln.startswith("VmRSS"))

    widget.score_folder(str(folder))
    qtbot.waitUntil(lambda: len(widget.rows) >= 20, timeout=120000)
    after_20 = rss()
    wait(qtbot, widget, timeout=300000)
    grown = rss() - after_20
    assert len(widget.rows) == 150 and not any(r.get("error") for r in widget.rows)
    # 130 more decoded images would be about 100 MB: at most a few images' worth may stay
    assert grown < 30, f"memory grew by {grown:.0f} MB over 130 images"


def test_a_small_colour_image_opens_as_colour(qtbot, viewer_widget, tmp_path):
    """napari shows a (20, 20, 3) array as 20 planes of 20 x 3 pixels unless told it is RGB."""
    from PIL import Image

    viewer, widget = viewer_widget
    folder = tmp_path / "small"
    folder.mkdir()
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(folder / "tiny.png")
    widget.score_folder(str(folder))
    wait(qtbot, widget)
    assert not widget.rows[0].get("error")
    widget.open_row(0)
    qtbot.waitUntil(lambda: not widget.is_opening(), timeout=30000)
    layer = next(lay for lay in viewer.layers if TRIAGE_KEY in lay.metadata)
    assert layer.rgb and layer.data.shape == (20, 20, 3)
    assert sum(1 for lay in viewer.layers if OVERLAY_KEY in lay.metadata) == 7
