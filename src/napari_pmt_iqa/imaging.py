"""Reading image files and turning arrays of any dtype and layout into RGB planes in [0, 1].

Intensity normalisation (documented behaviour of :func:`to_rgb01`)
-----------------------------------------------------------------
* ``uint8`` and ``bool``: divided by 255 (resp. 1): a photo is used as it is.
* float data already within [0, 1]: used as it is.
* ``uint16`` and other integer or float data: scaled linearly from the 0.1th to the 99.9th
  percentile of the plane to [0, 1], then clipped. This makes 12-bit microscopy data in a 16-bit
  container score like its display, not like a nearly black image. Pass ``intensity_range=(lo, hi)``
  to use a fixed range instead (for example ``(0, 65535)`` for true 16-bit photos).

Layouts: ``(H, W)`` grayscale, ``(H, W, 3|4)`` RGB(A) channel-last, ``(3|4, H, W)`` channel-first,
and stacks ``(..., H, W)`` or ``(..., H, W, 3|4)``. Grayscale is repeated to three channels; alpha
is dropped.
"""

from __future__ import annotations

import math
import os
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
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise ImageError(f"Image data must be numeric; got dtype {arr.dtype}.")
    if np.iscomplexobj(arr):
        raise ImageError("Complex-valued images cannot be scored; take the magnitude first.")
    if arr.size == 0:
        raise ImageError(f"The image is empty (shape {arr.shape}).")
    if arr.ndim < 2:
        raise ImageError(f"An image needs at least 2 dimensions; got shape {arr.shape}.")
    if channel_axis is not None:
        arr = np.moveaxis(arr, channel_axis, -1)
        if arr.shape[-1] not in (1, 3, 4):
            raise ImageError(
                f"The channel axis has {arr.shape[-1]} entries; 1, 3 or 4 are supported."
            )
        return arr
    if rgb is None:
        if arr.ndim >= 3 and arr.shape[-1] == 1 and arr.shape[-2] > 4:
            return arr  # a trailing channel axis of 1: (H, W, 1) is grayscale
        if arr.ndim >= 3 and arr.shape[-1] == 2 and arr.shape[-2] > 4:
            raise ImageError(
                f"The last axis of shape {arr.shape} has 2 entries: two channels cannot be shown as "
                "colour. Select one channel (e.g. image[..., 0]), or pass rgb=False to score the "
                "array as a stack of 2D planes, or channel_axis= to name the colour axis."
            )
        if is_rgb_shape(arr.shape):
            rgb = True
        elif arr.ndim == 3 and arr.shape[0] in (3, 4) and arr.shape[-1] > 4 and arr.shape[1] > 4:
            arr = np.moveaxis(arr, 0, -1)  # channel-first colour image
            rgb = True
        else:
            rgb = False
    if rgb:
        if arr.ndim < 3 or arr.shape[-1] not in (3, 4):
            raise ImageError(f"An RGB image needs a last axis of 3 or 4; got shape {arr.shape}.")
        return arr
    return arr[..., None]


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


def to_rgb01(plane: np.ndarray, intensity_range: tuple[float, float] | None = None) -> np.ndarray:
    """One ``(H, W, C)`` plane to float32 RGB in [0, 1] (see the module docstring).

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
    c = plane.shape[-1]
    if c == 4:
        plane = plane[..., :3]
    elif c == 1:
        plane = np.repeat(plane, 3, axis=-1)
    dtype = plane.dtype
    if np.issubdtype(dtype, np.floating) and not np.isfinite(plane).all():
        raise ImageError(
            "The image contains NaN or infinite values; replace them (e.g. np.nan_to_num) first."
        )
    # float64 values beyond float32's range (about 3e38) would overflow to inf in float32:
    # such planes are normalised in float64 (divided by their largest magnitude first).
    wide = (
        np.issubdtype(dtype, np.floating)
        and dtype.itemsize > 4
        and plane.size > 0
        and float(np.max(np.abs(plane))) > 1e30
    )
    if intensity_range is not None:
        lo, hi = parse_intensity_range(intensity_range)
        work = np.float64 if (wide or max(abs(lo), abs(hi)) > 1e30) else np.float32
        out = (plane.astype(work) - lo) / (hi - lo)
    elif dtype == np.uint8:
        return plane.astype(np.float32) / 255.0
    elif dtype == np.bool_:
        return plane.astype(np.float32)
    else:
        f = plane / float(np.max(np.abs(plane))) if wide else plane.astype(np.float32)
        if not wide and np.issubdtype(dtype, np.floating) and f.min() >= 0.0 and f.max() <= 1.0:
            return f.astype(np.float32, copy=False)
        lo, hi = np.percentile(f, [0.1, 99.9])
        if hi <= lo:
            lo, hi = float(f.min()), float(f.max())
        if hi <= lo:  # constant image
            return np.full(f.shape, 0.5, np.float32)
        out = (f - lo) / (hi - lo)
    return np.clip(out, 0.0, 1.0, out=out).astype(np.float32, copy=False)


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
