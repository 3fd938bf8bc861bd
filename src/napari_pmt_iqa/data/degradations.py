"""Graded synthetic degradations of photographs (in the spirit of KADID-10k).

Every degradation takes an ``(H, W, 3)`` uint8 photo and returns one of the same shape and dtype,
at a ``level`` from 1 (mild) to 5 (severe); level 0 returns an unchanged copy. Results are
deterministic for a given ``seed`` (the noise, the direction of a motion blur). Each level is
strictly worse than the one before it (its PSNR against the clean photo is lower: tested).

They serve three purposes:

* the **training bank** of the distortion-aware objective (:mod:`napari_pmt_iqa.training.synthetic`):
  two versions of the same crop, the less degraded one must score higher;
* the **sanity benchmark** (do scores fall as a distortion grows, on photos never trained on?), on
  :data:`SANITY_KINDS`, and the generalisation test on :data:`HELD_OUT_KINDS`, which the default
  training bank leaves out;
* the sample data of the plugin (worse images score worse at a glance).

Kinds
-----
============== ====================================================== ==========================
kind           what                                                   level 1 .. 5
============== ====================================================== ==========================
blur           Gaussian blur                                          sigma 0.8 .. 6 px
motion_blur    linear motion blur, seeded direction                   length 3 .. 25 px
defocus        disc (out-of-focus) blur                               radius 1 .. 7 px
noise          white Gaussian noise                                   std 5 .. 55 grey levels
poisson        signal-dependent (shot) noise                          600 .. 8 photons at white
chroma_noise   colour noise in the chroma channels only, blotchy      std 6 .. 48
impulse        salt-and-pepper noise                                  0.3 % .. 12 % of pixels
jpeg           JPEG                                                   quality 60 .. 4
webp           WebP                                                   quality 40 .. 0
jpeg2000       JPEG 2000                                              compression 30:1 .. 400:1
resample       down-sampling then bicubic up-sampling                 factor 1.5 .. 6
pixelate       block averaging (mosaic)                               blocks 2 .. 10 px
contrast       contrast reduction towards the mean grey               keep 70 % .. 15 %
underexpose    exposure reduced (in linear light), then quantised     x0.6 .. x0.12
overexpose     exposure increased (in linear light), highlights clip  x1.6 .. x6
desaturate     colour saturation reduced                              keep 60 % .. 0 %
oversaturate   colour saturation increased (clipping)                 x1.8 .. x6
quantize       fewer grey levels per channel (banding)                32 .. 4 levels
============== ====================================================== ==========================
"""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np

#: Level 1 (mild) to 5 (severe) parameter of each kind.
LEVELS: dict[str, tuple[float, ...]] = {
    "blur": (0.8, 1.5, 2.5, 4.0, 6.0),
    "motion_blur": (3, 6, 10, 16, 25),
    "defocus": (1.0, 2.0, 3.5, 5.0, 7.0),
    "noise": (5.0, 12.0, 22.0, 35.0, 55.0),
    "poisson": (600.0, 150.0, 50.0, 20.0, 8.0),
    "chroma_noise": (6.0, 12.0, 20.0, 32.0, 48.0),
    "impulse": (0.003, 0.01, 0.025, 0.06, 0.12),
    "jpeg": (60, 35, 20, 10, 4),
    "webp": (40, 20, 10, 4, 0),
    "jpeg2000": (30, 60, 120, 220, 400),
    "resample": (1.5, 2.0, 3.0, 4.5, 6.0),
    "pixelate": (2, 3, 4, 6, 10),
    "contrast": (0.7, 0.5, 0.35, 0.25, 0.15),
    "underexpose": (0.6, 0.4, 0.25, 0.17, 0.12),
    "overexpose": (1.6, 2.2, 3.0, 4.2, 6.0),
    "desaturate": (0.6, 0.4, 0.2, 0.08, 0.0),
    "oversaturate": (1.8, 2.5, 3.3, 4.5, 6.0),
    "quantize": (32, 16, 10, 6, 4),
}
#: Every kind of the bank.
KINDS: tuple[str, ...] = tuple(LEVELS)
#: The three kinds of the sanity benchmark (and of the plugin's sample data).
SANITY_KINDS: tuple[str, ...] = ("blur", "noise", "jpeg")
#: Kinds the default training bank leaves out: a test of how far the model generalises.
HELD_OUT_KINDS: tuple[str, ...] = ("motion_blur", "jpeg2000", "impulse", "pixelate")
#: The default training bank.
TRAIN_KINDS: tuple[str, ...] = tuple(k for k in KINDS if k not in HELD_OUT_KINDS)
#: Context (pixels) a degradation needs around a region so that its result inside the region does
#: not depend on what lies beyond (the blur kernels' reach, the codecs' blocks).
CONTEXT = 16


def _check(img: np.ndarray) -> np.ndarray:
    img = np.asarray(img)
    if img.ndim != 3 or img.shape[-1] != 3 or img.dtype != np.uint8:
        raise ValueError(f"distortions take (H, W, 3) uint8 images; got {img.shape} {img.dtype}")
    return img


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(x + 0.5, 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- blur
def gaussian_blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of each channel."""
    from scipy.ndimage import gaussian_filter

    img = _check(img)
    out = gaussian_filter(img.astype(np.float32), sigma=(sigma, sigma, 0), mode="reflect")
    return _to_uint8(out)


def _convolve(img: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Each channel convolved with ``kernel`` (normalised), reflecting at the borders."""
    from scipy.signal import fftconvolve

    kernel = kernel / kernel.sum()
    r = max(kernel.shape) // 2 + 1
    x = np.pad(img.astype(np.float32), ((r, r), (r, r), (0, 0)), mode="reflect")
    out = fftconvolve(x, kernel[..., None].astype(np.float32), mode="same", axes=(0, 1))
    return _to_uint8(out[r:-r, r:-r])


def motion_blur(img: np.ndarray, length: float, seed: int = 0) -> np.ndarray:
    """Linear motion blur over ``length`` pixels in a direction drawn from ``seed``."""
    img = _check(img)
    angle = np.random.default_rng((seed, 17)).uniform(0.0, np.pi)
    n = int(np.ceil(length)) | 1  # odd kernel side
    k = np.zeros((n, n), np.float32)
    c = n // 2
    # a line of ``length`` pixels through the centre, drawn with sub-pixel samples
    for t in np.linspace(-(length - 1) / 2, (length - 1) / 2, 8 * n):
        y, x = c + t * np.sin(angle), c + t * np.cos(angle)
        y0, x0 = int(np.floor(y)), int(np.floor(x))
        fy, fx = y - y0, x - x0
        for dy, wy in ((0, 1 - fy), (1, fy)):
            for dx, wx in ((0, 1 - fx), (1, fx)):
                if 0 <= y0 + dy < n and 0 <= x0 + dx < n:
                    k[y0 + dy, x0 + dx] += wy * wx
    return _convolve(img, k)


def defocus_blur(img: np.ndarray, radius: float) -> np.ndarray:
    """Out-of-focus blur: a uniform disc of ``radius`` pixels (anti-aliased edge)."""
    img = _check(img)
    r = int(np.ceil(radius))
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1].astype(np.float32)
    k = np.clip(radius + 0.5 - np.hypot(yy, xx), 0.0, 1.0)
    return _convolve(img, k)


# --------------------------------------------------------------------------- noise
def gaussian_noise(img: np.ndarray, std: float, seed: int = 0) -> np.ndarray:
    """Additive white Gaussian noise."""
    img = _check(img)
    rng = np.random.default_rng(seed)
    out = img.astype(np.float32) + rng.normal(0.0, std, img.shape).astype(np.float32)
    return _to_uint8(out)


def poisson_noise(img: np.ndarray, photons: float, seed: int = 0) -> np.ndarray:
    """Signal-dependent (shot) noise: ``photons`` expected photons at white, Poisson-distributed."""
    img = _check(img)
    rng = np.random.default_rng(seed)
    lam = img.astype(np.float64) / 255.0 * photons
    out = rng.poisson(lam).astype(np.float32) * np.float32(255.0 / photons)
    return _to_uint8(out)


_RGB2YCC = np.array(
    [[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]], np.float32
)
_YCC2RGB = np.linalg.inv(_RGB2YCC).astype(np.float32)


def chroma_noise(img: np.ndarray, std: float, seed: int = 0) -> np.ndarray:
    """Colour noise: blotchy Gaussian noise in the two chroma channels, luma untouched."""
    from scipy.ndimage import gaussian_filter

    img = _check(img)
    rng = np.random.default_rng(seed)
    ycc = img.astype(np.float32) @ _RGB2YCC.T
    n = rng.normal(0.0, 1.0, img.shape[:2] + (2,)).astype(np.float32)
    n = gaussian_filter(n, sigma=(1.0, 1.0, 0), mode="reflect")
    n *= std / max(float(n.std()), 1e-6)
    ycc[..., 1:] += n
    return _to_uint8(ycc @ _YCC2RGB.T)


def impulse_noise(img: np.ndarray, density: float, seed: int = 0) -> np.ndarray:
    """Salt-and-pepper noise: a ``density`` share of the pixels set to black or white."""
    img = _check(img)
    rng = np.random.default_rng(seed)
    u = rng.random(img.shape[:2])
    out = img.copy()
    out[u < density / 2] = 0
    out[(u >= density / 2) & (u < density)] = 255
    return out


# --------------------------------------------------------------------------- compression
def _codec(img: np.ndarray, **save) -> np.ndarray:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, **save)
    buf.seek(0)
    with Image.open(buf) as im:
        return np.asarray(im.convert("RGB"))


def jpeg(img: np.ndarray, quality: int) -> np.ndarray:
    """JPEG compression at ``quality`` (1-95)."""
    return _codec(_check(img), format="JPEG", quality=int(quality))


def webp(img: np.ndarray, quality: int) -> np.ndarray:
    """WebP (lossy) compression at ``quality`` (0-100)."""
    return _codec(_check(img), format="WEBP", quality=int(quality), method=4)


def jpeg2000(img: np.ndarray, ratio: float) -> np.ndarray:
    """JPEG 2000 compression at ``ratio``:1."""
    return _codec(
        _check(img), format="JPEG2000", quality_mode="rates", quality_layers=[float(ratio)]
    )


# --------------------------------------------------------------------------- resolution
def resample(img: np.ndarray, factor: float) -> np.ndarray:
    """Down-sample by ``factor`` (area average), then up-sample back (bicubic)."""
    from PIL import Image

    img = _check(img)
    h, w = img.shape[:2]
    small = Image.fromarray(img).resize(
        (max(1, round(w / factor)), max(1, round(h / factor))), Image.BOX
    )
    return np.asarray(small.resize((w, h), Image.BICUBIC))


def pixelate(img: np.ndarray, block: int) -> np.ndarray:
    """Mosaic: the mean colour of each ``block`` x ``block`` square."""
    img = _check(img)
    h, w = img.shape[:2]
    b = int(block)
    hp, wp = -(-h // b) * b, -(-w // b) * b
    x = np.pad(img.astype(np.float32), ((0, hp - h), (0, wp - w), (0, 0)), mode="edge")
    m = x.reshape(hp // b, b, wp // b, b, 3).mean(axis=(1, 3))
    return _to_uint8(np.repeat(np.repeat(m, b, axis=0), b, axis=1)[:h, :w])


# --------------------------------------------------------------------------- tone and colour
def _srgb_to_linear(x: np.ndarray) -> np.ndarray:
    return np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)


def _linear_to_srgb(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return np.where(x <= 0.0031308, 12.92 * x, 1.055 * np.power(x, 1 / 2.4) - 0.055)


def exposure(img: np.ndarray, gain: float) -> np.ndarray:
    """Multiply the light by ``gain`` (linear light): < 1 darkens, > 1 brightens and clips."""
    img = _check(img)
    lin = _srgb_to_linear(img.astype(np.float32) / 255.0)
    return _to_uint8(_linear_to_srgb(lin * gain) * 255.0)


def contrast(img: np.ndarray, keep: float) -> np.ndarray:
    """Pull every pixel towards the image's mean grey, keeping ``keep`` of its contrast."""
    img = _check(img).astype(np.float32)
    m = img.mean()
    return _to_uint8(m + keep * (img - m))


def saturation(img: np.ndarray, factor: float) -> np.ndarray:
    """Scale the colour saturation by ``factor`` around each pixel's luma (clipping)."""
    img = _check(img).astype(np.float32)
    y = img @ np.array([0.299, 0.587, 0.114], np.float32)
    return _to_uint8(y[..., None] + factor * (img - y[..., None]))


def quantize(img: np.ndarray, levels: int) -> np.ndarray:
    """Keep ``levels`` grey levels per channel (no dithering: banding)."""
    img = _check(img).astype(np.float32)
    q = float(levels - 1)
    return _to_uint8(np.round(img / 255.0 * q) / q * 255.0)


# --------------------------------------------------------------------------- the bank
def _apply(kind: str, img: np.ndarray, p: float, seed: int) -> np.ndarray:
    fns: dict[str, Callable[[], np.ndarray]] = {
        "blur": lambda: gaussian_blur(img, p),
        "motion_blur": lambda: motion_blur(img, p, seed),
        "defocus": lambda: defocus_blur(img, p),
        "noise": lambda: gaussian_noise(img, p, seed),
        "poisson": lambda: poisson_noise(img, p, seed),
        "chroma_noise": lambda: chroma_noise(img, p, seed),
        "impulse": lambda: impulse_noise(img, p, seed),
        "jpeg": lambda: jpeg(img, int(p)),
        "webp": lambda: webp(img, int(p)),
        "jpeg2000": lambda: jpeg2000(img, p),
        "resample": lambda: resample(img, p),
        "pixelate": lambda: pixelate(img, int(p)),
        "contrast": lambda: contrast(img, p),
        "underexpose": lambda: exposure(img, p),
        "overexpose": lambda: exposure(img, p),
        "desaturate": lambda: saturation(img, p),
        "oversaturate": lambda: saturation(img, p),
        "quantize": lambda: quantize(img, int(p)),
    }
    return fns[kind]()


def distort(img: np.ndarray, kind: str, level: int, seed: int = 0) -> np.ndarray:
    """Apply degradation ``kind`` at ``level`` 1 (mild) to 5 (severe); level 0 leaves it unchanged.

    Parameters
    ----------
    img
        ``(H, W, 3)`` uint8.
    kind
        One of :data:`KINDS`.
    level
        0 to 5.
    seed
        Seeds the noise and the direction of a motion blur.

    Returns
    -------
    numpy.ndarray
        ``(H, W, 3)`` uint8, the shape of ``img``.
    """
    if kind not in LEVELS:
        raise ValueError(f"unknown distortion {kind!r}; choose from {', '.join(LEVELS)}")
    img = _check(img)
    if level == 0:
        return img.copy()
    if not 1 <= level <= 5:
        raise ValueError("level must be 0..5")
    return _apply(kind, img, LEVELS[kind][level - 1], seed)


def distort_stack(img: np.ndarray, steps: list[tuple[str, int]], seed: int = 0) -> np.ndarray:
    """Apply several degradations in turn, ``steps`` a list of ``(kind, level)``."""
    out = _check(img)
    for k, (kind, level) in enumerate(steps):
        out = distort(out, kind, level, seed=seed * 31 + k)
    return out


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
