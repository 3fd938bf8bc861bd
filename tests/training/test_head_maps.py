"""Cached head-input maps for adapting the backbone head (training/head_maps.py), tiny backbone."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from napari_pmt_iqa.model import PMTIQA
from napari_pmt_iqa.scoring import score
from napari_pmt_iqa.training.features import window_features
from napari_pmt_iqa.training.head_maps import (
    adapted_parameters,
    head_tap,
    supports_head_adaptation,
    window_blocks,
    window_cells,
)
from napari_pmt_iqa.training.heads_fit import FeaturePack, batch_loss, image_scores


@pytest.fixture()
def image():
    return (np.random.default_rng(0).random((330, 460, 3)) * 255).astype(np.uint8)


def test_whole_map_rows_and_head_give_the_windows_of_window_features(tiny_model, image):
    rows, maps, n = window_blocks(tiny_model, image, max_windows=None)
    feats, n2 = window_features(tiny_model, image)
    assert n == n2 == rows.shape[0] == 4 * 8  # 330 x 460 -> 320 x 448: 4 x 8 windows
    assert len(maps) == 1
    torch.testing.assert_close(rows, feats)
    with torch.no_grad():
        tap4 = head_tap(tiny_model, maps)
    c4 = tap4.shape[1]
    torch.testing.assert_close(tap4.flatten(1), feats[:, -c4:], rtol=1e-5, atol=1e-5)
    # the pack's scores with the maps are those of score() (fast path), window by window averaged
    got = image_scores(tiny_model, FeaturePack([rows], [0.0], [maps]))[0]
    ref = score(image, model=tiny_model, device="cpu", maps=True).crop_scores.mean()
    scale = getattr(tiny_model, "score_scale", None)
    ref = scale.to_internal(ref) if scale is not None else ref
    assert got == pytest.approx(float(ref), abs=1e-3)


def test_a_large_image_keeps_seeded_patches(tiny_model, image):
    rows, maps, n = window_blocks(tiny_model, image, max_windows=10, seed=2)
    assert n == 32 and len(maps) == 1 and rows.shape[0] == 16  # one patch of 4 x 4 windows
    again, maps2, _ = window_blocks(tiny_model, image, max_windows=10, seed=2)
    torch.testing.assert_close(rows, again)
    torch.testing.assert_close(maps[0], maps2[0])
    cells = window_cells(tiny_model)
    assert maps[0].shape[1:] == (4 + cells - 1, 4 + cells - 1)
    full, _, _ = window_blocks(tiny_model, image, max_windows=None)
    # every patch window is one of the image's windows (the patch had context around it)
    for r in rows:
        assert (full - r).abs().amax(1).min() < 1e-3
    with torch.no_grad():
        tap4 = head_tap(tiny_model, maps)
    torch.testing.assert_close(tap4.flatten(1), rows[:, -tap4.shape[1] :], rtol=1e-4, atol=1e-4)


def test_patches_never_repeat_a_window_and_whole_up_to_decides_the_whole_map(tiny_model, image):
    from napari_pmt_iqa.training.head_maps import _regions

    for seed in range(20):
        regs = _regions(9, 13, 40, False, seed, 4)
        assert len(regs) == 3  # ceil(40 / 16), from the 2 x 3 patches that tile the grid
        cells = {(i, j) for i0, j0, i1, j1 in regs for i in range(i0, i1) for j in range(j0, j1)}
        assert len(cells) == 3 * 16
        assert all(0 <= i0 and i1 <= 9 and 0 <= j0 and j1 <= 13 for i0, j0, i1, j1 in regs)
    assert len(_regions(9, 13, 1000, False, 0, 4)) == 6  # no more patches than fit
    # 32 windows: one whole map up to whole_up_to, else patches
    _, maps, _ = window_blocks(tiny_model, image, max_windows=16, whole_up_to=32)
    assert len(maps) == 1 and maps[0].shape[1:] == (4 + 6, 8 + 6)
    rows, maps, _ = window_blocks(tiny_model, image, max_windows=16, whole_up_to=31)
    assert len(maps) == 1 and rows.shape[0] == 16


def test_block_batches_and_the_loss_reach_the_head(tiny_model, image):
    model = PMTIQA(backbone="tiny", pretrained=False).eval()
    model.load_state_dict(tiny_model.state_dict())
    r1, m1, _ = window_blocks(model, image, max_windows=None)
    r2, m2, _ = window_blocks(model, image[:260, :300], max_windows=None)
    pack = FeaturePack([r1, r2], [30.0, 70.0], [m1, m2])
    rng = np.random.default_rng(0)
    rows, seg, subs, levels = pack.batch_blocks([0, 1], 8, rng, window_cells(model))
    assert levels is None
    assert rows.shape[0] == 8 + 2 * 3  # 2 x 4 windows of the first, all 2 x 3 of the second
    assert seg.tolist() == [0] * 8 + [1] * 6
    with torch.no_grad():
        tap4 = head_tap(model, subs)
    torch.testing.assert_close(tap4.flatten(1), rows[:, -tap4.shape[1] :], rtol=1e-5, atol=1e-5)
    model.train()
    model.backbone.eval()
    loss, _ = batch_loss(
        model,
        pack,
        [0, 1],
        np.random.default_rng(1),
        windows=8,
        reg_weight=1.0,
        rank_weight=1.0,
        rank_margin=0.5,
        cls_weight=0.1,
        anchor=0.0,
        start_params=None,
    )
    loss.backward()
    head = adapted_parameters(model)
    assert head and all(p.grad is not None and p.grad.abs().sum() > 0 for p in head)
    stem = next(model.backbone.stem.parameters())
    assert stem.grad is None  # nothing before the head is touched


def test_only_pointwise_heads_of_multiscale_models_are_adapted(tiny_model):
    assert supports_head_adaptation(tiny_model)
    assert not supports_head_adaptation(PMTIQA(backbone="tiny", pretrained=False, multiscale=False))


def _module_path_tap(model, maps):
    """The fourth tap as the modules compute it (convolution, batch norm, activation, pooling)."""
    import torch.nn.functional as F

    from napari_pmt_iqa.model.backbones import pointwise_head

    x = torch.stack(list(maps))
    p = F.avg_pool2d(pointwise_head(model.backbone)(x), window_cells(model), stride=1)
    return p.flatten(2).transpose(1, 2).reshape(-1, p.shape[1])


def test_the_matrix_path_gives_the_modules_values_and_gradients(tiny_model, image):
    from napari_pmt_iqa.training.head_maps import _pointwise_parts, channels_last

    model = copy.deepcopy(tiny_model).float().eval()  # the fixture is shared: a copy
    _, maps, _ = window_blocks(model, image, max_windows=None)
    head = adapted_parameters(model)
    with torch.no_grad():  # batch-norm statistics that are not the identity
        bn = model.backbone.head[1]
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.2, 0.2)
    assert _pointwise_parts(model.backbone.head) is not None  # the fast path applies
    blocks = [maps[0][:, 1:9, 2:12], maps[0][:, 0:8, 0:10]]
    stored = [channels_last(b) for b in blocks]  # as a FeaturePack stores them
    for p in head:
        p.grad = None
    fast = head_tap(model, stored).flatten(1)
    weights = torch.randn_like(fast)
    (fast * weights).sum().backward()
    g_fast = [p.grad.clone() for p in head]
    for p in head:
        p.grad = None
    ref = _module_path_tap(model, blocks)
    (ref * weights).sum().backward()
    torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-5)
    for a, b in zip(g_fast, [p.grad for p in head]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    with torch.no_grad():  # without gradients (in-place activation) the same numbers
        torch.testing.assert_close(head_tap(model, stored).flatten(1), ref.detach())


def test_heads_the_matrix_path_cannot_run_use_the_modules(tiny_model, image):
    from napari_pmt_iqa.training.head_maps import _pointwise_parts

    model = copy.deepcopy(tiny_model).float().eval()
    _, maps, _ = window_blocks(model, image, max_windows=None)
    model.backbone.head.train()  # batch norm with batch statistics: not a fixed affine
    assert _pointwise_parts(model.backbone.head) is None
    with torch.no_grad():
        got = head_tap(model, maps).flatten(1)
        ref = _module_path_tap(model, maps)
    torch.testing.assert_close(got, ref)
    model.backbone.head.eval()
    assert _pointwise_parts(torch.nn.Sequential(torch.nn.Conv2d(4, 4, 3))) is None
    conv3 = torch.nn.Sequential(
        torch.nn.Conv2d(4, 8, 3), torch.nn.BatchNorm2d(8).eval(), torch.nn.ReLU6()
    )
    assert _pointwise_parts(conv3) is None  # not pointwise


def test_window_matrix_averages_as_avg_pool2d():
    import torch.nn.functional as F

    from napari_pmt_iqa.training.head_maps import _window_matrix

    y = torch.randn(3, 5, 9, 11)
    mat = _window_matrix(9, 11, 4, torch.float32, "cpu")
    got = torch.matmul(mat, y.flatten(2).transpose(1, 2))  # N, windows, C
    ref = F.avg_pool2d(y, 4, stride=1).flatten(2).transpose(1, 2)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)


def test_large_maps_are_averaged_without_a_pooling_matrix(tiny_model, monkeypatch):
    from napari_pmt_iqa.training import head_maps

    model = copy.deepcopy(tiny_model).float().eval()
    cells = window_cells(model)
    m = torch.rand(model.backbone.head[0].in_channels, cells + 5, cells + 7)
    with torch.no_grad():
        small = head_tap(model, [m]).flatten(1)
        monkeypatch.setattr(head_maps, "_MAX_WINDOW_MATRIX", 1)  # every map is "large"
        head_maps.clear_cache()
        large = head_tap(model, [m]).flatten(1)
    assert head_maps._WINDOW_MATRICES == {}
    torch.testing.assert_close(large, small, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(large, _module_path_tap(model, [m]), rtol=1e-5, atol=1e-6)


def test_a_pooling_matrix_first_built_in_inference_mode_still_trains(tiny_model, image):
    from napari_pmt_iqa.training import head_maps

    model = copy.deepcopy(tiny_model).float().eval()
    _, maps, _ = window_blocks(model, image, max_windows=None)
    head_maps.clear_cache()
    with torch.inference_mode():
        head_tap(model, maps)
    head_tap(model, maps).sum().backward()  # would fail with an inference-mode matrix
    assert model.backbone.head[0].weight.grad is not None
    head_maps.clear_cache()
