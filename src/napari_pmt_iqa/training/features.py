"""Cached backbone features for training the heads of a frozen PMT-IQA model.

With the backbone frozen, everything a crop contributes to the loss passes through the pooled stage
maps of its window, which do not change during training. :func:`window_features` runs the
backbone **once** per image (the fast path of :func:`napari_pmt_iqa.scoring.score`: whole-image
stage maps, tiled within a memory budget, every 224-window of the 32-pixel lattice pooled out of
them) and keeps the pooled *raw* stage maps of the windows; :func:`heads_from_features` then runs
the rest of the network (the tap convolutions, the tap layers, the trunk and both heads) on them.

The 1 x 1 tap convolutions have no bias, so pooling and convolving commute: heads applied to the
cached features give the scores of :func:`~napari_pmt_iqa.scoring.score` (``method="fast"``) up to
float rounding, and the mean over all windows of an image is its score.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class FeatureLayout:
    """How the four pooled stage maps of a window are laid out in one feature row.

    ``shapes`` are ``(C, g, g)`` of the four taps; a row is their flattened concatenation.
    """

    shapes: tuple[tuple[int, int, int], ...]

    @property
    def sizes(self) -> list[int]:
        return [c * g * h for c, g, h in self.shapes]

    @property
    def dim(self) -> int:
        return sum(self.sizes)

    @classmethod
    def of(cls, model) -> FeatureLayout:
        """The layout of ``model`` (a :class:`~napari_pmt_iqa.model.PMTIQA`)."""
        from ..model.network import TAP_GRIDS

        chans = model.backbone.spec.channels
        return cls(tuple((int(c), int(g), int(g)) for c, g in zip(chans, TAP_GRIDS)))


def window_positions(h: int, w: int, crop: int, lattice: int = 32) -> tuple[int, int]:
    """``(ny, nx)``: windows per column and row of a prepared ``h`` x ``w`` plane."""
    return (h - crop) // lattice + 1, (w - crop) // lattice + 1


def region_pass(
    model,
    rgb: np.ndarray,
    region: tuple[int, int, int, int],
    halo: int,
    split: bool = False,
    levels: bool = False,
):
    """One backbone pass over the windows ``region = (i0, j0, i1, j1)`` of a prepared plane.

    The pass covers those windows with ``halo`` pixels of context around them (clipped to the
    plane), as scoring's tiles do; the caller sets eval mode, gradients and precision.

    Returns
    -------
    (torch.Tensor, torch.Tensor | None, torch.Tensor | None)
        ``((i1 - i0) * (j1 - j0), D)`` float32 rows of the region's windows (row-major, on the
        CPU); where ``split``, the ``(C, h, w)`` float32 map entering the backbone's pointwise
        head under them (:func:`~.head_maps.window_blocks`), else ``None``; where ``levels`` and
        the model has a defect head, the ``(rows, K)`` float32 defect levels of the same windows
        (:meth:`~napari_pmt_iqa.model.PMTIQA.defects`, as scoring computes them), else ``None``.
    """
    import torch

    from ..scoring import LATTICE, _tile_to_float

    i0, j0, i1, j1 = region
    H, W = rgb.shape[:2]
    crop = model.config.crop_size
    dev = next(model.parameters()).device
    y0, x0 = max(0, i0 * LATTICE - halo), max(0, j0 * LATTICE - halo)
    y1 = min(H, (i1 - 1) * LATTICE + crop + halo)
    x1 = min(W, (j1 - 1) * LATTICE + crop + halo)
    tile = np.ascontiguousarray(_tile_to_float(rgb[y0:y1, x0:x1]))
    x = model.normalize(torch.from_numpy(tile).to(dev).permute(2, 0, 1)[None])
    pre = None
    if split:
        taps, pre = model.backbone.forward_split(x)
        maps = [*taps, model.backbone.head(pre)]
    else:
        maps = model.backbone(x)
    pooled, tny, tnx = model.window_pooled(maps)
    flat = torch.cat([p.float().flatten(1) for p in pooled], dim=1).cpu().view(tny, tnx, -1)
    oi, oj = (i0 * LATTICE - y0) // LATTICE, (j0 * LATTICE - x0) // LATTICE
    hi, wj = i1 - i0, j1 - j0
    rows = flat[oi : oi + hi, oj : oj + wj].reshape(hi * wj, -1)
    if pre is not None:
        cells = crop // LATTICE
        pre = pre[0, :, oi : oi + hi + cells - 1, oj : oj + wj + cells - 1].float().cpu()
    lv = None
    if levels and model.defect_head is not None:
        d = model.defects(model.defect_features(maps)).cpu().view(tny, tnx, -1)
        lv = d[oi : oi + hi, oj : oj + wj].reshape(hi * wj, -1)
    return rows, pre, lv


def window_features(
    model,
    image: np.ndarray,
    max_windows: int | None = None,
    seed: int = 0,
    memory_mb: float = 1024,
    precision: str = "fp32",
    levels: bool = False,
):
    """Pooled raw stage maps of the lattice windows of one image (the backbone runs once).

    Parameters
    ----------
    model
        A :class:`~napari_pmt_iqa.model.PMTIQA` (its backbone is used in eval mode, no gradients).
    image
        ``(H, W, 3)`` uint8 (both sides at least one crop, as :class:`~.data.ImageStore` gives).
    max_windows
        Keep at most this many windows, a seeded random choice (``None``: all of them).
    seed
        Seed of that choice.
    memory_mb
        Memory budget of one backbone pass (larger images are processed in tiles with a margin of
        context, as scoring does).
    precision
        Precision of the backbone pass.
    levels
        Also return the defect levels of the same windows (for a model with a defect head; the
        defect-aware score of a fine-tune, :func:`~.heads_fit.image_scores`).

    Returns
    -------
    (torch.Tensor, int) or (torch.Tensor, int, torch.Tensor | None)
        ``(k, D)`` float32 features (``D`` = :attr:`FeatureLayout.dim`) and the number of windows
        of the whole image (``k`` is all of them unless ``max_windows`` is smaller); where
        ``levels``, third the ``(k, K)`` float32 defect levels of those windows (``None`` for a
        model without a defect head).
    """
    import torch

    from ..devices import autocast
    from ..receptive_field import tile_halo
    from ..scoring import LATTICE, _prepare, _tile_size

    dev = next(model.parameters()).device
    crop = model.config.crop_size
    prep = _prepare(image, crop)
    rgb = prep.rgb
    H, W = rgb.shape[:2]
    ny, nx = window_positions(H, W, crop, LATTICE)
    n = ny * nx
    keep = np.arange(n)
    if max_windows is not None and n > max_windows:
        keep = np.sort(np.random.default_rng((seed, 31337, H, W)).choice(n, max_windows, False))
    wanted = np.zeros(n, dtype=bool)
    wanted[keep] = True
    rows: dict[int, torch.Tensor] = {}
    lvs: dict[int, torch.Tensor] = {}
    T = _tile_size(model.config.backbone, memory_mb, crop)
    if H <= T and W <= T:
        per, halo = max(ny, nx), 0
    else:
        halo = tile_halo(model.config.backbone)
        per = max(1, (T - 2 * halo - crop) // LATTICE + 1)
    was_training = model.backbone.training
    model.backbone.eval()
    try:
        with torch.inference_mode(), autocast(dev, precision):
            for i0 in range(0, ny, per):
                for j0 in range(0, nx, per):
                    i1, j1 = min(ny, i0 + per), min(nx, j0 + per)
                    idx = (np.arange(i0, i1)[:, None] * nx + np.arange(j0, j1)[None, :]).ravel()
                    if not wanted[idx].any():
                        continue
                    block, _, lv = region_pass(model, rgb, (i0, j0, i1, j1), halo, levels=levels)
                    for r, k in enumerate(idx):
                        if wanted[k]:
                            rows[int(k)] = block[r].clone()
                            if lv is not None:
                                lvs[int(k)] = lv[r].clone()
    finally:
        model.backbone.train(was_training)
    feats = torch.stack([rows[int(k)] for k in keep])
    if not levels:
        return feats, n
    return feats, n, (torch.stack([lvs[int(k)] for k in keep]) if lvs else None)


def heads_from_features(model, feats, layout: FeatureLayout | None = None, tap4=None):
    """Window scores and class logits of ``model`` from cached features (with gradients).

    Parameters
    ----------
    model
        The model whose tap convolutions, tap layers, trunk and heads are applied.
    feats
        ``(N, D)`` rows of :func:`window_features`.
    layout
        The row layout (default: that of ``model``).
    tap4
        ``(N, C4, 1, 1)`` pooled fourth-tap rows that replace those of ``feats`` (the adapted
        backbone head's, :func:`~.head_maps.head_tap`).

    Returns
    -------
    (torch.Tensor, torch.Tensor)
        Scores ``(N,)`` on the internal 0-100 scale and logits ``(N, num_classes)``.
    """
    import torch

    layout = layout or FeatureLayout.of(model)
    parts = feats.split(layout.sizes, dim=1)
    pooled = [p.reshape(-1, *s) for p, s in zip(parts, layout.shapes)]
    if tap4 is not None:
        pooled[3] = tap4.to(pooled[0].dtype)
    if model.config.multiscale:
        # the 1 x 1 tap convolutions as matrix products (convolution kernels are slow on these
        # small grids, forwards and backwards)
        pooled = [
            torch.einsum("nchw,oc->nohw", pooled[i], model.reduce[i].weight.flatten(1))
            for i in range(3)
        ] + [pooled[3]]
    taps = model.taps_from_pooled(pooled)
    return model.heads(taps)


__all__ = [
    "FeatureLayout",
    "heads_from_features",
    "region_pass",
    "window_features",
    "window_positions",
]
