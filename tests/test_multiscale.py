"""Pyramid levels: results laid over level 0 (``napari_pmt_iqa.multiscale``)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_pmt_iqa.multiscale import level_factors, pick_level, to_full_resolution
from napari_pmt_iqa.scoring import score


def test_pick_level_and_factors():
    shapes = [(8000, 8000, 3), (4000, 4000, 3), (2000, 2000, 3)]
    assert pick_level(shapes, rgb=True) == 1  # 16 MP fits, 64 MP does not
    assert pick_level(shapes, max_megapixels=1, rgb=True) == 2  # nothing fits: the coarsest
    assert pick_level([(5, 100, 100)]) == 0
    assert level_factors(shapes, 2, rgb=True) == (4.0, 4.0)


@pytest.mark.parametrize("factors", [(2.0, 2.0), (4.0, 4.0)])
def test_results_of_a_pyramid_level_move_to_level_0(tiny_model, factors):
    img = np.random.default_rng(0).integers(0, 255, (256, 288, 3), dtype=np.uint8)
    r = score(img, tiny_model, "cpu")
    r0 = to_full_resolution(r, factors)
    f = factors[0]
    # level-k pixel p (corner convention) spans [p f - f/2 + 1/2, ...) at level 0
    assert r0.maps.geometry.scale == (32 * f, 32 * f)
    assert r0.maps.geometry.translate[0] == pytest.approx(
        r.maps.geometry.translate[0] * f - f / 2 + 0.5
    )
    np.testing.assert_allclose(r0.crop_positions, r.crop_positions * f - f / 2 + 0.5)
    assert r0.crop_size == r.crop_size * f and r0.score == r.score
    assert r.maps.geometry.scale == (32.0, 32.0)  # the original is unchanged
