"""Tiny generated IQA data sets for the training tests: MOS follows blur and noise, so metrics are finite."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np


def make_image(rng: np.random.Generator, size: int, quality: float) -> np.ndarray:
    """A textured RGB image degraded by blur and noise; ``quality`` in [0, 1] (1 = sharp, clean)."""
    from scipy import ndimage

    base = rng.random((size // 8, size // 8, 3))
    img = np.kron(base, np.ones((8, 8, 1)))
    yy, xx = np.mgrid[:size, :size] / size
    img = 0.6 * img + 0.4 * (0.5 + 0.5 * np.sin(2 * np.pi * (6 * xx + 3 * yy)))[..., None]
    sigma = 4.0 * (1.0 - quality)
    if sigma > 0.05:
        img = ndimage.gaussian_filter(img, (sigma, sigma, 0))
    img = img + rng.normal(0, 0.15 * (1.0 - quality), img.shape)
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def make_dataset(
    root: Path,
    n: int = 24,
    size: int = 96,
    seed: int = 0,
    scale: float = 100.0,
    split: bool = False,
    name: str = "scores.csv",
) -> Path:
    """Write ``n`` PNGs and a CSV ``image,mos[,split]`` into ``root``; return the CSV path."""
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        q = (i + 0.5) / n
        fname = f"img_{i:03d}.png"
        Image.fromarray(make_image(rng, size, q)).save(root / fname)
        row = {"image": fname, "mos": f"{q * scale:.4f}"}
        if split:
            row["split"] = "test" if i % 5 == 0 else "train"
        rows.append(row)
    path = root / name
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def make_pairs(n: int = 12, size: int = 80, seed: int = 0, scale: float = 5.0):
    """In-memory ``(array, mos)`` pairs."""
    rng = np.random.default_rng(seed)
    return [(make_image(rng, size, (i + 0.5) / n), (i + 0.5) / n * scale) for i in range(n)]
