"""The data-set widget: load a generic CSV data set, score it, plot predicted vs MOS, jump to images."""

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
def viewer_widget(docked_widget):
    return docked_widget(WIDGET)


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


def test_loaded_images_go_in_one_per_turn_and_scoring_waits_for_them(
    qtbot, viewer_widget, tmp_path
):
    """The loaded images become layers one per turn of the event loop (in the order of the
    samples); until they are all in, the widget is busy and Score says to wait."""
    viewer, widget = viewer_widget
    root = make_dataset(tmp_path)
    held = widget._layer_jobs.timer
    held.start = lambda *a: None  # (hold them back)
    widget.load(str(root))
    qtbot.waitUntil(lambda: widget.worker is None, timeout=30000)
    assert widget._layer_jobs and widget.layers == [] and widget.is_running()
    widget.score_all()
    assert "still going in as layers" in widget.last_error and widget.worker is None
    del held.start
    held.start()
    wait(qtbot, widget)
    assert [lay.name for lay in widget.layers] == [s.path.name for s in widget.samples]
    assert [lay.visible for lay in widget.layers][:2] == [True, False]
    widget.score_all()
    wait(qtbot, widget)
    assert np.isfinite(widget.pred).all() and widget.pred.size == len(widget.samples)


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


def test_livec_test_part_and_the_training_data_note(
    qtbot, viewer_widget, tmp_path, tiny_checkpoint
):
    """LIVE-C's parts are the recipe's seeded split; images the chosen model was trained on are
    named beside the SRCC (the shipped model's metadata says: LIVE-C train part, seed 0)."""
    from _iqa_data import fake_livec
    from napari_pmt_iqa.data.datasets import livec_recipe_parts, load_livec
    from napari_pmt_iqa.weights import DEFAULT_MODEL

    viewer, widget = viewer_widget
    root = tmp_path / "ChallengeDB_release"
    fake_livec(root, n=40)  # 100.bmp-139.bmp; 100-106 are left out of the recipe's split
    parts = livec_recipe_parts(load_livec(root), seed=0)
    widget.chooser.model_combo.setCurrentIndex(widget.chooser.model_combo.findData(DEFAULT_MODEL))
    widget.part_combo.setCurrentText("all")
    widget.load(str(root))
    wait(qtbot, widget)
    n_train = len(parts["train"])
    assert len(widget.samples) == 40 and widget.overlap["n_in"] == n_train
    note = widget.training_label.text()
    assert f"{n_train} of these 40 loaded images" in note and "not a test figure" in note
    assert "LIVE-C train part" in note and widget.training_label.isVisibleTo(widget)

    widget.part_combo.setCurrentText("test")
    widget.load(str(root))
    wait(qtbot, widget)
    assert [s.path for s in widget.samples] == [s.path for s in parts["test"].samples]
    assert widget.overlap == {"known": True, "n_in": 0, "desc": "LIVE-C train part"}
    assert widget.training_label.text().startswith("None of these")
    # a model whose metadata says nothing about its training data: "unknown", not "none"
    widget.chooser.add_model(tiny_checkpoint)
    assert widget.training_label.text().startswith("Unknown whether this model was trained")


def test_trained_parts_reads_both_metadata_descriptions():
    from napari_pmt_iqa._widgets.dataset_widget import trained_parts, training_overlap

    old = {"livec_train": 832, "livec_val": 92, "livec_split_seed": 0, "biq2021_train": 9500}
    new = {
        "recipe": "...",
        "data": [
            {"name": "livec", "part": "train", "split_seed": 0},
            {"name": "biq2021", "part": "train"},
        ],
    }
    expected = [
        {"name": "livec", "part": "train", "split_seed": 0},
        {"name": "biq2021", "part": "train", "split_seed": None},
    ]
    assert trained_parts(old) == expected and trained_parts({"data": old}) == expected
    assert trained_parts(new) == expected
    assert trained_parts(None) is None and trained_parts({"epochs": 3}) is None
    assert training_overlap("biq2021", ["train", "test", "test"], expected)["n_in"] == 1
    other_seed = [{"name": "livec", "part": "train", "split_seed": 3}]
    assert training_overlap("livec", ["train"], other_seed)["known"] is False


@pytest.mark.parametrize(
    "case",
    ["livec layout on a CSV", "missing path", "csv layout on a folder without CSV"],
)
def test_layout_and_path_mismatches_say_what_to_change(qtbot, viewer_widget, tmp_path, case):
    viewer, widget = viewer_widget
    csv_path = tmp_path / "livec_mos.csv"
    csv_path.write_text("image,mos\na.png,50\n")
    path, layout, expect = {
        "livec layout on a CSV": (
            csv_path,
            "livec",
            "'Layout' is livec, but livec_mos.csv is a file",
        ),
        "missing path": (tmp_path / "nowhere", "auto", "does not exist: choose the data set"),
        "csv layout on a folder without CSV": (tmp_path / "imgs", "csv", "holds no CSV file"),
    }[case]
    (tmp_path / "imgs").mkdir()
    widget.layout_combo.setCurrentText(layout)
    widget.load(str(path))
    wait(qtbot, widget)
    assert expect in widget.last_error
    assert "Error" not in widget.last_error.replace("DatasetError", "")  # no raw exception name
    assert "/Data/AllImages_release.mat" not in widget.last_error
