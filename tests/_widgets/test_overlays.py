"""Qt-free tests of the helpers that turn scoring results into layer data."""

import numpy as np
import pytest

from napari_pmt_iqa._widgets.overlays import (
    OVERLAY_KEY,
    LayerError,
    cell_extent,
    check_image_layer,
    class_colormap,
    class_colors,
    class_contrast_limits,
    map_transform,
    overlay_specs,
    result_metadata,
    score_meaning,
)
from napari_pmt_iqa.scoring import LATTICE, MapGeometry, score


def test_map_transform_pixel_centres():
    # the core's geometry: cells of 32 px whose first top-left corner is at pixel 96
    g = MapGeometry(scale=(32.0, 32.0), translate=(96.0, 100.0))
    scale, translate = map_transform(g, (1.0, 1.0), (0.0, 0.0))
    assert scale == (32.0, 32.0)
    # cell 0 covers pixels 96..127 -> napari data range [95.5, 127.5], centre 111.5
    assert translate == (111.5, 115.5)
    (y0, y1), (x0, x1) = cell_extent(g, 0, 0)
    assert (y0, y1) == (95.5, 127.5) and (x0, x1) == (99.5, 131.5)
    # with a layer scale and translate (and a leading stack axis passed through)
    scale, translate = map_transform(g, (3.0, 2.0, 0.5), (7.0, 10.0, -4.0))
    assert scale == (3.0, 64.0, 16.0)
    assert translate == (7.0, 10.0 + 2.0 * 111.5, -4.0 + 0.5 * 115.5)


def test_overlays_match_crop_grid(tiny_model, rgb_image):
    res = score(rgb_image, tiny_model, device="cpu")
    specs = overlay_specs(res, "img", (2.0, 2.0), (5.0, -3.0))
    keys = [s.key for s in specs]
    assert keys == ["quality", "class", "confidence", "scale0", "scale1", "scale2", "scale3"]
    q = specs[0]
    assert q.data.shape == res.maps.quality.shape  # the crop grid, extended to the borders
    np.testing.assert_allclose(res.maps.crop_grid(q.data), res.crop_scores, rtol=1e-5)
    assert q.kwargs["contrast_limits"] == tuple(float(v) for v in res.score_range)
    assert "quality map" in q.name and res.units in q.name
    assert q.kwargs["visible"] and not specs[1].kwargs["visible"]
    # cell (i, j) is centred on the centre of crop (i, j): corner + crop/2 - 0.5 (pixel centres)
    cy, cx = res.crop_positions[1, 2] + res.crop_size / 2 - 0.5
    sy, sx = q.kwargs["scale"]
    ty, tx = q.kwargs["translate"]
    top, _, left, _ = res.maps.padding
    assert ty + (top + 1) * sy == pytest.approx(5.0 + 2.0 * cy)
    assert tx + (left + 2) * sx == pytest.approx(-3.0 + 2.0 * cx)
    assert sy == pytest.approx(2.0 * LATTICE)
    # the class map: the class numbered from 1, in steps of colour
    c = specs[1]
    assert c.kind == "image" and c.data.min() >= 1 and c.data.dtype == np.int32
    assert c.kwargs["contrast_limits"] == (0.5, 10.5)
    np.testing.assert_array_equal(c.data, res.maps.class_map + 1)
    # scale maps: symmetric limits in score units, named after their tap
    for t, s in enumerate(specs[3:]):
        lo, hi = s.kwargs["contrast_limits"]
        assert lo == -hi and hi >= np.abs(res.maps.scale_maps).max() - 1e-6
        assert res.maps.tap_names[t] in s.name
        assert s.kwargs["metadata"][OVERLAY_KEY]["source"] == "img"


def test_stack_overlays_and_metadata(tiny_model, rgb_image):
    stack = np.stack([rgb_image, rgb_image[::-1]])
    res = score(stack, tiny_model, device="cpu")
    specs = overlay_specs(res, "stack", (4.0, 1.0, 1.0), (2.0, 0.0, 0.0))
    assert specs[0].data.shape == (2,) + res.planes[0].maps.quality.shape
    assert specs[3].data.shape == (2,) + res.planes[0].maps.quality.shape
    assert specs[0].kwargs["scale"][0] == 4.0 and specs[0].kwargs["translate"][0] == 2.0
    meta = result_metadata(res, "m")
    assert len(meta["scores"]) == 2 and len(meta["planes"]) == 2
    import json

    json.dumps(meta)
    assert "higher is better" in score_meaning(res)


def test_check_image_layer_rejects_non_images():
    from napari.layers import Image, Labels, Points

    check_image_layer(Image(np.zeros((10, 10))))
    with pytest.raises(LayerError, match="Labels layer"):
        check_image_layer(Labels(np.zeros((10, 10), int), name="lab"))
    with pytest.raises(LayerError, match="Points layer"):
        check_image_layer(Points(np.zeros((3, 2))))
    with pytest.raises(LayerError, match="No image layer"):
        check_image_layer(None)
    with pytest.raises(LayerError, match="quality map"):
        check_image_layer(Image(np.zeros((4, 4)), metadata={OVERLAY_KEY: {"source": "x"}}))


def test_class_colormap_steps_from_red_to_green():
    cmap = class_colormap(10)
    lo, hi = class_contrast_limits(10)
    # each class value falls in the middle of its own colour step
    values = (np.arange(1, 11) - lo) / (hi - lo)
    shown = np.asarray(cmap.map(values))
    np.testing.assert_allclose(shown, class_colors(10), atol=1e-6)
    assert len({tuple(np.round(c, 4)) for c in shown}) == 10
    worst, best = shown[0], shown[-1]
    assert worst[0] > worst[1] and best[1] > best[0]  # red for the worst class, green for the best
    # lower-is-better units: the lowest class is the best one
    low_first = np.asarray(class_colormap(10, higher_is_better=False).map(values))
    assert low_first[0][1] > low_first[0][0]
    # a one-class model still gets a colormap vispy can draw (two colours)
    one = class_colormap(1)
    assert len(one.colors) == 2 and np.allclose(one.map(np.array([0.5]))[0], class_colors(1)[0])


def test_defect_overlays_only_for_a_model_with_a_defect_head(tiny_model, rgb_image):
    from napari_pmt_iqa._widgets.overlays import defect_text
    from napari_pmt_iqa.model import PMTIQA
    from napari_pmt_iqa.training.defects import DefectFit, attach_defect_head

    plain = score(rgb_image, tiny_model, device="cpu")
    assert not [s for s in overlay_specs(plain, "img", (1, 1), (0, 0)) if "defect" in s.key]
    assert defect_text(plain) == "" and "defect_levels" not in plain.to_dict()
    m = PMTIQA(backbone="tiny", pretrained=False).eval()
    m.load_state_dict(tiny_model.state_dict())
    kinds = ("blur", "noise")
    w = np.zeros((2, m.defect_dim), np.float32)
    attach_defect_head(m, DefectFit(kinds, w, np.array([1.0, 7.0], np.float32), 1.0, 1, 1))
    res = score(rgb_image, m, device="cpu")
    specs = {s.key: s for s in overlay_specs(res, "img", (2.0, 2.0), (5.0, -3.0))}
    assert {"defect_blur", "defect_noise"} <= set(specs)
    d = specs["defect_noise"]
    assert d.kwargs["contrast_limits"] == (0.0, 5.0) and not d.kwargs["visible"]
    assert d.kwargs["scale"] == specs["quality"].kwargs["scale"]
    assert d.data.shape == specs["quality"].data.shape
    np.testing.assert_allclose(specs["defect_blur"].data, 1.0)
    np.testing.assert_allclose(d.data, 5.0)  # 7 is clipped to the top level
    # a head whose levels vary: each layer is its own family's map, cell for cell
    rng = np.random.default_rng(0)
    w = rng.normal(0, 0.5, (2, m.defect_dim)).astype(np.float32)
    attach_defect_head(m, DefectFit(kinds, w, np.array([2.5, 2.5], np.float32), 1.0, 1, 1))
    varied = score(rgb_image, m, device="cpu")
    vs = {s.key: s for s in overlay_specs(varied, "img", (1.0, 1.0), (0.0, 0.0))}
    for k, kind in enumerate(kinds):
        np.testing.assert_array_equal(vs[f"defect_{kind}"].data, varied.maps.defects[k])
    assert np.ptp(varied.maps.defects) > 0
    assert d.kwargs["metadata"][OVERLAY_KEY]["units"] == "degradation level 0-5"
    assert res.to_dict()["defect_worst"] == {"blur": 1.0, "noise": 5.0}
    assert "noise 5.0 (mean 5.0)" in defect_text(res)
