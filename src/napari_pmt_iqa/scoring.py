"""Scoring: one function, :func:`score`, that the GUI, the CLI, the benchmarks and the tests call.

How an image is scored
----------------------
1. The array is brought to RGB in [0, 1] (see :mod:`napari_pmt_iqa.imaging` for the intensity
   rule: one rule for a whole stack, and a tile at a time, so a huge plane is never converted
   whole). A plane smaller than one crop (224 px) is enlarged to it (bicubic,
   :func:`napari_pmt_iqa.imaging.enlarge_to`, the rule training uses too).
2. The plane is cut centrally to a multiple of 32 pixels per side (at most 31 pixels are dropped).
3. **Crop grid**: every 224 x 224 window whose corner lies on a 32-pixel lattice is a crop (a
   500 x 500 photo has 9 x 9 = 81 of them). The grid is fixed, so the same image always gives the
   same score on the same device: no random test crops.
4. Each crop gets a score (regression head) and class probabilities (classification head). The image
   score is the mean of the crop scores, mapped to the checkpoint's units; the class probabilities
   are averaged likewise.

``method="fast"`` (default) runs the backbone **once** over the plane and pools every crop's window
out of the shared feature maps (:meth:`PMTIQA.windows`). A plane larger than one pass of
``memory_mb`` is cut into tiles; each tile carries a halo of context around its windows that comes
from the backbone's measured receptive field (:mod:`napari_pmt_iqa.receptive_field`), so tiled
scores match one pass (within 0.01 points per crop for the default model). Lazy arrays (dask,
zarr, ...) are read tile by tile and never whole. ``method="crops"`` runs every crop through the network separately; it is
the reference, about ten times slower, and it differs only in what a crop sees beyond its border
(``docs/results.md`` measures the difference on LIVE-C).

Maps (``maps=True``) come from the same pass at almost no cost:

* ``quality``: the crop scores as a map (one value per crop position, in score units);
* ``class_map`` / ``confidence``: each crop's most likely quality class and its probability;
* ``scale_maps``: for each of the four multi-scale taps (strides 4, 8, 16, 32), how much that scale
  moves a crop's score: the crop score minus the score obtained when that tap's 28-d vector is
  replaced by its mean over the image. Positive: at this place, this scale sees better quality than
  the image average; negative: this scale pulls the score down here.

A map cell covers the 32 x 32 pixels around its crop's centre; ``MapGeometry`` says where (cell
size and the top-left corner of cell (0, 0) in original pixels, pixel-corner convention). The
crop centres leave a border of about 112 pixels (half a crop) without a cell of their own: the maps
cover it with the nearest crop's cell repeated outwards (edge cells extended to the image borders,
``QualityMaps.padding`` says by how many cells on each side), so that every pixel of the image lies
under a cell. The crop-grid part of a map is ``map[top : top + ny, left : left + nx]``; the image
score is the mean of the crop scores, not of the extended map.
``napari_pmt_iqa._widgets.overlays.map_transform`` turns it into napari's ``scale``/``translate``
(napari puts pixel centres on whole numbers, hence half a cell minus half a pixel more).
"""

from __future__ import annotations

import math
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from .imaging import (
    ImageError,
    IntensityRule,
    LazyPlane,
    intensity_rule,
    is_lazy,
    lazy_planes,
    standardize_layout,
    to_rgb01,
)
from .score_results import (  # the result types, importable from here as before
    TAP_NAMES,
    MapGeometry,
    ModelOutputError,
    QualityMaps,
    ScoreResult,
    ScoringCancelled,
    StackResult,
)

LATTICE = 32
#: Rough peak inference memory per input pixel, bytes (measured, rounded up; Lite0: 254 and tiny:
#: 36 measured in fp32 over one 1024-2048 px pass, peak RSS growth).
BYTES_PER_PIXEL = {
    "resnet50": 900,
    "resnet34": 500,
    "resnet18": 450,
    "efficientnet_lite0": 300,
    "tiny": 60,
}
MAX_LEADING_AXES = 2
#: Largest enlargement of a small plane to one crop (a 14-pixel side for 224 crops).
MAX_ENLARGEMENT = 16


# --------------------------------------------------------------------------- model cache
_MODEL_CACHE: OrderedDict[tuple, object] = OrderedDict()
_CACHE_LOCK = threading.Lock()


def get_model(model=None, device: str = "auto"):
    """Resolve ``model`` (None, a registered name, a checkpoint path or a PMTIQA) on ``device``.

    Loaded checkpoints are kept in a small cache, so that repeated calls do not reload them.
    """
    from .devices import resolve_device
    from .model.network import PMTIQA

    dev = resolve_device(device)
    if isinstance(model, PMTIQA):
        return model if next(model.parameters()).device == dev else model.to(dev)
    from .weights import load_checkpoint, resolve_weights

    path = resolve_weights(model)
    st = os.stat(path)
    key = (str(path), st.st_mtime_ns, st.st_size, str(dev))
    with _CACHE_LOCK:
        if key in _MODEL_CACHE:
            _MODEL_CACHE.move_to_end(key)
            return _MODEL_CACHE[key]
    m = load_checkpoint(path).to(dev)
    m._pmt_loaded = True  # ours: may be stored channels-last (see _use_channels_last)
    with _CACHE_LOCK:
        _MODEL_CACHE[key] = m
        while len(_MODEL_CACHE) > 4:
            _MODEL_CACHE.popitem(last=False)
    return m


def clear_model_cache() -> None:
    """Forget cached models (frees their memory)."""
    with _CACHE_LOCK:
        _MODEL_CACHE.clear()


# --------------------------------------------------------------------------- geometry
@dataclass
class _Prepared:
    # (H', W', C), H' and W' multiples of 32 and >= crop: either float32 RGB in [0, 1] (an enlarged
    # small plane; rule None), or a view of the original plane (numpy or a LazyPlane, any dtype, C
    # of 1, 3 or 4) converted tile by tile under ``rule`` (_tile_to_float), so that a huge image is
    # never copied whole into float32 (nor read whole, when it is lazy)
    rgb: np.ndarray | LazyPlane
    factor: float  # original pixels per prepared pixel
    offset: tuple[int, int]  # top-left of the prepared plane in (enlarged) pixels
    full: tuple[int, int] = (0, 0)  # (H, W) of the whole (enlarged) plane before the central cut
    rule: IntensityRule | None = None


def _tile_to_float(a, rule: IntensityRule | None = None) -> np.ndarray:
    """A tile of a prepared plane as float32 RGB in [0, 1] (see :class:`_Prepared`)."""
    from .imaging import apply_intensity_rule

    if rule is None:
        if a.dtype != np.uint8:
            return a
        rule = IntensityRule(0.0, 255.0, "8-bit")
    return apply_intensity_rule(np.asarray(a), rule)


def _prepare(
    plane, crop: int, intensity_range=None, rule: IntensityRule | None = None
) -> _Prepared:
    """Cut (or enlarge) one ``(H, W, C)`` plane for scoring under ``rule`` (default: its own)."""
    h, w = plane.shape[:2]
    if rule is None:
        rule = intensity_rule(plane, intensity_range)
    if min(h, w) >= crop:
        hh, ww = (h // LATTICE) * LATTICE, (w // LATTICE) * LATTICE
        oy, ox = (h - hh) // 2, (w - ww) // 2
        if isinstance(plane, LazyPlane):
            view = plane.window(oy, ox, hh, ww)  # NaN and inf are found tile by tile
        else:
            if np.issubdtype(plane.dtype, np.floating) and not np.isfinite(plane).all():
                raise ImageError(
                    "The image contains NaN or infinite values; replace them (e.g. np.nan_to_num) "
                    "first."
                )
            view = plane[oy : oy + hh, ox : ox + ww]
        return _Prepared(view, 1.0, (oy, ox), (h, w), rule)
    if isinstance(plane, LazyPlane):
        plane = plane[:, :]  # smaller than one crop: read it whole
    rgb = to_rgb01(plane, rule=rule)
    h, w = rgb.shape[:2]
    factor = 1.0
    if crop / min(h, w) > MAX_ENLARGEMENT:
        raise ImageError(
            f"The image is {h} x {w} pixels: its short side would have to be enlarged "
            f"{crop / min(h, w):.0f} times to fill one {crop}-pixel crop. Planes with a short side "
            f"under {math.ceil(crop / MAX_ENLARGEMENT)} pixels are not scored: a quality score would "
            "say nothing about them (is an axis of the array misread? see rgb= and channel_axis=)."
        )
    if min(h, w) < crop:
        from .imaging import enlarge_to, enlarged_size

        # the short side becomes exactly one crop, by the rule training uses too
        nh, nw = enlarged_size(h, w, crop)
        rgb = enlarge_to(rgb, (nh, nw))
        factor = h / nh
        h, w = nh, nw
    hh, ww = (h // LATTICE) * LATTICE, (w // LATTICE) * LATTICE
    oy, ox = (h - hh) // 2, (w - ww) // 2
    return _Prepared(
        np.ascontiguousarray(rgb[oy : oy + hh, ox : ox + ww]), factor, (oy, ox), (h, w)
    )


def _normalize_(model, t):
    """``model.normalize(t)`` computed in place (the same numbers, one tile of memory less)."""
    import torch

    mean, std = getattr(model, "mean", None), getattr(model, "std", None)
    if mean is None or std is None:
        return model.normalize(t)
    m = torch.tensor(mean, device=t.device, dtype=t.dtype).view(1, 3, 1, 1)
    sd = torch.tensor(std, device=t.device, dtype=t.dtype).view(1, 3, 1, 1)
    return t.sub_(m).div_(sd)


def _use_channels_last(model) -> None:
    """Store the weights of a model this module loaded channels-last (once): convolutions over
    whole images run faster in that layout (oneDNN on CPUs, cuDNN on GPUs); results are unchanged
    up to float rounding.

    Only models that :func:`get_model` loaded from a checkpoint are converted: a model passed in by
    the caller (one being trained, say) keeps its memory format, so that scoring it in the middle of
    training changes nothing about the training (exact resume, no DDP gradient-stride warnings).
    """
    import torch

    if getattr(model, "_pmt_channels_last", False) or not getattr(model, "_pmt_loaded", False):
        return
    model.to(memory_format=torch.channels_last)
    model._pmt_channels_last = True


def check_options(
    net=None,
    *,
    memory_mb: float = 1024,
    batch_size: int = 16,
    precision: str = "fp32",
    intensity_range=None,
) -> None:
    """Refuse bad scoring options up front, each with a message that says what to give instead.

    Raises
    ------
    ValueError
        A memory budget that is not a positive number, a batch size below 1, an unknown precision
        or fp16 on a CPU, an ``intensity_range`` that is not two numbers.
    """
    try:
        mb = float("nan") if isinstance(memory_mb, (str, bytes)) else float(memory_mb)
    except (TypeError, ValueError):
        mb = float("nan")
    if not (math.isfinite(mb) and mb > 0):
        raise ValueError(f"memory_mb must be a positive number of megabytes; got {memory_mb!r}.")
    if (
        isinstance(batch_size, bool)
        or not isinstance(batch_size, (int, np.integer))
        or batch_size < 1
    ):
        raise ValueError(f"batch_size must be a whole number of at least 1; got {batch_size!r}.")
    from .devices import check_precision
    from .imaging import parse_intensity_range

    check_precision(precision, None if net is None else next(net.parameters()).device.type)
    if intensity_range is not None:
        parse_intensity_range(intensity_range)


#: A tile holds at least this many windows per side: with a halo of a few hundred pixels, smaller
#: tiles would spend almost all their work on context (one window per tile costs ~700 passes).
MIN_TILE_WINDOWS = 8


def _tile_size(backbone: str, memory_mb: float, crop: int) -> int:
    """Side of the largest square one backbone pass may take within ``memory_mb``; never less than
    :data:`MIN_TILE_WINDOWS` windows plus the backbone's halo on both sides (see
    :func:`~napari_pmt_iqa.receptive_field.tile_halo`), whatever the budget."""
    from .receptive_field import tile_halo

    bpp = BYTES_PER_PIXEL.get(backbone, 900)
    side = int(math.sqrt(max(memory_mb, 1) * 2**20 / bpp))
    floor = crop + 2 * tile_halo(backbone) + (MIN_TILE_WINDOWS - 1) * LATTICE
    return max(floor, (side // LATTICE) * LATTICE)


# --------------------------------------------------------------------------- core
def _window_outputs(
    model,
    rgb,
    method: str,
    memory_mb: float,
    precision: str,
    batch_size: int,
    progress,
    cancel,
    rule: IntensityRule | None = None,
):
    """Taps (N, 112) and defect levels (N, K, or None) of every lattice window of one prepared
    plane, and (ny, nx).

    ``rgb`` is a prepared plane (:class:`_Prepared`), converted tile by tile under ``rule``.
    Planes larger than one pass of ``memory_mb`` are cut into tiles whose windows each carry the
    backbone's halo of context (:func:`~napari_pmt_iqa.receptive_field.tile_halo`), so that a
    window sees the same pixels as in one pass up to the halo.
    """
    import torch

    from .devices import autocast
    from .memory import release_free_memory
    from .receptive_field import tile_halo

    dev = next(model.parameters()).device
    crop = model.config.crop_size
    H, W = rgb.shape[:2]
    ny, nx = (H - crop) // LATTICE + 1, (W - crop) // LATTICE + 1
    taps = torch.empty(ny, nx, 4 * model.config.tap_dim)
    n_def = len(model.config.defect_kinds) if model.defect_head is not None else 0
    defects = torch.empty(ny, nx, n_def) if n_def else None

    def to_tensor(a):
        # (H, W, 3) -> (1, 3, H, W) is already channels-last in memory: no copy needed
        arr = np.ascontiguousarray(_tile_to_float(a, rule))
        if isinstance(a, np.ndarray) and np.shares_memory(arr, a):
            arr = arr.copy()  # normalised in place below: never write into the caller's plane
        t = torch.from_numpy(arr).to(dev).permute(2, 0, 1)[None]
        return _normalize_(model, t).contiguous(memory_format=torch.channels_last)

    _use_channels_last(model)
    with torch.inference_mode(), autocast(dev, precision):
        if method == "crops":
            coords = [(i, j) for i in range(ny) for j in range(nx)]
            for k in range(0, len(coords), batch_size):
                if cancel and cancel():
                    raise ScoringCancelled("scoring was cancelled")
                chunk = coords[k : k + batch_size]
                x = torch.cat(
                    [
                        to_tensor(
                            rgb[i * LATTICE : i * LATTICE + crop, j * LATTICE : j * LATTICE + crop]
                        )
                        for i, j in chunk
                    ]
                ).contiguous(memory_format=torch.channels_last)
                out = model(x)
                t = torch.cat(out.taps, dim=1).float().cpu()
                for n, ((i, j), v) in enumerate(zip(chunk, t)):
                    taps[i, j] = v
                    if defects is not None:
                        defects[i, j] = out.defects[n].float().cpu()
                if progress:
                    progress(min(k + batch_size, len(coords)), len(coords))
        elif method == "fast":
            T = _tile_size(model.config.backbone, memory_mb, crop)
            if H <= T and W <= T:  # one pass over the whole plane
                per, halo = max(ny, nx), 0
            else:  # tiles, each with the backbone's halo of context around its windows
                halo = tile_halo(model.config.backbone)
                per = max(1, (T - 2 * halo - crop) // LATTICE + 1)  # windows per tile side
            tiles = [(i0, j0) for i0 in range(0, ny, per) for j0 in range(0, nx, per)]
            for k, (i0, j0) in enumerate(tiles):
                if cancel and cancel():
                    raise ScoringCancelled("scoring was cancelled")
                i1, j1 = min(ny, i0 + per), min(nx, j0 + per)
                y0, x0 = max(0, i0 * LATTICE - halo), max(0, j0 * LATTICE - halo)
                y1 = min(H, (i1 - 1) * LATTICE + crop + halo)
                x1 = min(W, (j1 - 1) * LATTICE + crop + halo)
                raw = model.backbone(to_tensor(rgb[y0:y1, x0:x1]))
                d = model.defects(model.defect_features(raw)) if defects is not None else None
                maps = model.reduce_maps(raw)
                del raw
                pooled, tny, tnx = model.window_pooled(maps)
                t = torch.cat(model.taps_from_pooled(pooled), dim=1).float().cpu()
                oi, oj = (i0 * LATTICE - y0) // LATTICE, (j0 * LATTICE - x0) // LATTICE
                t = t.view(tny, tnx, -1)[oi : oi + i1 - i0, oj : oj + j1 - j0]
                taps[i0:i1, j0:j1] = t
                if d is not None:
                    d = d.float().cpu().view(tny, tnx, -1)
                    defects[i0:i1, j0:j1] = d[oi : oi + i1 - i0, oj : oj + j1 - j0]
                del maps, pooled, t, d
                if len(tiles) > 1:  # freed tile buffers go back to the system, not kept by malloc
                    release_free_memory()
                if progress:
                    progress(k + 1, len(tiles))
        else:
            raise ValueError(f"method must be 'fast' or 'crops'; got {method!r}")
    flat = defects.view(ny * nx, -1) if defects is not None else None
    return taps.view(ny * nx, -1), flat, ny, nx


#: Windows per call of the heads (their hidden layers for all windows of a huge image at once
#: would cost more memory than the taps themselves).
HEADS_CHUNK = 8192


def _run_heads(model, parts):
    """``model.heads`` over windows in chunks of :data:`HEADS_CHUNK`: (scores, logits) on CPU."""
    import torch

    s, logits = [], []
    for k in range(0, len(parts[0]), HEADS_CHUNK):
        a, b = model.heads([p[k : k + HEADS_CHUNK] for p in parts])
        s.append(a.float().cpu())
        logits.append(b.float().cpu())
    return torch.cat(s), torch.cat(logits)


def _heads(model, taps):
    import torch

    with torch.inference_mode():
        parts = list(taps.to(next(model.parameters()).device).split(model.config.tap_dim, dim=1))
        s, logits = _run_heads(model, parts)
    return s, logits, parts


def _score_plane(
    model,
    plane,
    *,
    method,
    maps,
    memory_mb,
    precision,
    batch_size,
    intensity_range,
    progress,
    cancel,
) -> ScoreResult:
    rule = intensity_range if isinstance(intensity_range, IntensityRule) else None
    prep = _prepare(plane, model.config.crop_size, None if rule else intensity_range, rule)
    taps, defects, ny, nx = _window_outputs(
        model, prep.rgb, method, memory_mb, precision, batch_size, progress, cancel, prep.rule
    )
    return _finish(model, taps, ny, nx, prep, maps, method, defects)


def _finish(
    model, taps, ny: int, nx: int, prep: _Prepared, maps: bool, method: str, defects=None
) -> ScoreResult:
    """Heads, units, positions and maps from the window taps of one prepared plane."""
    import torch

    from .model.losses import class_edges
    from .score_scale import ScoreScale

    crop = model.config.crop_size
    head_s, logits, parts = _heads(model, taps)
    # the defect-aware score (PMTIQA.fuse); the scale maps compare head outputs with head outputs
    s = model.fuse(head_s, defects)
    if not (bool(torch.isfinite(s).all()) and bool(torch.isfinite(logits).all())):
        raise ModelOutputError(
            "The model produced NaN or infinite scores: its weights are corrupt or come from a "
            "training run that diverged (check its loss), or float16 overflowed (use "
            "precision='bf16' or 'fp32')."
        )
    scale: ScoreScale = getattr(model, "score_scale", None) or ScoreScale()
    # the classes follow the defect-aware score (PMTIQA.fuse_classes)
    probs = model.fuse_classes(torch.softmax(logits, dim=1), defects)
    units = scale.from_internal(s.numpy().astype(np.float64)).reshape(ny, nx)
    f = prep.factor
    oy, ox = prep.offset
    ys = (oy + LATTICE * np.arange(ny)) * f
    xs = (ox + LATTICE * np.arange(nx)) * f
    pos = np.stack(np.meshgrid(ys, xs, indexing="ij"), axis=-1)
    n_cls = model.config.num_classes
    edges = [float(scale.from_internal(e)) for e in class_edges(n_cls)]
    qmaps = None
    if maps:
        sign = (scale.high - scale.low) / 100.0 * (1 if scale.higher_is_better else -1)
        contrib = []
        with torch.inference_mode():
            for i in range(4):  # tap i replaced by its mean over the plane (no copies)
                alt = list(parts)
                alt[i] = parts[i].mean(dim=0, keepdim=True).expand_as(parts[i])
                s_alt, _ = _run_heads(model, alt)
                contrib.append(((head_s - s_alt).numpy() * sign).reshape(ny, nx))
        conf, cls = probs.max(dim=1)
        # the cells of the crop grid start half a crop (less half a cell) inside the prepared
        # plane; edge cells are repeated outwards until they reach the image borders
        y0, x0 = oy + crop / 2 - LATTICE / 2, ox + crop / 2 - LATTICE / 2
        full_h, full_w = prep.full if prep.full != (0, 0) else tuple(prep.rgb.shape[:2])
        pad = (
            math.ceil(y0 / LATTICE),
            math.ceil(max(0.0, full_h - (y0 + LATTICE * ny)) / LATTICE),
            math.ceil(x0 / LATTICE),
            math.ceil(max(0.0, full_w - (x0 + LATTICE * nx)) / LATTICE),
        )
        geom = MapGeometry(
            scale=(LATTICE * f, LATTICE * f),
            translate=((y0 - LATTICE * pad[0]) * f, (x0 - LATTICE * pad[2]) * f),
        )

        def extend(a: np.ndarray) -> np.ndarray:
            widths = [(0, 0)] * (a.ndim - 2) + [(pad[0], pad[1]), (pad[2], pad[3])]
            return np.pad(a, widths, mode="edge")

        qmaps = QualityMaps(
            quality=extend(units.astype(np.float32)),
            class_map=extend(cls.numpy().reshape(ny, nx).astype(np.int32)),
            confidence=extend(conf.numpy().reshape(ny, nx).astype(np.float32)),
            scale_maps=extend(np.stack(contrib).astype(np.float32)),
            geometry=geom,
            padding=pad,
        )
        if defects is not None:
            d = defects.numpy().astype(np.float32).T.reshape(-1, ny, nx)
            qmaps.defects = extend(d)
            qmaps.defect_kinds = tuple(model.config.defect_kinds)
    levels: dict[str, float] = {}
    worst: dict[str, float] = {}
    if defects is not None:
        for k, kind in enumerate(model.config.defect_kinds):
            levels[kind] = float(defects[:, k].mean())
            worst[kind] = float(defects[:, k].max())
    return ScoreResult(
        score=float(scale.from_internal(float(s.mean()))),
        class_probs=probs.mean(dim=0).numpy(),
        class_edges=edges,
        crop_scores=units,
        crop_positions=pos,
        crop_size=crop * f,
        units=scale.name,
        score_range=(scale.low, scale.high),
        higher_is_better=scale.higher_is_better,
        maps=qmaps,
        method=method,
        defect_levels=levels,
        defect_worst=worst,
    )


def iter_planes(image, rgb: bool | None = None, channel_axis: int | None = None):
    """Split an array into 2D planes: returns ``(planes, leading_shape)``.

    Each plane is ``(H, W, C)``; ``leading_shape`` is ``()`` for a single image. Lazy arrays
    (dask, zarr, h5py, ...: :func:`~napari_pmt_iqa.imaging.is_lazy`) give a list of
    :class:`~napari_pmt_iqa.imaging.LazyPlane` views, which are read tile by tile when scored;
    numpy arrays give an ``(N, H, W, C)`` view.
    """
    if is_lazy(image):
        planes, lead = lazy_planes(image, rgb=rgb, channel_axis=channel_axis)
        ndim, shape = len(image.shape), tuple(image.shape)
    else:
        arr = standardize_layout(image, rgb=rgb, channel_axis=channel_axis)
        lead = arr.shape[:-3]
        planes = arr.reshape((-1,) + arr.shape[-3:])
        ndim, shape = arr.ndim - 1 if arr.shape[-1] == 1 else arr.ndim, np.shape(image)
    if len(lead) > MAX_LEADING_AXES:
        raise ImageError(
            f"The data has {ndim} dimensions (shape {shape}); scoring handles 2D images and stacks "
            f"with up to {MAX_LEADING_AXES} leading axes (e.g. T, Z). Select a sub-array first."
        )
    return planes, tuple(lead)


def stack_intensity_rule(planes, intensity_range=None) -> IntensityRule:
    """The one intensity rule of all ``planes`` (from :func:`iter_planes`): a stack's planes share
    it, so that a darker plane scores as the darker plane it is (see
    :func:`~napari_pmt_iqa.imaging.intensity_rule`)."""
    if isinstance(intensity_range, IntensityRule):
        return intensity_range
    data = planes if isinstance(planes, np.ndarray) else list(planes)
    if isinstance(data, list) and len(data) == 1:
        data = data[0]
    return intensity_rule(data, intensity_range)


class _EvalMode:
    """Put a model in eval mode for scoring and give it back in the mode it came in."""

    def __init__(self, model) -> None:
        self.model = model
        self.was_training = bool(model.training)

    def __enter__(self):
        if self.was_training:
            self.model.eval()
        return self.model

    def __exit__(self, *exc) -> None:
        if self.was_training:
            self.model.train(True)


def score(
    image,
    model=None,
    device: str = "auto",
    *,
    maps: bool = True,
    method: str = "fast",
    precision: str = "fp32",
    rgb: bool | None = None,
    channel_axis: int | None = None,
    intensity_range: tuple[float, float] | IntensityRule | None = None,
    memory_mb: float = 1024,
    batch_size: int = 16,
    progress: Callable[[int, int], None] | None = None,
    cancel: Callable[[], bool] | None = None,
) -> ScoreResult | StackResult:
    """Score an image (or every plane of a stack) with a PMT-IQA model.

    Parameters
    ----------
    image
        A numpy array of any numeric dtype, or a lazy array (dask, zarr, h5py: read tile by tile,
        never whole): ``(H, W)`` grayscale, ``(H, W, 3|4)`` RGB(A), ``(3|4, H, W)`` channel-first,
        or a stack ``(..., H, W[, C])`` with up to two leading axes.
    model
        ``None`` (the default model shipped with the package), a registered name, a checkpoint
        path, or a loaded :class:`~napari_pmt_iqa.model.PMTIQA` (scored in eval mode, and given
        back in the mode it came in).
    device
        ``"auto"`` (CUDA, then MPS, then CPU), ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"mps"``.
    maps
        Also compute the per-task and per-scale maps (nearly free).
    method
        ``"fast"`` (one backbone pass, default) or ``"crops"`` (each crop separately; reference).
    precision
        ``"fp32"``, ``"bf16"`` (CPU or GPU) or ``"fp16"`` (GPU) for the backbone.
    rgb, channel_axis
        Override the automatic detection of the colour axis.
    intensity_range
        ``(low, high)``: map these values to 0 and 1 instead of the intensity rule, or an
        :class:`~napari_pmt_iqa.imaging.IntensityRule`. The rule (module docstring of
        :mod:`napari_pmt_iqa.imaging`): uint8, and integers holding 8-bit values, are divided by
        255; floats in [0, 1] are used as they are (stray values outside are clipped); anything
        else is stretched from its 0.1th to its 99.9th percentile. One rule for a whole stack.
    memory_mb
        Memory budget of one backbone pass; larger planes are processed in tiles. Each tile
        carries the backbone's halo of context around its windows (measured from its receptive
        field: :mod:`napari_pmt_iqa.receptive_field`), so that tiled scores match one pass
        (within 0.01 points per crop for the default model). A tile is never smaller than
        ``MIN_TILE_WINDOWS`` (8) windows plus that halo on both sides, whatever the budget (for
        the default model 1088 px, about 300 MB: smaller budgets are raised to it).
    batch_size
        Crops per batch for ``method="crops"``.
    progress
        ``progress(done, total)`` called as tiles (or planes of a stack) finish.
    cancel
        Polled between tiles; when it returns True, :class:`ScoringCancelled` is raised.

    Returns
    -------
    ScoreResult or StackResult
        A :class:`ScoreResult` for a 2D image, a :class:`StackResult` for a stack.

    Raises
    ------
    ImageError
        Empty data, fewer than 2 x 2 pixels, NaN or infinite values, non-numeric data, too many axes.

    Examples
    --------
    >>> from skimage import data
    >>> result = score(data.astronaut())
    >>> round(result.score, 1), result.units  # doctest: +SKIP
    (72.0, 'quality (0-100; LIVE-C MOS scale)')
    """
    planes, lead = iter_planes(image, rgb=rgb, channel_axis=channel_axis)
    net = get_model(model, device)
    given = None if isinstance(intensity_range, IntensityRule) else intensity_range
    check_options(
        net,
        memory_mb=memory_mb,
        batch_size=batch_size,
        precision=precision,
        intensity_range=given,
    )
    rule = stack_intensity_rule(planes if lead else [planes[0]], intensity_range)
    kwargs = dict(
        method=method,
        maps=maps,
        memory_mb=memory_mb,
        precision=precision,
        batch_size=batch_size,
        intensity_range=rule,
        cancel=cancel,
    )
    with _EvalMode(net):
        if not lead:
            return _score_plane(net, planes[0], progress=progress, **kwargs)
        results = []
        for k, plane in enumerate(planes):
            if cancel and cancel():
                raise ScoringCancelled("scoring was cancelled")
            results.append(_score_plane(net, plane, progress=None, **kwargs))
            if progress:
                progress(k + 1, len(planes))
    r0 = results[0]
    return StackResult(results, tuple(lead), r0.units, r0.score_range, r0.higher_is_better)


def score_batch(
    images: Sequence[np.ndarray],
    model=None,
    device: str = "auto",
    *,
    precision: str = "fp32",
    batch_size: int = 8,
    maps: bool = False,
    memory_mb: float = 1024,
) -> list[ScoreResult]:
    """Score many 2D images; images of the same shape go through the backbone together.

    Faster than calling :func:`score` in a loop on a GPU. Images larger than one memory tile are
    scored one by one.
    """
    if isinstance(images, np.ndarray):
        if images.ndim == 2 or (images.ndim == 3 and images.shape[-1] in (3, 4)):
            raise ImageError(
                f"score_batch takes a list of images (or an (N, H, W[, C]) array); this looks like "
                f"one image of shape {images.shape}: use score() for it, or pass [image]."
            )
        images = list(images)
    elif not isinstance(images, Sequence):
        images = list(images)  # a generator or other iterable
    net = get_model(model, device)
    check_options(net, memory_mb=memory_mb, batch_size=batch_size, precision=precision)
    with _EvalMode(net):
        return _score_batch(net, images, precision, batch_size, maps, memory_mb)


def _score_batch(net, images, precision, batch_size, maps, memory_mb) -> list[ScoreResult]:
    import torch

    from .devices import autocast

    dev = next(net.parameters()).device
    crop = net.config.crop_size
    prepared = {}
    results: list[ScoreResult | None] = [None] * len(images)
    for idx, img in enumerate(images):
        try:
            planes, lead = iter_planes(img)
            if lead:
                raise ImageError(
                    f"score_batch takes 2D images; this is a stack of shape {np.shape(img)}."
                )
            prepared[idx] = (planes[0], _prepare(planes[0], crop))
        except ImageError as exc:
            raise ImageError(f"Image {idx} of the batch: {exc}") from exc
    groups: dict[tuple, list[int]] = {}
    tile = _tile_size(net.config.backbone, memory_mb, crop)
    for idx, (_, p) in prepared.items():
        h, w = p.rgb.shape[:2]
        if max(h, w) > tile:  # too large for one pass: tiles, one image at a time
            taps, defects, ny, nx = _window_outputs(
                net, p.rgb, "fast", memory_mb, precision, 1, None, None, p.rule
            )
            results[idx] = _finish(net, taps, ny, nx, p, maps, "fast", defects)
            continue
        groups.setdefault(tuple(p.rgb.shape[:2]), []).append(idx)
    for idxs in groups.values():
        for k in range(0, len(idxs), batch_size):
            chunk = idxs[k : k + batch_size]
            x = (
                torch.from_numpy(
                    np.stack(
                        [_tile_to_float(prepared[i][1].rgb, prepared[i][1].rule) for i in chunk]
                    )
                )
                .to(dev)
                .permute(0, 3, 1, 2)
            )
            _use_channels_last(net)
            with torch.inference_mode(), autocast(dev, precision):
                x = net.normalize(x).contiguous(memory_format=torch.channels_last)
                raw = net.backbone(x)
                defects = (
                    net.defects(net.defect_features(raw)) if net.defect_head is not None else None
                )
                maps_ = net.reduce_maps(raw)
                del raw
                pooled, ny, nx = net.window_pooled(maps_)
                taps = torch.cat(net.taps_from_pooled(pooled), dim=1).float().cpu()
            taps = taps.view(len(chunk), ny * nx, -1)
            if defects is not None:
                defects = defects.float().cpu().view(len(chunk), ny * nx, -1)
            for b, i in enumerate(chunk):
                d = defects[b] if defects is not None else None
                results[i] = _finish(net, taps[b], ny, nx, prepared[i][1], maps, "fast", d)
    return results  # type: ignore[return-value]


__all__ = [
    "LATTICE",
    "TAP_NAMES",
    "MapGeometry",
    "ModelOutputError",
    "QualityMaps",
    "ScoreResult",
    "ScoringCancelled",
    "StackResult",
    "check_options",
    "clear_model_cache",
    "get_model",
    "iter_planes",
    "score",
    "score_batch",
    "stack_intensity_rule",
]
