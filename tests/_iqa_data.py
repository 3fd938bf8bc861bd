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


def fake_livec(root: Path, n: int = 12) -> tuple[list[str], np.ndarray]:
    """A LIVE-C folder in its official layout (``Data/*.mat``, ``Images/``) with ``n`` BMPs named
    ``100.bmp``... plus the seven training images ``t1``-``t7``; returns the names and the MOS."""
    from PIL import Image
    from scipy.io import savemat

    (root / "Data").mkdir(parents=True)
    (root / "Images" / "trainingImages").mkdir(parents=True)
    names = [f"t{i}.bmp" for i in range(1, 8)] + [f"{100 + i}.bmp" for i in range(n)]
    for k, n_ in enumerate(names):
        folder = root / "Images" / ("trainingImages" if n_.startswith("t") else "")
        Image.fromarray(make_image(np.random.default_rng(k), 32, 0.5)).save(
            folder / n_, format="BMP"
        )
    mos = np.linspace(10, 90, len(names))[None, :]
    arr = np.empty((len(names), 1), dtype=object)
    for k, n_ in enumerate(names):
        arr[k, 0] = np.array([n_])
    savemat(root / "Data" / "AllImages_release.mat", {"AllImages_release": arr})
    savemat(root / "Data" / "AllMOS_release.mat", {"AllMOS_release": mos})
    return names, mos.ravel()


def fake_biq(root: Path, bad_score: bool = False) -> None:
    """A BIQ2021 folder in its official layout: ``Images/`` and the Train/Test CSVs (3 + 1 images)."""
    from PIL import Image

    (root / "Images").mkdir(parents=True)
    for k, name in enumerate(["ss01 (1).jpg", "ss02 (1014).JPG", "ss03 (5).jpg", "ss03 (6).jpg"]):
        Image.fromarray(make_image(np.random.default_rng(k), 32, 0.5)).save(
            root / "Images" / name, format="JPEG"
        )
    (root / "Train (Images and MOS).csv").write_text(
        "Image Name,MOS,,\nss01 (1).jpg,0.25,,\nss02 (1014).jpg,0.75,,\nss03 (5).jpg,"
        + ("n/a" if bad_score else "0.5")
        + ",,\n"
    )
    (root / "Test (Images and MOS).csv").write_text("Image Name,MOS\nss03 (6).jpg,0.4\n")


def stop_at_step(control, n: int):
    """A training listener that asks ``control`` (a ``training.events.Control``) to stop at the
    ``n``-th optimiser step (the ``n``-th ``BatchEnd`` event)."""
    seen = []

    def listener(ev):
        if type(ev).__name__ == "BatchEnd":
            seen.append(ev)
            if len(seen) == n:
                control.request_stop()

    return listener
