"""Quality maps cover the whole image: edge cells extend to the borders, laid by scale/translate."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_pmt_iqa.model import PMTIQA
from napari_pmt_iqa.scoring import LATTICE, score


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return PMTIQA(backbone="tiny", pretrained=False).eval()


@pytest.mark.parametrize(
    "shape", [(896, 896, 3), (500, 517, 3), (150, 200, 3), (300, 1000, 3), (224, 224)]
)
def test_every_pixel_lies_under_a_cell(tiny, shape):
    img = (np.random.default_rng(0).random(shape) * 255).astype(np.uint8)
    r = score(img, tiny, device="cpu")
    m = r.maps
    (sy, sx), (ty, tx) = m.geometry.scale, m.geometry.translate
    h, w = shape[:2]
    my, mx = m.quality.shape
    # the cells span [ty, ty + my * sy) x [tx, tx + mx * sx): the whole image, overhanging it
    # by less than one cell
    assert ty <= 0 and tx <= 0 and ty > -sy and tx > -sx
    assert ty + my * sy >= h and tx + mx * sx >= w
    assert ty + (my - 1) * sy < h and tx + (mx - 1) * sx < w
    for a in (m.class_map, m.confidence):
        assert a.shape == (my, mx)
    assert m.scale_maps.shape == (4, my, mx)


def test_the_crop_grid_is_kept_and_edges_take_the_nearest_crop(tiny):
    img = (np.random.default_rng(1).random((500, 517, 3)) * 255).astype(np.uint8)
    r = score(img, tiny, device="cpu")
    m = r.maps
    t, b, left, right = m.padding
    assert min(m.padding) >= 1
    np.testing.assert_array_equal(m.crop_grid(m.quality), r.crop_scores.astype(np.float32))
    np.testing.assert_array_equal(m.crop_grid(m.scale_maps).shape[1:], r.crop_scores.shape)
    # a border cell repeats the crop cell nearest to it
    assert m.quality[0, 0] == pytest.approx(r.crop_scores[0, 0])
    assert m.quality[-1, -1] == pytest.approx(r.crop_scores[-1, -1])
    assert m.class_map[0, -1] == m.crop_grid(m.class_map)[0, -1]
    # cell (t, left) is the first crop's cell: centred on the centre of crop (0, 0)
    (sy, sx), (ty, tx) = m.geometry.scale, m.geometry.translate
    cy, cx = r.crop_positions[0, 0] + r.crop_size / 2
    assert ty + (t + 0.5) * sy == pytest.approx(cy)
    assert tx + (left + 0.5) * sx == pytest.approx(cx)
    assert sy == sx == LATTICE
