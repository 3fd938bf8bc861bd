"""What the score widget scores: pyramid levels, one plane of a stack, the intensity rule, lazy
layers; and what leaves it: the scores CSV and the class map's features."""

import numpy as np
import pytest

from napari_pmt_iqa._widgets.overlays import METADATA_KEY, OVERLAY_KEY
from napari_pmt_iqa._widgets.score_options import CONTRAST, CURRENT_PLANE
from napari_pmt_iqa.multiscale import to_full_resolution
from napari_pmt_iqa.scoring import get_model, score

from .test_score_widget import WIDGET, overlays, run


@pytest.fixture
def viewer_widget(docked_widget):
    return docked_widget(WIDGET)


def _img(h, w, seed=0):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:h, :w]
    base = 127 + 90 * np.sin(x / 7.0) * np.cos(y / 11.0)
    return np.clip(base[..., None] + rng.normal(0, 12, (h, w, 3)), 0, 255).astype(np.uint8)


def test_a_pyramid_level_is_scored_with_maps_over_level_0(qtbot, viewer_widget, tiny_checkpoint):
    viewer, widget = viewer_widget
    full = _img(896, 960)
    pyramid = [full, full[::2, ::2].copy()]
    layer = viewer.add_image(pyramid, name="pyr", multiscale=True)
    assert layer.multiscale
    widget.layer_combo.setCurrentText("pyr")
    assert widget.options.level_combo.isVisibleTo(widget)
    widget.options.set_level(1)
    run(qtbot, widget, layer)
    assert widget.last_error == ""
    net = get_model(str(tiny_checkpoint), "cpu")
    ref = to_full_resolution(score(pyramid[1], net, "cpu"), (2.0, 2.0))
    assert layer.metadata[METADATA_KEY]["score"] == pytest.approx(ref.score, rel=1e-5)
    assert layer.metadata[METADATA_KEY]["pyramid_level"] == 1
    q = overlays(viewer, "pyr")["quality"]
    np.testing.assert_allclose(q.scale, (64.0, 64.0))  # 32-px cells of level 1 = 64 px of level 0
    # level-1 pixel i is drawn centred on level-0 coordinate 2 i: so is the map cell over it
    g1 = score(pyramid[1], net, "cpu").maps.geometry
    i, j = 2, 3
    centre1 = [g1.translate[k] + g1.scale[k] * ((i, j)[k] + 0.5) - 0.5 for k in range(2)]
    np.testing.assert_allclose(q.data_to_world((i, j)), 2 * np.asarray(centre1), atol=1e-6)
    assert "level 1" in widget.options.rule_label.text()
    # the automatic level of a small pyramid is level 0
    widget.options.set_level(None)
    assert widget.options.request(layer, viewer).level == 0


def test_current_plane_only_and_the_stack_rule(qtbot, viewer_widget, tiny_checkpoint, tmp_path):
    viewer, widget = viewer_widget
    rng = np.random.default_rng(2)
    plane = (rng.random((256, 256)) * 3000 + 500).astype(np.uint16)
    stack = np.stack([plane, plane // 10, plane, plane, plane])
    layer = viewer.add_image(stack, name="zstack")
    widget.layer_combo.setCurrentText("zstack")
    widget.options.planes_combo.setCurrentText(CURRENT_PLANE)
    viewer.dims.set_current_step(0, 1)
    run(qtbot, widget, layer)
    assert widget.last_error == ""
    net = get_model(str(tiny_checkpoint), "cpu")
    full = score(stack, net, "cpu", maps=False)  # one rule for the stack: plane 1 is dark
    meta = layer.metadata[METADATA_KEY]
    assert meta["plane"] == [1] and meta["score"] == pytest.approx(full.scores[1], rel=1e-5)
    assert "percentiles" in widget.options.rule_label.text()
    q = overlays(viewer, "zstack")["quality"]
    assert q.data.shape[0] == 1 and q.translate[0] == 1.0  # on plane 1 only
    path = widget.export_scores(str(tmp_path / "plane.csv"))
    from napari_pmt_iqa.export import read_scores_csv

    rows = read_scores_csv(path)
    assert rows[0]["source"] == "zstack [plane 1]" and rows[0]["score"] == meta["score"]


def test_contrast_limits_rule(qtbot, viewer_widget, tiny_checkpoint):
    viewer, widget = viewer_widget
    img = (np.random.default_rng(5).random((256, 288)) * 4000).astype(np.uint16)
    layer = viewer.add_image(img, name="mic", contrast_limits=(0, 2000))
    widget.layer_combo.setCurrentText("mic")
    widget.options.rule_combo.setCurrentText(CONTRAST)
    run(qtbot, widget, layer)
    net = get_model(str(tiny_checkpoint), "cpu")
    ref = score(img, net, "cpu", maps=False, intensity_range=(0, 2000))
    assert layer.metadata[METADATA_KEY]["score"] == pytest.approx(ref.score, rel=1e-5)
    assert "contrast" not in widget.last_error


def test_a_dask_layer_is_scored(qtbot, viewer_widget, tiny_checkpoint):
    da = pytest.importorskip("dask.array")
    viewer, widget = viewer_widget
    img = _img(512, 544)
    layer = viewer.add_image(da.from_array(img, chunks=(128, 128, 3)), name="lazy", rgb=True)
    run(qtbot, widget, layer)
    assert widget.last_error == ""
    ref = score(img, get_model(str(tiny_checkpoint), "cpu"), "cpu")
    assert layer.metadata[METADATA_KEY]["score"] == pytest.approx(ref.score, rel=1e-5)


def test_export_scores_and_class_table(qtbot, viewer_widget, tiny_checkpoint, tmp_path):
    from napari_pmt_iqa.export import read_scores_csv

    viewer, widget = viewer_widget
    img = _img(288, 352)
    layer = viewer.add_image(img, name="photo")
    assert not widget.export_button.isEnabled()
    run(qtbot, widget, layer)
    assert widget.export_button.isEnabled()
    path = widget.export_scores(str(tmp_path / "scores.csv"))
    rows = read_scores_csv(path)
    ref = score(img, get_model(str(tiny_checkpoint), "cpu"), "cpu")
    assert rows[0]["kind"] == "image" and rows[0]["score"] == pytest.approx(ref.score, rel=1e-6)
    crops = [r for r in rows if r["kind"] == "crop"]
    assert len(crops) == ref.n_crops == 15
    np.testing.assert_allclose([c["score"] for c in crops], ref.crop_scores.ravel(), rtol=1e-6)
    assert "Saved the scores" in widget.status.text()
    # the class map says what a value means: its metadata holds the class table, hovering shows
    # the class number
    cls = overlays(viewer, "photo")["class"]
    table = cls.metadata[OVERLAY_KEY]["classes"]
    assert table["index"] == list(range(1, 11))
    np.testing.assert_allclose(table["image probability"], ref.class_probs, rtol=1e-5)
    assert table["score low"][0] == ref.class_edges[0]
    cls.visible = True  # napari gives values of shown layers only
    value = int(cls.data[0, 0])
    assert 1 <= value <= 10
    assert int(cls.get_value(cls.data_to_world((0, 0)), world=True)) == value
    # a failed export is a message, not a traceback
    widget.export_scores(str(tmp_path))  # a folder, not a file
    assert "Could not export" in widget.last_error


def test_save_selected_layers_writes_the_maps(qtbot, viewer_widget, tmp_path):
    from napari_pmt_iqa.export import read_map_csv, read_map_tiff

    viewer, widget = viewer_widget
    layer = viewer.add_image(_img(288, 320), name="photo")
    run(qtbot, widget, layer)
    ov = overlays(viewer, "photo")
    viewer.layers.selection = {ov["quality"]}
    # File > Save Selected Layers: napari picks the plugin's writer from the extension
    written = viewer.layers.save(str(tmp_path / "quality.csv"), selected=True)
    assert written == [str(tmp_path / "quality.csv")]
    rows = read_map_csv(written[0])
    assert len(rows) == ov["quality"].data.size
    assert rows[0]["quality"] == pytest.approx(float(ov["quality"].data[0, 0]))
    import napari

    if tuple(int(p) for p in napari.__version__.split(".")[:2]) >= (0, 6):
        # napari 0.5 picks a writer by the last extension only (.tif: its own writer), so the
        # compound .map.tif reaches this plugin's writer in napari 0.9 (versions between: untested)
        viewer.layers.selection = {ov["class"]}
        (tif,) = viewer.layers.save(str(tmp_path / "class.map.tif"), selected=True)
        data, info = read_map_tiff(tif)
        assert (data == ov["class"].data).all() and info["key"] == "class"
    viewer.layers.selection = {ov["quality"], ov["confidence"], ov["class"]}
    (both,) = viewer.layers.save(str(tmp_path / "maps.csv"), selected=True)
    rows = read_map_csv(both)
    assert {"quality", "confidence", "class"} <= set(rows[0])
    # the class map's values come back as whole classes, as the layer holds them
    assert [r["class"] for r in rows] == [int(v) for v in ov["class"].data.ravel()]
    assert all(isinstance(r["class"], int) for r in rows)
    assert ov["quality"].metadata[OVERLAY_KEY]["cell_size"] == [32.0, 32.0]
    # a plain image saved as .tif still goes to napari's own writer
    viewer.layers.selection = {layer}
    (plain,) = viewer.layers.save(str(tmp_path / "photo.tif"), selected=True)
    import tifffile

    assert tifffile.imread(plain).shape == (288, 320, 3)
