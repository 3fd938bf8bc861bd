"""Pyramid (multiscale) images: which level to score, and results laid over level 0.

napari shows level ``k`` of a pyramid with its pixel ``i`` centred on level-0 coordinate
``i * f`` (``f`` the level's downsample factor per axis). A result computed on level ``k``
(positions and map geometry in level-``k`` pixels, corner convention: pixel ``p`` spans
``[p, p + 1)``) is moved to level-0 pixels by :func:`to_full_resolution`: a corner ``p`` becomes
``p * f - f / 2 + 0.5``, sizes are multiplied by ``f``. Qt-free, no torch.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np

#: The automatic level: the finest one whose planes have at most this many megapixels (about
#: 1-3 s with the default model on a laptop CPU, bf16 or fp32; tiles keep memory within budget).
AUTO_LEVEL_MEGAPIXELS = 16.0


def pick_level(
    level_shapes: Sequence[Sequence[int]],
    max_megapixels: float = AUTO_LEVEL_MEGAPIXELS,
    rgb: bool = False,
) -> int:
    """The finest pyramid level whose 2D planes have at most ``max_megapixels`` (else the
    coarsest). ``level_shapes`` are the data shapes of the levels, finest first; ``rgb``: the last
    axis is colour."""
    sizes = []
    for shape in level_shapes:
        s = tuple(int(v) for v in shape)
        h, w = (s[-3], s[-2]) if rgb else (s[-2], s[-1])
        sizes.append(h * w / 1e6)
    for k, mp in enumerate(sizes):
        if mp <= max_megapixels:
            return k
    return len(sizes) - 1


def level_factors(level_shapes: Sequence[Sequence[int]], level: int, rgb: bool = False):
    """Downsample factors ``(fy, fx)`` of ``level`` relative to level 0 (from the shapes)."""
    s0 = [int(v) for v in level_shapes[0]]
    sk = [int(v) for v in level_shapes[level]]
    if rgb:
        s0, sk = s0[:-1], sk[:-1]
    return (s0[-2] / sk[-2], s0[-1] / sk[-1])


def _corner(p: np.ndarray | float, f: float):
    return p * f - f / 2.0 + 0.5


def _plane_to_level0(r: Any, fy: float, fx: float) -> Any:
    r = copy.copy(r)
    pos = np.asarray(r.crop_positions, dtype=np.float64).copy()
    pos[..., 0] = _corner(pos[..., 0], fy)
    pos[..., 1] = _corner(pos[..., 1], fx)
    r.crop_positions = pos
    r.crop_size = float(r.crop_size) * fy  # the side along y (pyramids halve both axes alike)
    if r.maps is not None:
        g = r.maps.geometry
        geom = replace(
            g,
            scale=(float(g.scale[0]) * fy, float(g.scale[1]) * fx),
            translate=(_corner(float(g.translate[0]), fy), _corner(float(g.translate[1]), fx)),
        )
        r.maps = replace(r.maps, geometry=geom)
    return r


def to_full_resolution(result: Any, factors: Sequence[float]) -> Any:
    """A copy of a ScoreResult or StackResult computed on a pyramid level, with crop positions,
    crop sizes and map geometry in level-0 pixels (see the module docstring). Scores, classes
    and map values are unchanged."""
    fy, fx = (float(v) for v in factors)
    if (fy, fx) == (1.0, 1.0):
        return result
    if hasattr(result, "planes"):
        out = copy.copy(result)
        out.planes = [_plane_to_level0(p, fy, fx) for p in result.planes]
        return out
    return _plane_to_level0(result, fy, fx)
