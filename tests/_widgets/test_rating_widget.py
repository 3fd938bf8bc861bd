"""The rating widget: rate images and planes in the viewer, keys 0-5, save/load a training CSV."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from napari_pmt_iqa._widgets.rating_widget import (
    RATINGS_KEY,
    STARS,
    RatingWidget,
    get_plane,
    load_ratings_csv,
    rated_pairs,
    save_ratings_csv,
    set_rating,
    stars_to_score,
)


def _press(viewer, key: str) -> None:
    """Simulate a key press through napari's key-map handler (the path a real key press takes)."""
    handler = viewer.window._qt_viewer._key_map_handler
    handler.press_key(key)
    handler.release_key(key)


@pytest.fixture
def rgb():
    rng = np.random.default_rng(1)
    return (rng.random((40, 50, 3)) * 255).astype(np.uint8)


@pytest.fixture
def stack():
    rng = np.random.default_rng(2)
    return (rng.random((5, 32, 36)) * 4000).astype(np.uint16)


def test_stars_map_onto_the_quality_scale():
    assert [stars_to_score(s) for s in range(1, 6)] == [10.0, 30.0, 50.0, 70.0, 90.0]
    with pytest.raises(ValueError, match="1 to 5"):
        stars_to_score(6)


def test_buttons_and_spinbox_rate_the_current_image(make_napari_viewer, qtbot, rgb):
    viewer = make_napari_viewer()
    layer = viewer.add_image(rgb, name="photo")
    w = RatingWidget(viewer)
    qtbot.addWidget(w)
    w.star_buttons[3].click()  # 4 stars
    assert layer.metadata[RATINGS_KEY] == {(): STARS[4]}
    assert "70 / 100" in w.rating_label.text()
    w.spin.setValue(42.5)
    w.set_button.click()
    assert layer.metadata[RATINGS_KEY] == {(): 42.5}
    assert w.count_label.text().startswith("1 rated")
    w.clear_button.click()
    assert layer.metadata[RATINGS_KEY] == {}
    assert w.rating_label.text() == "not rated"
    with pytest.raises(ValueError, match="between 0 and 100"):
        set_rating(layer, (), 120)
    w.close()


def test_keys_rate_and_win_over_image_mode_keys_then_unbind(make_napari_viewer, qtbot, rgb):
    viewer = make_napari_viewer()
    layer = viewer.add_image(rgb, name="photo")
    w = RatingWidget(viewer)
    viewer.window.add_dock_widget(w)
    assert layer.mode == "pan_zoom"
    _press(viewer, "2")  # napari binds 2 to the Image layer's transform mode
    assert layer.metadata[RATINGS_KEY] == {(): STARS[2]}
    assert layer.mode == "pan_zoom"  # our binding won
    _press(viewer, "5")
    assert layer.metadata[RATINGS_KEY] == {(): STARS[5]}
    _press(viewer, "0")
    assert layer.metadata[RATINGS_KEY] == {}
    # a layer added later is bound too
    other = viewer.add_image(rgb[::-1], name="second")
    _press(viewer, "1")
    assert other.metadata[RATINGS_KEY] == {(): STARS[1]}
    # unchecking / closing unbinds and gives napari's keys back
    w.close()
    _press(viewer, "3")
    assert other.metadata[RATINGS_KEY] == {(): STARS[1]}
    assert RATINGS_KEY not in layer.metadata or layer.metadata[RATINGS_KEY] == {}
    _press(viewer, "2")
    assert other.mode == "transform"


def test_planes_of_a_stack_are_rated_separately(make_napari_viewer, qtbot, stack):
    viewer = make_napari_viewer()
    layer = viewer.add_image(stack, name="zstack")
    w = RatingWidget(viewer)
    qtbot.addWidget(w)
    viewer.dims.set_current_step(0, 2)
    w.rate_stars(5)
    viewer.dims.set_current_step(0, 4)
    w.rate(12.0)
    assert layer.metadata[RATINGS_KEY] == {(2,): 90.0, (4,): 12.0}
    assert w.target_label.text() == "'zstack', plane 4"
    np.testing.assert_array_equal(get_plane(layer, (2,)), stack[2])
    pairs = rated_pairs(viewer.layers)
    assert [s for _, s in pairs] == [90.0, 12.0]
    assert pairs[1][0].shape == (32, 36)
    # a transposed view does not show one plane: rating is refused with a clear reason
    viewer.dims.order = (1, 0, 2)
    assert w.rate_stars(3) is False
    assert "dims order" in w.problem
    assert layer.metadata[RATINGS_KEY] == {(2,): 90.0, (4,): 12.0}
    w.close()


def test_ratings_of_planes_that_no_longer_exist_are_dropped_with_a_warning(
    make_napari_viewer, qtbot, tmp_path, stack
):
    viewer = make_napari_viewer()
    layer = viewer.add_image(stack, name="zstack")
    w = RatingWidget(viewer)
    qtbot.addWidget(w)
    for plane, stars in ((1, 4), (3, 2)):
        viewer.dims.set_current_step(0, plane)
        w.rate_stars(stars)
    layer.data = stack[:2]  # the stack shrinks after rating: plane 3 is gone
    with pytest.warns(UserWarning, match=r"Dropped 1 rating\(s\) of 'zstack'.*plane 3"):
        path, n = save_ratings_csv(viewer.layers, tmp_path / "r.csv")
    assert n == 1 and layer.metadata[RATINGS_KEY] == {(1,): stars_to_score(4)}
    assert [s for _, s in rated_pairs(viewer.layers)] == [stars_to_score(4)]
    # a folder is not a CSV name
    with pytest.raises(ValueError, match="is a folder"):
        save_ratings_csv(viewer.layers, tmp_path)
    w.close()


def test_save_load_csv_round_trip_usable_for_training(
    make_napari_viewer, qtbot, tmp_path, rgb, stack
):
    from napari_pmt_iqa.data.datasets import load_dataset

    viewer = make_napari_viewer()
    a = viewer.add_image(rgb, name="photo")
    b = viewer.add_image(stack, name="z stack")
    set_rating(a, (), 70.0)
    set_rating(b, (1,), 30.0)
    set_rating(b, (3,), 90.0)
    csv_path, n = save_ratings_csv(viewer.layers, tmp_path / "ratings.csv")
    assert n == 3
    with open(csv_path) as f:
        rows = list(csv.DictReader(f))
    assert [r["image"] for r in rows] == [
        "ratings_images/photo.png",
        "ratings_images/z_stack_1.tif",
        "ratings_images/z_stack_3.tif",
    ]
    # the generic layout reader of the trainer / `pmt-iqa train` reads it
    ds = load_dataset(csv_path)
    assert len(ds) == 3 and sorted(ds.scores) == [30.0, 70.0, 90.0]
    assert ds.scale.high == 100.0
    import tifffile

    np.testing.assert_array_equal(
        tifffile.imread(tmp_path / "ratings_images" / "z_stack_3.tif"), stack[3]
    )

    # loading onto the same layers restores the metadata
    a.metadata[RATINGS_KEY] = {}
    b.metadata[RATINGS_KEY] = {}
    assert load_ratings_csv(csv_path, viewer) == 3
    assert a.metadata[RATINGS_KEY] == {(): 70.0}
    assert b.metadata[RATINGS_KEY] == {(1,): 30.0, (3,): 90.0}

    # in a fresh viewer the rated planes come back as new layers with their ratings
    viewer.layers.clear()
    w = RatingWidget(viewer)
    qtbot.addWidget(w)
    assert w.load_csv(csv_path) == 3
    assert len(viewer.layers) == 3
    assert sorted(s for _, s in rated_pairs(viewer.layers)) == [30.0, 70.0, 90.0]
    assert w.count_label.text().startswith("3 rated in 3 layers")
    w.close()


def test_save_without_ratings_and_bad_csv_give_clear_errors(make_napari_viewer, tmp_path, rgb):
    viewer = make_napari_viewer()
    viewer.add_image(rgb)
    with pytest.raises(ValueError, match="No image is rated"):
        save_ratings_csv(viewer.layers, tmp_path / "r.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("file,quality\na.png,3\n")
    with pytest.raises(ValueError, match="image,mos"):
        load_ratings_csv(bad, viewer)
    bad.write_text("image,mos\na.png,excellent\n")
    with pytest.raises(ValueError, match="not a number"):
        load_ratings_csv(bad, viewer)
    for plane in ("a-b", "-1", "2.5"):
        bad.write_text(f"image,mos,layer,plane\na.png,50,x,{plane}\n")
        with pytest.raises(ValueError, match=r"line 2: the plane .* is not plane indices"):
            load_ratings_csv(bad, viewer)


def test_a_bad_row_loads_no_rating_at_all(make_napari_viewer, tmp_path, rgb):
    """A CSV is loaded whole or not at all: a bad score, or an image that cannot be read, on a
    later line leaves the ratings and layers as they were."""
    from PIL import Image

    viewer = make_napari_viewer()
    layer = viewer.add_image(rgb, name="a")
    set_rating(layer, (), 50.0)
    Image.fromarray(rgb).save(tmp_path / "b.png")
    csv_path = tmp_path / "r.csv"
    for bad_row, why in [
        ("a.png,60,a\nb.png,notanumber,b\n", "line 3: the score 'notanumber' is not a number"),
        ("a.png,60,a\nb.png,70,b\nmissing.png,80,c\n", "line 4: .*missing.png: file not found"),
    ]:
        csv_path.write_text("image,mos,layer\n" + bad_row)
        with pytest.raises(ValueError, match=why) as err:
            load_ratings_csv(csv_path, viewer)
        assert "No rating was loaded" in str(err.value)
        assert layer.metadata[RATINGS_KEY] == {(): 50.0}
        assert [ly.name for ly in viewer.layers] == ["a"]
    csv_path.write_text("image,mos,layer\na.png,60,a\nb.png,70,b\n")
    assert load_ratings_csv(csv_path, viewer) == 2
    assert layer.metadata[RATINGS_KEY] == {(): 60.0}
    assert viewer.layers["b"].metadata[RATINGS_KEY] == {(): 70.0}


def test_rates_the_selected_layer_never_an_overlay(make_napari_viewer, qtbot, rgb, tiny_checkpoint):
    """Docked from the manifest (napari hands the widget a ``PublicOnlyProxy`` of the viewer), with
    three images and the maps of one open: the rating lands on the layer selected in the layer list,
    never on a map, and the buttons are off (with the reason) where no rating can be given."""
    from napari_pmt_iqa._widgets.overlays import OVERLAY_KEY
    from napari_pmt_iqa._widgets.rating_widget import rated_layers

    viewer = make_napari_viewer()
    astronaut = viewer.add_image(rgb, name="astronaut")
    chelsea = viewer.add_image(rgb[::-1].copy(), name="chelsea")
    coffee = viewer.add_image(rgb[:, ::-1].copy(), name="coffee")
    _, scorer = viewer.window.add_plugin_dock_widget("napari-pmt-iqa", "Score image quality")
    scorer.chooser.add_model(tiny_checkpoint)
    scorer.chooser.device_combo.setCurrentText("cpu")
    scorer.score(chelsea)
    qtbot.waitUntil(
        lambda: not scorer.is_running() and not scorer.overlays_pending(), timeout=30000
    )
    maps = [lay for lay in viewer.layers if OVERLAY_KEY in lay.metadata]
    assert len(maps) == 7
    _, w = viewer.window.add_plugin_dock_widget("napari-pmt-iqa", "Rate image quality")

    viewer.layers.selection.active = chelsea  # not the top layer: that is coffee, then the maps
    _press(viewer, "5")
    assert chelsea.metadata[RATINGS_KEY] == {(): STARS[5]}
    assert RATINGS_KEY not in astronaut.metadata and RATINGS_KEY not in coffee.metadata
    assert w.target_label.text() == "'chelsea'" and w.star_buttons[0].isEnabled()
    viewer.layers.selection.active = astronaut
    w.star_buttons[1].click()
    assert astronaut.metadata[RATINGS_KEY] == {(): STARS[2]}

    # a map selected: nothing to rate, the widget says which image the map belongs to
    quality = next(m for m in maps if m.metadata[OVERLAY_KEY]["key"] == "quality")
    viewer.layers.selection.active = quality
    assert not any(b.isEnabled() for b in (*w.star_buttons, w.set_button, w.clear_button))
    assert "quality map made by PMT-IQA is not an image" in w.target_label.text()
    assert "'chelsea'" in w.target_label.text()
    _press(viewer, "3")
    assert all(RATINGS_KEY not in m.metadata for m in maps)
    with pytest.raises(ValueError, match="quality map made by PMT-IQA is not an image"):
        set_rating(quality, (), 50.0)
    # maps never count as rated images, even with a rating forced into a map's metadata
    quality.metadata[RATINGS_KEY] = {(): 50.0}
    assert {ly.name for ly in rated_layers(viewer.layers)} == {"astronaut", "chelsea"}
    assert len(rated_pairs(viewer.layers)) == 2

    # another layer type, several images and nothing selected, the 3D view: no rating either
    pts = viewer.add_points(np.zeros((2, 2)), name="pts")
    viewer.layers.selection.active = pts
    assert not w.star_buttons[0].isEnabled() and "Points layer" in w.target_label.text()
    viewer.layers.selection.clear()
    assert not w.star_buttons[0].isEnabled() and "Select the image" in w.target_label.text()
    viewer.layers.selection.active = coffee
    assert w.star_buttons[0].isEnabled()
    # a stack in the 3D view shows no single plane (a 2D image can still be rated there)
    zstack = viewer.add_image(np.zeros((3, 40, 50), np.uint8), name="zstack")
    viewer.layers.selection.active = zstack
    assert w.star_buttons[0].isEnabled()
    viewer.dims.ndisplay = 3
    assert not w.star_buttons[0].isEnabled() and "2D view" in w.target_label.text()
    viewer.dims.ndisplay = 2
    assert w.star_buttons[0].isEnabled()


def test_plane_text():
    from napari_pmt_iqa._widgets.rating_widget import plane_text

    assert (
        plane_text(()) == ""
        and plane_text((2,)) == "plane 2"
        and plane_text((1, 3)) == "plane 1, 3"
    )
