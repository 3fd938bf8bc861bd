"""Sample data: scikit-image's bundled photos with graded synthetic distortions.

Each sample is a stack whose first axis is the distortion level, from the untouched photo (level 0)
to a strongly distorted one, so scoring the stack shows at once that worse images score worse (the
stack plot of the Score widget falls from left to right). Generated at run time, offline, with fixed
seeds; no torch.
"""

from __future__ import annotations

import numpy as np

#: distortion -> (photo, levels, label of each level)
GRADES = {
    "blur": ("chelsea", (0.0, 1.0, 2.0, 3.5, 6.0), "Gaussian blur sigma {:g} px"),
    "noise": ("coffee", (0.0, 0.03, 0.06, 0.12, 0.24), "Gaussian noise sigma {:g}"),
    "jpeg": ("astronaut", (100, 40, 15, 7, 3), "JPEG quality {:g}"),
}


def _photo(name: str, max_side: int = 512) -> np.ndarray:
    from skimage import data
    from skimage.transform import rescale

    img = getattr(data, name)()
    f = max_side / max(img.shape[:2])
    if f < 1:
        img = rescale(img, f, channel_axis=-1, anti_aliasing=True, preserve_range=True)
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def distort(img: np.ndarray, kind: str, level: float, seed: int = 0) -> np.ndarray:
    """Apply one synthetic distortion to a uint8 RGB image.

    Parameters
    ----------
    img
        ``(H, W, 3)`` uint8.
    kind
        ``"blur"`` (Gaussian, ``level`` = sigma in pixels), ``"noise"`` (additive Gaussian,
        ``level`` = sigma on the 0-1 scale) or ``"jpeg"`` (``level`` = JPEG quality 1-100; 100
        leaves the image untouched).
    level
        Strength; 0 (100 for JPEG) leaves the image unchanged.
    seed
        Seed of the noise.

    Returns
    -------
    numpy.ndarray
        ``(H, W, 3)`` uint8.
    """
    from .data import degradations as distortions

    if kind == "blur":
        return img.copy() if level <= 0 else distortions.gaussian_blur(img, float(level))
    if kind == "noise":
        return (
            img.copy()
            if level <= 0
            else distortions.gaussian_noise(img, 255.0 * float(level), seed)
        )
    if kind == "jpeg":
        return img.copy() if level >= 100 else distortions.jpeg(img, int(level))
    raise ValueError(f"Unknown distortion {kind!r}; use blur, noise or jpeg.")


def graded_stack(kind: str, max_side: int = 512) -> tuple[np.ndarray, dict]:
    """A ``(levels, H, W, 3)`` uint8 stack of one photo at graded levels of one distortion, and layer kwargs."""
    photo, levels, label = GRADES[kind]
    img = _photo(photo, max_side)
    stack = np.stack([distort(img, kind, lv, seed=k) for k, lv in enumerate(levels)])
    labels = [label.format(lv) for lv in levels]
    kwargs = {
        "name": f"{photo} ({kind}, {len(levels)} levels)",
        "rgb": True,
        "axis_labels": ("level", "y", "x"),
        "metadata": {
            "pmt_iqa_sample": {
                "photo": photo,
                "distortion": kind,
                "levels": list(levels),
                "labels": labels,
            }
        },
    }
    return stack, kwargs


def graded_blur() -> list[tuple]:
    """napari sample: chelsea (the cat) at five levels of Gaussian blur."""
    return [graded_stack("blur")]


def graded_noise() -> list[tuple]:
    """napari sample: coffee at five levels of Gaussian noise."""
    return [graded_stack("noise")]


def graded_jpeg() -> list[tuple]:
    """napari sample: astronaut at five levels of JPEG compression."""
    return [graded_stack("jpeg")]


def photo_pair() -> list[tuple]:
    """napari sample: one clean photo and a blurred, noisy copy, as two 2D layers."""
    img = _photo("chelsea")
    bad = distort(distort(img, "blur", 3.0), "noise", 0.08)
    return [
        (img, {"name": "chelsea (clean)", "rgb": True}),
        (bad, {"name": "chelsea (blur + noise)", "rgb": True, "visible": False}),
    ]


def local_defects() -> list[tuple]:
    """napari sample: one photo four times (2 x 2), three of the copies distorted.

    Top-left clean, top-right blurred, bottom-left noisy, bottom-right JPEG-compressed: the quality
    maps should show *where* the image is worse (everywhere but the top-left quadrant).
    """
    q = _photo("astronaut", 384)
    tl, tr = q, distort(q, "blur", 3.0)
    bl, br = distort(q, "noise", 0.12, seed=3), distort(q, "jpeg", 6)
    out = np.concatenate(
        [np.concatenate([tl, tr], axis=1), np.concatenate([bl, br], axis=1)], axis=0
    )
    meta = {
        "pmt_iqa_sample": {
            "photo": "astronaut",
            "quadrants": {
                "top-left": "clean",
                "top-right": "Gaussian blur sigma 3",
                "bottom-left": "Gaussian noise 0.12",
                "bottom-right": "JPEG quality 6",
            },
        }
    }
    return [
        (out, {"name": "astronaut x4 (clean, blur, noise, JPEG)", "rgb": True, "metadata": meta})
    ]
