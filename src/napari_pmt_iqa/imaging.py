"""Reading image files and turning arrays of any dtype and layout into RGB planes in [0, 1].

Intensity rule (documented behaviour of :func:`intensity_rule` and :func:`to_rgb01`)
-----------------------------------------------------------------------------------
Values are mapped linearly from ``(low, high)`` to [0, 1] and clipped; the rule picks ``low`` and
``high`` once for the whole array given (a whole stack, not each plane: planes of one acquisition
keep their relative brightness):

* ``uint8``: ``(0, 255)``; ``bool``: ``(0, 1)``.
* other integer types holding 8-bit values (the 0.1th and 99.9th percentiles lie within
  [0, 255], e.g. a photo stored as ``int64`` or ``uint16``): ``(0, 255)``.
* floats in [0, 1] (the 0.1th and 99.9th percentiles lie within [0, 1]; a stray pixel at 1.001
  or -0.01 does not change the rule, it is clipped): ``(0, 1)``.
* anything else (``uint16`` microscopy, 12-bit data, floats in other units): the 0.1th to 99.9th
  percentile of the data, so that a 12-bit camera image in a 16-bit container scores like its
  display, not like a nearly black image. A constant image maps to 0.5.
* ``intensity_range=(lo, hi)`` replaces the rule (for example ``(0, 65535)`` for true 16-bit
  photos, or a viewer layer's contrast limits).

Percentiles of arrays with more than about four million values are taken on an evenly strided
subsample of them, and of at most 64 evenly spaced planes of a lazy stack (exact enough for a
display range, and cheap for huge or lazy data).

Layouts: ``(H, W)`` grayscale, ``(H, W, 3|4)`` RGB(A) channel-last, ``(3|4, H, W)`` channel-first,
and stacks ``(..., H, W)`` or ``(..., H, W, 3|4)``. Grayscale is repeated to three channels; alpha
is dropped.

Lazy arrays (dask, zarr, h5py, memory-mapped files: anything with ``shape``, ``dtype`` and numpy
indexing) are never read whole: :func:`lazy_planes` gives :class:`LazyPlane` views whose tiles are
read on demand.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


class ImageError(ValueError):
    """An image that cannot be scored, with a message that says why."""


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file into a numpy array (TIFF through tifffile, the rest through Pillow).

    Raises
    ------
    ImageError
        The file does not exist, is not an image, or is truncated.
    """
    path = Path(path)
    if not path.exists():
        raise ImageError(f"{path}: file not found.")
    if path.is_dir():
        raise ImageError(f"{path} is a folder, not an image file.")
    suffix = path.suffix.lower()
    try:
        if suffix in (".tif", ".tiff"):
            import tifffile

            arr = np.asarray(tifffile.imread(path))
        else:
            from PIL import Image, ImageFile

            ImageFile.LOAD_TRUNCATED_IMAGES = False
            with Image.open(path) as im:
                im.load()
                if im.mode in ("P", "PA", "CMYK", "YCbCr", "LAB", "HSV", "1"):
                    im = im.convert(
                        "RGBA" if "A" in im.mode or "transparency" in im.info else "RGB"
                    )
                elif im.mode == "LA":
                    im = im.convert("L")
                arr = np.asarray(im)
    except ImageError:
        raise
    except Exception as exc:  # PIL.UnidentifiedImageError, OSError (truncated), tifffile errors
        kind = "truncated or corrupt" if "truncated" in str(exc).lower() else "not a readable image"
        raise ImageError(f"{path}: {kind} ({type(exc).__name__}: {exc}).") from exc
    if arr.size == 0 or arr.ndim < 2:
        # tifffile returns an empty array for some corrupt files instead of raising
        raise ImageError(f"{path}: truncated or corrupt (no image data could be read).")
    return arr


def is_rgb_shape(shape: tuple[int, ...]) -> bool:
    """True when the last axis looks like colour channels (3 or 4) of an image."""
    return len(shape) >= 3 and shape[-1] in (3, 4) and shape[-2] > 4


def is_lazy(data: Any) -> bool:
    """Whether ``data`` is an array-like that is read on demand (dask, zarr, h5py, LazyPlane).

    Such data has ``shape``, ``dtype`` and numpy-style indexing but is not a numpy array; it is
    never converted whole (see :func:`lazy_planes`).
    """
    if isinstance(data, np.ndarray):
        return False
    return all(hasattr(data, a) for a in ("shape", "dtype", "__getitem__")) and hasattr(
        data, "ndim"
    )


def _check_array_kind(shape: tuple[int, ...], dtype: np.dtype) -> None:
    if dtype.kind == "O" or not (np.issubdtype(dtype, np.number) or dtype.kind == "b"):
        raise ImageError(f"Image data must be numeric; got dtype {dtype}.")
    if np.issubdtype(dtype, np.complexfloating):
        raise ImageError("Complex-valued images cannot be scored; take the magnitude first.")
    if int(np.prod(shape)) == 0:
        raise ImageError(f"The image is empty (shape {tuple(shape)}).")
    if len(shape) < 2:
        raise ImageError(f"An image needs at least 2 dimensions; got shape {tuple(shape)}.")


def channel_axis_of(
    shape: tuple[int, ...], rgb: bool | None = None, channel_axis: int | None = None
) -> int | None:
    """The colour axis of an array of ``shape`` (non-negative), or None for grayscale.

    The one rule behind :func:`standardize_layout` and :func:`lazy_planes` (see the module
    docstring); ``rgb`` forces (True) or refuses (False) colour, ``channel_axis`` names the axis.

    Raises
    ------
    ImageError
        A channel axis of a size other than 1, 3 or 4, a last axis of 2 entries (ambiguous), or
        ``rgb=True`` without an axis of 3 or 4.
    """
    shape = tuple(int(v) for v in shape)
    nd = len(shape)
    if channel_axis is not None:
        ax = int(channel_axis) % nd
        if shape[ax] not in (1, 3, 4):
            raise ImageError(f"The channel axis has {shape[ax]} entries; 1, 3 or 4 are supported.")
        return ax
    if rgb is None:
        if nd >= 3 and shape[-1] == 1 and shape[-2] > 4:
            return nd - 1  # a trailing channel axis of 1: (H, W, 1) is grayscale
        if nd >= 3 and shape[-1] == 2 and shape[-2] > 4:
            raise ImageError(
                f"The last axis of shape {shape} has 2 entries: two channels cannot be shown as "
                "colour. Select one channel (e.g. image[..., 0]), or pass rgb=False to score the "
                "array as a stack of 2D planes, or channel_axis= to name the colour axis."
            )
        if is_rgb_shape(shape):
            return nd - 1
        if nd == 3 and shape[0] in (3, 4) and shape[-1] > 4 and shape[1] > 4:
            return 0  # channel-first colour image
        return None
    if rgb:
        if nd < 3 or shape[-1] not in (3, 4):
            raise ImageError(f"An RGB image needs a last axis of 3 or 4; got shape {shape}.")
        return nd - 1
    return None


def standardize_layout(
    image: np.ndarray, rgb: bool | None = None, channel_axis: int | None = None
) -> np.ndarray:
    """Return ``(..., H, W, C)`` with C of 1, 3 or 4, validating shape and dtype.

    Parameters
    ----------
    image
        Any array described in the module docstring.
    rgb
        Force (True) or refuse (False) the interpretation of an axis of 3/4 as colour.
    channel_axis
        The colour axis, when it is neither the last axis nor obvious.
    """
    arr = np.asarray(image)
    if np.iscomplexobj(arr):
        raise ImageError("Complex-valued images cannot be scored; take the magnitude first.")
    _check_array_kind(arr.shape, arr.dtype)
    ax = channel_axis_of(arr.shape, rgb, channel_axis)
    if ax is None:
        return arr[..., None]
    return np.moveaxis(arr, ax, -1)


class LazyPlane:
    """One 2D plane ``(H, W, C)`` of a lazy array, read only where it is indexed.

    ``plane[y0:y1, x0:x1]`` reads that window of the source (a numpy array comes back, channels
    last, C of 1, 3 or 4); :meth:`window` gives a smaller lazy view. Made by :func:`lazy_planes`.
    """

    def __init__(
        self,
        source: Any,
        lead: tuple[int, ...],
        channel: int | None,
        origin: tuple[int, int] = (0, 0),
        size: tuple[int, int] | None = None,
    ) -> None:
        self.source = source
        self.lead = tuple(int(i) for i in lead)
        self.channel = channel
        nd = len(source.shape)
        spatial = [a for a in range(nd) if a != channel][len(self.lead) :]
        self._axes = spatial  # the (H, W) axes of the source
        full = (int(source.shape[spatial[0]]), int(source.shape[spatial[1]]))
        self.origin = (int(origin[0]), int(origin[1]))
        self.size = full if size is None else (int(size[0]), int(size[1]))
        self.channels = 1 if channel is None else int(source.shape[channel])
        self.dtype = np.dtype(source.dtype)

    @property
    def shape(self) -> tuple[int, int, int]:
        return (*self.size, self.channels)

    @property
    def ndim(self) -> int:
        return 3

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * self.dtype.itemsize

    def window(self, y0: int, x0: int, h: int, w: int) -> LazyPlane:
        """A lazy view of the ``h`` x ``w`` window at ``(y0, x0)`` of this plane."""
        oy, ox = self.origin
        return LazyPlane(self.source, self.lead, self.channel, (oy + y0, ox + x0), (h, w))

    def _range(self, k: int, key: Any) -> tuple[int, int, int]:
        n = self.size[k]
        if key is None or key == slice(None):
            return 0, n, 1
        if not isinstance(key, slice):
            raise TypeError("LazyPlane takes slices of its two spatial axes")
        start, stop, step = key.indices(n)
        return start, max(start, stop), step

    def __getitem__(self, key: Any) -> np.ndarray:
        if not isinstance(key, tuple):
            key = (key,)
        key = tuple(k for k in key if k is not Ellipsis)
        ys = self._range(0, key[0] if len(key) > 0 else None)
        xs = self._range(1, key[1] if len(key) > 1 else None)
        oy, ox = self.origin
        idx: list[Any] = [slice(None)] * len(self.source.shape)
        lead = iter(self.lead)
        for a in range(len(idx)):
            if a == self.channel:
                continue
            if a == self._axes[0]:
                idx[a] = slice(oy + ys[0], oy + ys[1], ys[2])
            elif a == self._axes[1]:
                idx[a] = slice(ox + xs[0], ox + xs[1], xs[2])
            else:
                idx[a] = next(lead)
        out = np.asarray(self.source[tuple(idx)])
        if self.channel is None:
            return out[..., None]
        # the channel axis, wherever it was, is the one axis left besides H and W
        ch = sum(1 for a in range(self.channel) if not isinstance(idx[a], (int, np.integer)))
        out = np.moveaxis(out, ch, -1)
        if len(key) > 2:
            out = out[(slice(None), slice(None), key[2])]
        return out

    def __array__(self, dtype=None, copy=None):  # np.asarray(plane): reads it whole
        out = self[:, :]
        return out if dtype is None else out.astype(dtype)

    def __repr__(self) -> str:
        return f"LazyPlane(shape={self.shape}, dtype={self.dtype}, lead={self.lead})"


def lazy_planes(
    data: Any, rgb: bool | None = None, channel_axis: int | None = None
) -> tuple[list[LazyPlane], tuple[int, ...]]:
    """The 2D planes of a lazy array as :class:`LazyPlane` views, and the stack's leading shape.

    Nothing is read here. Same layout rules as :func:`standardize_layout`.
    """
    if isinstance(data, LazyPlane) and channel_axis in (None, -1, 2) and rgb is not False:
        return [data], ()
    shape = tuple(int(v) for v in data.shape)
    _check_array_kind(shape, np.dtype(data.dtype))
    ax = channel_axis_of(shape, rgb, channel_axis)
    rest = [shape[a] for a in range(len(shape)) if a != ax]
    lead = tuple(rest[:-2])
    planes = (
        [LazyPlane(data, idx, ax) for idx in np.ndindex(*lead)]
        if lead
        else [LazyPlane(data, (), ax)]
    )
    return planes, lead


def parse_intensity_range(intensity_range: Any) -> tuple[float, float]:
    """``(low, high)`` as floats, or an :class:`ImageError` that says what is wrong with it."""
    try:
        lo, hi = (float(v) for v in intensity_range)
    except (TypeError, ValueError):
        raise ImageError(
            f"intensity_range must be two numbers (low, high); got {intensity_range!r}."
        ) from None
    if not (math.isfinite(lo) and math.isfinite(hi) and hi > lo):
        raise ImageError(
            f"intensity_range needs finite low < high (high > low); got {intensity_range!r}."
        )
    return lo, hi


@dataclass(frozen=True)
class IntensityRule:
    """How raw values become [0, 1]: ``(value - low) / (high - low)``, clipped (module docstring).

    ``kind`` says which rule chose the range: ``"8-bit"``, ``"8-bit values"`` (8-bit data in a
    wider integer type), ``"binary"``, ``"unit"`` (floats in [0, 1]), ``"percentiles"``,
    ``"constant"`` (every value equal: 0.5) or ``"given"`` (``intensity_range``).
    """

    low: float
    high: float
    kind: str

    def describe(self) -> str:
        """A short sentence for messages and tooltips."""
        names = {
            "8-bit": "8-bit values 0-255",
            "8-bit values": "8-bit values 0-255 (in a wider integer type)",
            "binary": "binary values 0-1",
            "unit": "values in 0-1",
            "percentiles": f"the 0.1-99.9th percentiles of the data, {self.low:.6g} to {self.high:.6g}",
            "constant": "a constant image (shown as mid-grey)",
            "given": f"the given range {self.low:.6g} to {self.high:.6g}",
        }
        return names.get(self.kind, f"{self.low:.6g} to {self.high:.6g}")


#: Arrays with more values than this get their percentiles from a strided subsample.
PERCENTILE_SAMPLE = 1 << 22
#: At most this many planes of a list of (lazy) planes are sampled, evenly spaced.
SAMPLE_PLANES = 64


def _sample(data: Any) -> np.ndarray:
    """An evenly strided subsample of ``(..., H, W, C)`` data, a LazyPlane or a list of planes
    (all of it when small), alpha dropped."""
    if isinstance(data, (list, tuple)):
        if len(data) > SAMPLE_PLANES:  # a long lazy stack: evenly spaced planes stand for it
            data = [data[int(k)] for k in np.linspace(0, len(data) - 1, SAMPLE_PLANES)]
        n = sum(int(np.prod(p.shape)) for p in data)
        step = max(1, math.ceil(math.sqrt(n / PERCENTILE_SAMPLE)))
        parts = [np.asarray(p[::step, ::step]) for p in data]
        out = np.concatenate([p[..., :3].reshape(-1) for p in parts])
        return out
    n = int(np.prod(data.shape))
    step = max(1, math.ceil(math.sqrt(n / PERCENTILE_SAMPLE)))
    if isinstance(data, LazyPlane):
        out = data[::step, ::step]
    elif step == 1:
        out = np.asarray(data)
    else:
        out = np.asarray(data[..., ::step, ::step, :])
    return out[..., :3]  # alpha says nothing about intensities


def intensity_rule(data: Any, intensity_range: Any = None) -> IntensityRule:
    """The intensity rule of ``data``: a plane ``(H, W, C)``, a stack ``(..., H, W, C)`` (see
    :func:`standardize_layout`), a :class:`LazyPlane` or a list of planes; one rule for all of it.

    Raises
    ------
    ImageError
        NaN or infinite values (in the sample looked at), or a bad ``intensity_range``.
    """
    if intensity_range is not None:
        lo, hi = parse_intensity_range(intensity_range)
        return IntensityRule(lo, hi, "given")
    dtype = np.dtype((data[0] if isinstance(data, (list, tuple)) else data).dtype)
    if dtype == np.uint8:
        return IntensityRule(0.0, 255.0, "8-bit")
    if dtype == np.bool_:
        return IntensityRule(0.0, 1.0, "binary")
    sample = _sample(data)
    if np.issubdtype(dtype, np.floating) and not np.isfinite(sample).all():
        raise ImageError(
            "The image contains NaN or infinite values; replace them (e.g. np.nan_to_num) first."
        )
    smin, smax = float(sample.min()), float(sample.max())
    if np.issubdtype(dtype, np.integer) and smin >= 0 and smax <= 255:
        return IntensityRule(0.0, 255.0, "8-bit values")  # (the quick case of the rule below)
    if np.issubdtype(dtype, np.floating) and smin >= 0.0 and smax <= 1.0:
        return IntensityRule(0.0, 1.0, "unit")
    work = sample.astype(np.float64, copy=False)
    lo, hi = (float(v) for v in np.percentile(work, [0.1, 99.9]))
    if np.issubdtype(dtype, np.integer) and lo >= 0 and hi <= 255:
        return IntensityRule(0.0, 255.0, "8-bit values")
    if np.issubdtype(dtype, np.floating) and lo >= 0.0 and hi <= 1.0:
        return IntensityRule(0.0, 1.0, "unit")
    if hi <= lo:
        lo, hi = smin, smax
    if hi <= lo:
        return IntensityRule(lo, lo, "constant")
    return IntensityRule(lo, hi, "percentiles")


def apply_intensity_rule(tile: np.ndarray, rule: IntensityRule) -> np.ndarray:
    """A raw ``(h, w, C)`` tile (C of 1, 3 or 4) as float32 RGB in [0, 1] under ``rule``.

    Raises
    ------
    ImageError
        NaN or infinite values in the tile.
    """
    c = tile.shape[-1]
    if c == 4:
        tile = tile[..., :3]
    elif c == 1:
        tile = np.repeat(tile, 3, axis=-1)
    dtype = tile.dtype
    if np.issubdtype(dtype, np.floating) and not np.isfinite(tile).all():
        raise ImageError(
            "The image contains NaN or infinite values; replace them (e.g. np.nan_to_num) first."
        )
    if rule.kind == "constant":
        return np.full(tile.shape, 0.5, np.float32)
    if np.issubdtype(dtype, np.integer) and (rule.low, rule.high) == (0.0, 255.0):
        out = tile.astype(np.float32)
        out *= np.float32(1.0 / 255.0)  # one formula for all 8-bit data (in place: one copy)
        return out if dtype == np.uint8 else np.clip(out, 0.0, 1.0, out=out)
    if np.issubdtype(dtype, np.floating) and (rule.low, rule.high) == (0.0, 1.0):
        out = tile.astype(np.float32)  # a copy: clipped in place below
    else:
        wide = dtype.itemsize > 4 or max(abs(rule.low), abs(rule.high)) > 1e30
        work = np.float64 if wide else np.float32
        out = (tile.astype(work) - work(rule.low)) / work(rule.high - rule.low)
    return np.clip(out, 0.0, 1.0, out=out).astype(np.float32, copy=False)


def to_rgb01(
    plane: np.ndarray,
    intensity_range: tuple[float, float] | None = None,
    rule: IntensityRule | None = None,
) -> np.ndarray:
    """One ``(H, W, C)`` plane to float32 RGB in [0, 1] (see the module docstring).

    ``rule`` (from :func:`intensity_rule`, e.g. of the whole stack) replaces the plane's own rule.

    Raises
    ------
    ImageError
        NaN or infinite values, or a plane with fewer than 2 x 2 pixels.
    """
    if plane.shape[0] < 2 or plane.shape[1] < 2:
        raise ImageError(
            f"The image is {plane.shape[0]} x {plane.shape[1]} pixels; at least 2 x 2 are needed "
            "(it is resized up to one crop), and scoring needs a short side of at least 14 pixels "
            "(a 224-pixel crop enlarged at most 16 times)."
        )
    plane = np.asarray(plane)
    if np.issubdtype(plane.dtype, np.floating) and not np.isfinite(plane).all():
        raise ImageError(
            "The image contains NaN or infinite values; replace them (e.g. np.nan_to_num) first."
        )
    rule = rule or intensity_rule(plane, intensity_range)
    return apply_intensity_rule(plane, rule)


def enlarge_to(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize a small ``(H, W, C)`` image up to ``size = (H', W')``: the one enlargement rule.

    Scoring (planes smaller than one crop) and training (images smaller than one crop) both use
    it, so an image scores the same whichever path enlarged it: bicubic interpolation (pixel
    centres aligned, no antialiasing), clipped to the value range (0-255 for ``uint8``, which
    comes back as ``uint8``, rounded; 0-1 for anything else, RGB in [0, 1], which comes back as
    ``float32``).
    """
    import torch
    import torch.nn.functional as F

    a = np.ascontiguousarray(rgb)
    is_u8 = a.dtype == np.uint8
    t = torch.from_numpy(a.astype(np.float32, copy=False)).permute(2, 0, 1)[None]
    t = F.interpolate(t, size=tuple(int(v) for v in size), mode="bicubic", align_corners=False)
    lo, hi = (0.0, 255.0) if is_u8 else (0.0, 1.0)
    out = t[0].permute(1, 2, 0).clamp_(lo, hi).numpy()
    return (out + 0.5).astype(np.uint8) if is_u8 else np.ascontiguousarray(out)


def enlarged_size(h: int, w: int, min_side: int) -> tuple[int, int]:
    """The size that brings the short side of an ``h`` x ``w`` image to exactly ``min_side``."""
    if min(h, w) >= min_side:
        return h, w
    if h <= w:
        return min_side, max(min_side, round(w * min_side / h))
    return max(min_side, round(h * min_side / w)), min_side
