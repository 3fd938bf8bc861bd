"""Tile halos from the backbones' receptive fields; tiled scores of the default model match one pass."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_pmt_iqa import receptive_field as rf
from napari_pmt_iqa import scoring
from napari_pmt_iqa.model.backbones import BACKBONES, build_backbone


def test_every_backbone_has_a_halo_that_covers_its_measured_field():
    for name in BACKBONES:
        h = rf.tile_halo(name)
        assert h % 32 == 0 and h > 0
        if name in rf.EFFECTIVE_HALO:  # measured effective field, smaller than the theoretical one
            assert h < rf.THEORETICAL_EXTENT[name]
        else:  # the whole theoretical field: exact
            assert h >= rf.THEORETICAL_EXTENT[name]
    assert rf.tile_halo("unknown") >= max(rf.THEORETICAL_EXTENT.values())


def test_the_tiny_backbone_field_is_what_the_table_says():
    torch.manual_seed(0)
    fields = rf.measure_receptive_field(build_backbone("tiny"), size=256)
    assert max(fields[-1]) == rf.THEORETICAL_EXTENT["tiny"]
    assert [max(f) for f in fields] == sorted(max(f) for f in fields)  # deeper sees further


def test_a_field_reaching_the_border_of_the_test_input_is_refused():
    with pytest.raises(ValueError, match="larger size"):
        rf.measure_receptive_field(build_backbone("tiny"), size=32)


def _photo(h, w, seed=0):
    from PIL import Image
    from skimage import data

    img = Image.fromarray(data.astronaut()).resize((w, h), Image.BICUBIC)
    rng = np.random.default_rng(seed)
    out = np.asarray(img).astype(np.float64) + rng.normal(0, 4, (h, w, 3))
    return np.clip(out, 0, 255).astype(np.uint8)


def test_tiled_scores_of_the_default_model_match_one_pass_at_three_budgets():
    """Stated tolerance: 0.1 point per crop on the 0-100 scale (measured: below 0.01)."""
    torch.set_num_threads(max(1, torch.get_num_threads()))
    model = scoring.get_model(None, "cpu")
    assert model.config.backbone == "efficientnet_lite0"
    img = _photo(1408, 1536)
    one = scoring.score(img, model, "cpu", maps=False, memory_mb=100_000)
    for budget, min_tiles in ((100, 30), (450, 12), (600, 6)):
        calls = []
        tiled = scoring.score(
            img,
            model,
            "cpu",
            maps=False,
            memory_mb=budget,
            progress=lambda d, t, c=calls: c.append(t),
        )
        assert calls[-1] >= min_tiles  # really tiled, in both directions
        err = float(np.abs(tiled.crop_scores - one.crop_scores).max())
        assert err < 0.1, f"budget {budget} MB: a crop moved by {err:.3f} points"
        assert abs(tiled.score - one.score) < 0.01
