"""Cached maps for adapting the backbone's pointwise head in the few-shot recipe.

Training the heads alone on cached features (:mod:`.features`) leaves the backbone as ImageNet
and the first training made it. The few-shot recipe also adapts the backbone's *last* layer when
it is pointwise (EfficientNet's 1 x 1 head convolution with its batch norm, see
:func:`~napari_pmt_iqa.model.backbones.pointwise_head`): everything before it stays frozen, so the
map that enters it can be cached once per image like the pooled stage maps, and the head runs on
the cached map at every step. Measured on LIVE-C ratings (``docs/results.md`` section 8) this
raises what 100 ratings reach by about 0.01-0.02 SRCC over the heads alone.

The head is not linear (batch norm, then ReLU6, then the window's average), so its input map is
cached whole, not pooled: :func:`window_blocks` keeps, per image, the stride-32 map of one region
covering every lattice window (images of up to ``2 * max_windows`` windows that fit one backbone
pass), or else of a few seeded square patches of windows, and the pooled rows of the same windows
(rows ordered map by map, row-major within a map). :func:`head_tap` turns maps (or parts of them)
into the fourth tap's pooled rows, exactly as :meth:`~napari_pmt_iqa.model.PMTIQA.window_pooled`
pools them on the whole image.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

#: Windows per side of one patch of a large image.
PATCH_WINDOWS = 4


def window_cells(model) -> int:
    """Cells of the stride-32 map per window side (7 for a 224 crop)."""
    return int(model.config.crop_size) // int(model.lattice)


def map_windows(m, cells: int) -> tuple[int, int]:
    """``(wy, wx)``: lattice windows per column and row of a cached ``(C, h, w)`` map."""
    return int(m.shape[-2]) - cells + 1, int(m.shape[-1]) - cells + 1


def supports_head_adaptation(model) -> bool:
    """Whether ``model``'s backbone has a pointwise head the recipe can adapt (and taps it)."""
    from ..model.backbones import pointwise_head

    return pointwise_head(model.backbone) is not None and bool(model.config.multiscale)


def _regions(ny: int, nx: int, max_windows: int | None, whole: bool, seed, patch: int):
    """Window rectangles ``(i0, j0, i1, j1)`` to cache: the whole grid, or a seeded choice of the
    non-overlapping patches that tile it (so that no window is cached twice)."""
    if whole:
        return [(0, 0, ny, nx)]
    ph, pw = min(patch, ny), min(patch, nx)
    if max_windows is None:  # patches that tile the whole grid
        return [
            (i, j, min(ny, i + ph), min(nx, j + pw))
            for i in range(0, ny, ph)
            for j in range(0, nx, pw)
        ]
    k = max(1, math.ceil(int(max_windows) / (ph * pw)))
    rng = np.random.default_rng(seed)
    # the tiling starts at a seeded offset, so that every window can be drawn
    oy, ox = int(rng.integers(0, ny % ph + 1)), int(rng.integers(0, nx % pw + 1))
    cands = [(i, j) for i in range(oy, ny - ph + 1, ph) for j in range(ox, nx - pw + 1, pw)]
    pick = np.sort(rng.choice(len(cands), min(k, len(cands)), replace=False))
    return [(cands[p][0], cands[p][1], cands[p][0] + ph, cands[p][1] + pw) for p in pick]


def window_blocks(
    model,
    image: np.ndarray,
    max_windows: int | None = None,
    seed: int = 0,
    memory_mb: float = 1024,
    precision: str = "fp32",
    patch: int = PATCH_WINDOWS,
    whole_up_to: int | None = None,
):
    """Pooled rows and head-input maps of the cached windows of one image.

    Parameters
    ----------
    model
        A :class:`~napari_pmt_iqa.model.PMTIQA` whose backbone has a pointwise head
        (:func:`supports_head_adaptation`); used in eval mode, without gradients.
    image
        ``(H, W, 3)`` uint8, both sides at least one crop.
    max_windows
        About how many windows to keep: an image of up to ``whole_up_to`` windows (default twice
        ``max_windows``) that fits one backbone pass keeps all of them (one map); a larger one
        keeps ``ceil(max_windows / 16)`` seeded, non-overlapping patches of 4 x 4 windows, each
        computed with the backbone's context around it as scoring's tiles are (``None``: every
        window).
    seed, memory_mb, precision
        As for :func:`~.features.window_features`.

    Returns
    -------
    (torch.Tensor, list of torch.Tensor, int)
        ``(k, D)`` float32 rows (the layout of :class:`~.features.FeatureLayout`), the float32
        ``(C, h, w)`` maps entering the head (their windows, map by map and row-major, are the
        rows), and the number of windows of the whole image.
    """
    import torch

    from ..devices import autocast
    from ..receptive_field import tile_halo
    from ..scoring import LATTICE, _prepare, _tile_size
    from .features import region_pass, window_positions

    dev = next(model.parameters()).device
    crop = model.config.crop_size
    prep = _prepare(image, crop)
    rgb = prep.rgb
    H, W = rgb.shape[:2]
    ny, nx = window_positions(H, W, crop, LATTICE)
    T = _tile_size(model.config.backbone, memory_mb, crop)
    fits = H <= T and W <= T
    if whole_up_to is None and max_windows is not None:
        whole_up_to = 2 * int(max_windows)
    whole = fits and (whole_up_to is None or ny * nx <= int(whole_up_to))
    regions = _regions(ny, nx, max_windows, whole, (int(seed), 4243, H, W), patch)
    halo = 0 if whole else tile_halo(model.config.backbone)
    bb = model.backbone
    rows, maps = [], []
    was_training = bb.training
    bb.eval()
    try:
        with torch.no_grad(), autocast(dev, precision):
            for region in regions:
                r, m = region_pass(model, rgb, region, halo, split=True)
                rows.append(r.clone())
                maps.append(m.clone())
    finally:
        bb.train(was_training)
    return torch.cat(rows), maps, ny * nx


def head_tap(model, maps: Sequence):
    """The fourth tap's pooled rows ``(R, C4, 1, 1)`` of every window of ``maps`` (with gradients).

    ``maps`` are ``(C, h, w)`` head-input maps (or parts of them); their windows are taken map by
    map, row-major, as :func:`window_blocks` orders its rows.
    """
    import torch
    import torch.nn.functional as F

    from ..model.backbones import pointwise_head

    head = pointwise_head(model.backbone)
    cells = window_cells(model)
    dev = next(model.parameters()).device
    out: list = [None] * len(maps)
    by_shape: dict[tuple, list[int]] = {}
    for k, m in enumerate(maps):
        by_shape.setdefault(tuple(m.shape), []).append(k)
    for ks in by_shape.values():
        x = torch.stack([maps[k] for k in ks]).to(dev)
        p = F.avg_pool2d(head(x), kernel_size=cells, stride=1)  # N, C4, wy, wx
        p = p.flatten(2).transpose(1, 2)  # N, wy * wx, C4
        for r, k in enumerate(ks):
            out[k] = p[r]
    return torch.cat(out)[:, :, None, None]


def adapted_parameters(model) -> list:
    """The backbone head's trainable parameters (its convolution and batch-norm affine)."""
    from ..model.backbones import pointwise_head

    head = pointwise_head(model.backbone)
    return [] if head is None else [p for p in head.parameters()]


__all__ = [
    "PATCH_WINDOWS",
    "adapted_parameters",
    "head_tap",
    "map_windows",
    "supports_head_adaptation",
    "window_blocks",
    "window_cells",
]
