"""Graded synthetic distortions of photographs (in the spirit of KADID-10k).

Used for the sample data (worse images score worse at a glance), for the sanity benchmark of the
default model (do scores fall as a distortion grows?) and available for quality-aware pretraining.
All functions take and return ``(H, W, 3)`` uint8 arrays and are deterministic for a given ``seed``.
"""

from __future__ import annotations

import io

import numpy as np

#: Level 1 (mild) to 5 (severe) parameters of each distortion.
LEVELS = {
    "blur": (0.8, 1.5, 2.5, 4.0, 6.0),  # Gaussian sigma, pixels
    "noise": (5.0, 12.0, 22.0, 35.0, 55.0),  # Gaussian noise std, grey levels
    "jpeg": (60, 35, 20, 10, 4),  # JPEG quality
}
DISTORTIONS = tuple(LEVELS)


def _check(img: np.ndarray) -> np.ndarray:
    img = np.asarray(img)
    if img.ndim != 3 or img.shape[-1] != 3 or img.dtype != np.uint8:
        raise ValueError(f"distortions take (H, W, 3) uint8 images; got {img.shape} {img.dtype}")
    return img


def gaussian_blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of each channel."""
    from scipy.ndimage import gaussian_filter

    img = _check(img)
    out = gaussian_filter(img.astype(np.float32), sigma=(sigma, sigma, 0), mode="reflect")
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def gaussian_noise(img: np.ndarray, std: float, seed: int = 0) -> np.ndarray:
    """Additive white Gaussian noise."""
    img = _check(img)
    rng = np.random.default_rng(seed)
    out = img.astype(np.float32) + rng.normal(0.0, std, img.shape).astype(np.float32)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def jpeg(img: np.ndarray, quality: int) -> np.ndarray:
    """JPEG compression at ``quality`` (1-95)."""
    from PIL import Image

    img = _check(img)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=int(quality))
    buf.seek(0)
    with Image.open(buf) as im:
        return np.asarray(im.convert("RGB"))


def distort(img: np.ndarray, kind: str, level: int, seed: int = 0) -> np.ndarray:
    """Apply distortion ``kind`` (blur, noise, jpeg) at ``level`` 1 (mild) to 5 (severe); 0 = none."""
    if kind not in LEVELS:
        raise ValueError(f"unknown distortion {kind!r}; choose from {', '.join(LEVELS)}")
    if level == 0:
        return _check(img).copy()
    if not 1 <= level <= 5:
        raise ValueError("level must be 0..5")
    p = LEVELS[kind][level - 1]
    if kind == "blur":
        return gaussian_blur(img, p)
    if kind == "noise":
        return gaussian_noise(img, p, seed)
    return jpeg(img, int(p))


def pristine_photos() -> dict[str, np.ndarray]:
    """Natural colour photos bundled with scikit-image (no download), as ``(H, W, 3)`` uint8."""
    from skimage import data

    out = {}
    for name in ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "retina"):
        try:
            img = getattr(data, name)()
        except Exception:  # pragma: no cover - a missing bundled image
            continue
        if img.ndim == 3 and img.shape[-1] >= 3:
            out[name] = np.ascontiguousarray(img[..., :3]).astype(np.uint8)
    return out
