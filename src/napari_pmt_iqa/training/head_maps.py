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
    levels: bool = False,
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
    seed, memory_mb, precision, levels
        As for :func:`~.features.window_features`.

    Returns
    -------
    (torch.Tensor, list of torch.Tensor, int) or (..., torch.Tensor | None)
        ``(k, D)`` float32 rows (the layout of :class:`~.features.FeatureLayout`), the float32
        ``(C, h, w)`` maps entering the head (their windows, map by map and row-major, are the
        rows), and the number of windows of the whole image; where ``levels``, fourth the
        ``(k, K)`` defect levels of the rows (``None`` for a model without a defect head).
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
    rows, maps, lvs = [], [], []
    was_training = bb.training
    bb.eval()
    try:
        with torch.no_grad(), autocast(dev, precision):
            for region in regions:
                r, m, lv = region_pass(model, rgb, region, halo, split=True, levels=levels)
                rows.append(r.clone())
                maps.append(m.clone())
                if lv is not None:
                    lvs.append(lv.clone())
    finally:
        bb.train(was_training)
    if not levels:
        return torch.cat(rows), maps, ny * nx
    return torch.cat(rows), maps, ny * nx, (torch.cat(lvs) if lvs else None)


def head_tap(model, maps: Sequence):
    """The fourth tap's pooled rows ``(R, C4, 1, 1)`` of every window of ``maps`` (with gradients).

    ``maps`` are ``(C, h, w)`` head-input maps (or parts of them); their windows are taken map by
    map, row-major, as :func:`window_blocks` orders its rows. Maps stored channels-last
    (:func:`channels_last`) are read without a transposing copy.

    A head of a 1 x 1 convolution, an eval-mode batch norm and an elementwise activation (the
    EfficientNet-Lite head) runs as one matrix product with the batch norm folded into it, and
    the window average as a second one (:func:`_pointwise_matmul`): the same numbers as the
    modules (to float rounding), cheaper than the convolution, batch-norm and pooling kernels on
    these small maps (``benchmarks/bench_head_step.py``: a training step 0.86 times, scoring
    held-out images 0.63 times the modules' time). Any other head runs as its modules.
    """
    import torch
    import torch.nn.functional as F

    from ..model.backbones import pointwise_head

    head = pointwise_head(model.backbone)
    cells = window_cells(model)
    dev = next(model.parameters()).device
    parts = _pointwise_parts(head)
    out: list = [None] * len(maps)
    by_shape: dict[tuple, list[int]] = {}
    for k, m in enumerate(maps):
        by_shape.setdefault(tuple(m.shape), []).append(k)
    for ks in by_shape.values():
        if parts is not None:
            x = torch.stack([maps[k].permute(1, 2, 0) for k in ks]).to(dev)  # N, h, w, C
            p = _pointwise_matmul(parts, x, cells)  # N, wy * wx, C4
        else:
            x = torch.stack([maps[k] for k in ks]).to(dev)
            p = F.avg_pool2d(head(x), kernel_size=cells, stride=1)  # N, C4, wy, wx
            p = p.flatten(2).transpose(1, 2)  # N, wy * wx, C4
        for r, k in enumerate(ks):
            out[k] = p[r]
    return torch.cat(out)[:, :, None, None]


def channels_last(m):
    """``m`` (``(C, h, w)``) with its channels stored last: same shape and values; the blocks
    :func:`head_tap` reads from it need no transposing copy."""
    return m.permute(1, 2, 0).contiguous().permute(2, 0, 1)


_ELEMENTWISE = ("ReLU", "ReLU6", "Hardtanh", "SiLU", "Hardswish", "Identity")


def _pointwise_parts(head):
    """``(conv, bn, act)`` of a head :func:`_pointwise_matmul` can run, else ``None``: a 1 x 1,
    stride-1, ungrouped, unpadded convolution, a batch norm in eval mode with running statistics
    and an elementwise activation."""
    import torch.nn as nn

    if not isinstance(head, nn.Sequential) or len(head) != 3:
        return None
    conv, bn, act = head
    pad = getattr(conv, "static_padding", None)
    if not (
        isinstance(conv, nn.Conv2d)
        and tuple(conv.kernel_size) == (1, 1)
        and tuple(conv.stride) == (1, 1)
        and tuple(conv.dilation) == (1, 1)
        and conv.groups == 1
        and conv.padding in ((0, 0), "valid")
        and (pad is None or type(pad).__name__ == "Identity")  # efficientnet_lite's own class
    ):
        return None
    if not (
        isinstance(bn, nn.BatchNorm2d)
        and not bn.training
        and bn.running_mean is not None
        and bn.running_var is not None
    ):
        return None
    if type(act).__name__ not in _ELEMENTWISE or not isinstance(act, nn.Module):
        return None
    return conv, bn, act


def _window_matrix(h: int, w: int, cells: int, dtype, device):
    """``(wy * wx, h * w)``: row ``i`` averages the ``cells x cells`` cells of window ``i``
    (row-major), as ``avg_pool2d(kernel_size=cells, stride=1)`` does."""
    import torch

    key = (h, w, cells, dtype, str(device))
    mat = _WINDOW_MATRICES.get(key)
    if mat is None or mat.is_inference():  # an inference tensor could not be saved for backward
        wy, wx = h - cells + 1, w - cells + 1
        ay = (np.arange(h)[None, :] - np.arange(wy)[:, None]).astype(np.int64)
        ax = (np.arange(w)[None, :] - np.arange(wx)[:, None]).astype(np.int64)
        my = ((ay >= 0) & (ay < cells)).astype(np.float64)  # wy, h
        mx = ((ax >= 0) & (ax < cells)).astype(np.float64)  # wx, w
        full = np.einsum("ah,bw->abhw", my, mx).reshape(wy * wx, h * w) / float(cells * cells)
        with torch.inference_mode(False), torch.no_grad():
            mat = torch.from_numpy(full).to(device=device, dtype=dtype)
        if len(_WINDOW_MATRICES) >= 16:
            _WINDOW_MATRICES.clear()
        _WINDOW_MATRICES[key] = mat
    return mat


_WINDOW_MATRICES: dict = {}


def clear_cache() -> None:
    """Forget the cached window-pooling matrices (:func:`~.finetune.finetune` does at its end)."""
    _WINDOW_MATRICES.clear()


#: Largest pooling matrix (entries) :func:`_pointwise_matmul` uses; larger maps (a whole
#: held-out image beyond the default ``holdout_windows``) are averaged with ``avg_pool2d``, whose
#: cost grows with the map's area, not with its square.
_MAX_WINDOW_MATRIX = 1 << 20


def _pointwise_matmul(parts, x, cells: int):
    """Window averages ``(N, wy * wx, C4)`` of ``act(bn(conv(x)))`` for ``x`` ``(N, h, w, C)``.

    The batch norm (eval mode: a per-channel affine) is folded into the convolution's matrix, so
    that the gradients reach the convolution's weight and the batch norm's affine as through the
    modules.
    """
    import torch

    conv, bn, act = parts
    n, h, w, c = x.shape
    scale = torch.rsqrt(bn.running_var + bn.eps)
    if bn.affine:
        scale = bn.weight * scale
    weight = conv.weight.flatten(1) * scale[:, None]  # C4, C
    shift = -bn.running_mean * scale
    if bn.affine:
        shift = shift + bn.bias
    if conv.bias is not None:
        shift = shift + conv.bias * scale
    z = torch.addmm(shift.to(x.dtype), x.reshape(n * h * w, c), weight.to(x.dtype).t())
    if z.requires_grad:
        y = act(z)
    elif type(act).__name__ == "ReLU6":  # no gradients (scoring a pack): in place
        y = z.clamp_(0.0, 6.0)
    elif type(act).__name__ == "ReLU":
        y = z.relu_()
    else:
        y = act(z)
    wy, wx = h - cells + 1, w - cells + 1
    if wy * wx * h * w > _MAX_WINDOW_MATRIX:
        import torch.nn.functional as F

        y = y.view(n, h, w, -1).permute(0, 3, 1, 2)  # channels-last N, C4, h, w
        return F.avg_pool2d(y, kernel_size=cells, stride=1).flatten(2).transpose(1, 2)
    y = y.view(n, h * w, -1)
    return torch.matmul(_window_matrix(h, w, cells, y.dtype, y.device), y)


def adapted_parameters(model) -> list:
    """The backbone head's trainable parameters (its convolution and batch-norm affine)."""
    from ..model.backbones import pointwise_head

    head = pointwise_head(model.backbone)
    return [] if head is None else [p for p in head.parameters()]


__all__ = [
    "PATCH_WINDOWS",
    "adapted_parameters",
    "channels_last",
    "clear_cache",
    "head_tap",
    "map_windows",
    "supports_head_adaptation",
    "window_blocks",
    "window_cells",
]
