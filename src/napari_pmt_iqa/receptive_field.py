"""How much context a window needs: each backbone's receptive field and the tile halo built on it.

When a plane is too large for one backbone pass it is scored in tiles (``scoring``). A window near
a tile's border would see the tile's zero padding where one pass sees the image, so every tile
carries a *halo* of context around its windows. The halo comes from the backbone's receptive field:

* The **theoretical** receptive field of the coarsest tap (stride 32) is measured by
  :func:`measure_receptive_field`: the support of the gradient of one stage-32 feature with
  respect to the input, i.e. every input pixel that can change it. With a halo that large, tiled
  and one-pass features are equal (up to float rounding): :data:`THEORETICAL_EXTENT` holds the
  measured extents (pixels beyond the feature's own 32 x 32 cell, the larger side).
* For EfficientNet-Lite that field is huge (851-1115 px wide: many depthwise 5 x 5 layers) while
  the features depend on only a small part of it (the *effective* receptive field). Their halo is
  the smallest multiple of 32 at which the four tap vectors of interior windows, computed in a
  tile with only that much context, differ from one pass by at most :data:`TAP_TOLERANCE`
  (relative norm) on real photos with the ImageNet weights: :data:`EFFECTIVE_HALO`. With the
  default model that keeps every crop score within 0.01 points of one pass
  (``tests/test_receptive_field.py``, ``docs/results.md``).
* The ResNets (whose ImageNet weights cannot be had offline here, so no effective field could be
  measured) and the tiny test backbone use their full theoretical field: exact.

``benchmarks/measure_halo.py`` re-measures both tables.
"""

from __future__ import annotations

import math

LATTICE = 32

#: Measured theoretical receptive field of the stride-32 tap beyond its 32-pixel cell (pixels,
#: the larger of the two sides) per backbone: ``measure_receptive_field`` on a 1536 px input.
THEORETICAL_EXTENT: dict[str, int] = {
    "tiny": 29,
    "resnet18": 217,
    "resnet34": 449,
    "resnet50": 213,
    "efficientnet_lite0": 425,
    "efficientnet_lite1": 542,
    "efficientnet_lite2": 554,
}

#: Largest relative change of a window's tap vectors allowed by the effective halo.
TAP_TOLERANCE = 1e-3

#: Measured effective halos (pixels, multiples of 32) where they are smaller than the theoretical
#: field: the smallest halo with a tap error within :data:`TAP_TOLERANCE` (module docstring).
EFFECTIVE_HALO: dict[str, int] = {
    "efficientnet_lite0": 320,
    "efficientnet_lite1": 384,
    "efficientnet_lite2": 384,
}


def _round_up(v: float) -> int:
    return int(math.ceil(v / LATTICE) * LATTICE)


def tile_halo(backbone: str) -> int:
    """Context (pixels, a multiple of 32) around the windows of a tile for ``backbone``.

    The effective halo where one was measured, else the theoretical receptive field; a backbone
    unknown here gets the largest halo of the table.
    """
    if backbone in EFFECTIVE_HALO:
        return EFFECTIVE_HALO[backbone]
    if backbone in THEORETICAL_EXTENT:
        return _round_up(THEORETICAL_EXTENT[backbone])
    return _round_up(max(THEORETICAL_EXTENT.values()))


def measure_receptive_field(backbone, size: int = 1536) -> list[tuple[int, int]]:
    """Theoretical receptive field of each of the four stage maps of ``backbone`` (a module from
    :func:`~napari_pmt_iqa.model.backbones.build_backbone`, or anything returning four maps at
    strides 4, 8, 16 and 32).

    The gradient of one feature at the centre of each stage map is taken with respect to a random
    ``size`` x ``size`` input; its support (every pixel whose gradient is not zero) is the field.

    Returns
    -------
    list of (before, after)
        Per stage: how many pixels the field reaches above (left of) and below (right of) the
        feature's own cell of ``stride`` pixels.
    """
    import torch

    from .model.backbones import STAGE_STRIDES

    was_training = backbone.training
    backbone.eval()
    try:
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(1, 3, size, size, generator=gen, requires_grad=True)
        maps = backbone(x)
        out = []
        for m, stride in zip(maps, STAGE_STRIDES):
            u = m.shape[-1] // 2
            (g,) = torch.autograd.grad(m[0, :, u, u].sum(), x, retain_graph=True)
            support = (g[0].abs().sum(0) > 0).nonzero()
            lo = int(support[:, 1].min())
            hi = int(support[:, 1].max())
            if lo == 0 or hi == size - 1:
                raise ValueError(
                    f"The receptive field reaches the border of the {size} px test input; "
                    "measure with a larger size."
                )
            out.append((u * stride - lo, hi - ((u + 1) * stride - 1)))
        return out
    finally:
        backbone.train(was_training)
