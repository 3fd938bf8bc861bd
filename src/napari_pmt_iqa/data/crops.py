"""Decoding, caching and cropping images for training and evaluation.

* :func:`load_rgb` decodes a file to ``(H, W, 3)`` uint8 (with the intensity rules of
  :mod:`napari_pmt_iqa.imaging` for 16-bit or float files) and enlarges images smaller than a crop.
* :class:`DecodeCache` decodes each image once into a ``.npy`` file and memory-maps it afterwards,
  so that JPEG decoding does not starve the model in later epochs.
* :class:`RandomCropDataset` yields random crops (and horizontal flips) for training.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..imaging import (
    ImageError,
    enlarge_to,
    enlarged_size,
    read_image,
    standardize_layout,
    to_rgb01,
)
from .datasets import Sample


def load_rgb(path: str | os.PathLike, min_side: int = 224) -> np.ndarray:
    """Decode an image file to ``(H, W, 3)`` uint8, enlarged so that both sides are >= ``min_side``.

    Raises
    ------
    ImageError
        The file cannot be decoded, or it is a stack rather than one 2D image.
    """
    return array_to_rgb8(read_image(path), min_side, name=str(path))


def array_to_rgb8(image, min_side: int = 224, name: str = "image") -> np.ndarray:
    """Turn an array of any layout and dtype into ``(H, W, 3)`` uint8 with both sides >= ``min_side``.

    Raises
    ------
    ImageError
        Not an image (see :func:`~napari_pmt_iqa.imaging.standardize_layout`), or a stack.
    """
    arr = standardize_layout(image)
    if arr.ndim != 3:
        raise ImageError(
            f"{name}: a single 2D image is needed for training; got shape {arr.shape}."
        )
    if arr.shape[0] < 2 or arr.shape[1] < 2:
        raise ImageError(
            f"{name}: {arr.shape[0]} x {arr.shape[1]} pixels is too small to train on."
        )
    h, w = arr.shape[:2]
    small = min(h, w) < min_side
    if arr.dtype == np.uint8 and arr.shape[-1] in (3, 4):
        rgb = np.ascontiguousarray(arr[..., :3])
    elif arr.dtype == np.uint8 and arr.shape[-1] == 1:
        rgb = np.repeat(arr, 3, axis=-1)
    elif small:  # enlarged in [0, 1] floats first, as scoring does, then quantised once
        rgb01 = enlarge_to(to_rgb01(arr), enlarged_size(h, w, min_side))
        return (np.clip(rgb01, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    else:
        rgb = (to_rgb01(arr) * 255.0 + 0.5).astype(np.uint8)
    if small:  # the enlargement rule of scoring (imaging.enlarge_to)
        rgb = enlarge_to(rgb, enlarged_size(h, w, min_side))
    return rgb


def load_sample_rgb(sample, min_side: int = 224) -> np.ndarray:
    """:func:`load_rgb` for a :class:`Sample` or the array of an ``ArraySample``."""
    arr = getattr(sample, "array", None)
    if arr is not None:
        return array_to_rgb8(arr, min_side, name=str(sample.path))
    return load_rgb(sample.path, min_side)


class DecodeCache:
    """Decode images once into ``.npy`` files and memory-map them afterwards.

    Parameters
    ----------
    folder
        Where the decoded arrays go (one file per image, named by a hash of the path and mtime).
    """

    def __init__(self, folder: str | os.PathLike, min_side: int = 224) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.min_side = min_side

    def _key(self, path: Path) -> Path:
        st = path.stat()
        h = hashlib.sha1(
            f"{path.resolve()}|{st.st_mtime_ns}|{st.st_size}|{self.min_side}".encode()
        ).hexdigest()
        return self.folder / f"{h[:20]}.npy"

    def get(self, path: str | os.PathLike) -> np.ndarray:
        path = Path(path)
        key = self._key(path)
        if key.exists():
            try:
                return np.load(key, mmap_mode="r")
            except (ValueError, OSError):
                key.unlink(missing_ok=True)
        arr = load_rgb(path, self.min_side)
        tmp = key.with_suffix(f".{os.getpid()}.tmp.npy")
        np.save(tmp, arr)
        os.replace(tmp, key)
        return arr


def check_samples(
    samples: Sequence[Sample], cache: DecodeCache | None = None
) -> tuple[list[Sample], list[str]]:
    """Decode every sample once; return the good ones and a list of ``"path: reason"`` for the rest."""
    good, bad = [], []
    for s in samples:
        try:
            if cache is not None:
                cache.get(s.path)
            else:
                load_rgb(s.path)
            good.append(s)
        except (ImageError, OSError, ValueError) as exc:
            bad.append(f"{s.path}: {exc}")
    return good, bad


def random_crop(
    img: np.ndarray, size: int, rng: np.random.Generator, flip: bool = True
) -> np.ndarray:
    """A random ``size`` x ``size`` crop of an ``(H, W, 3)`` image, flipped left-right half the time."""
    h, w = img.shape[:2]
    y = int(rng.integers(0, h - size + 1))
    x = int(rng.integers(0, w - size + 1))
    crop = np.asarray(img[y : y + size, x : x + size])
    if flip and rng.random() < 0.5:
        crop = crop[:, ::-1]
    return crop


class RandomCropDataset:
    """A map-style torch data set of random crops with their internal (0-100) target scores.

    Item ``i`` is ``(crops, target)``: ``crops`` is a uint8 tensor ``(K, 3, S, S)`` of
    ``crops_per_image`` random crops (flipped left-right half the time) of image ``i``, ``target``
    a float32 tensor (internal scale). The crops of item ``i`` depend only on ``(seed, epoch, i)``,
    also across DataLoader worker processes. Convert on the training device with
    ``x.float() / 255`` and the model's normalisation.

    Images come from :meth:`image`: here the samples' files (through ``cache`` if given);
    :class:`napari_pmt_iqa.training.data.CropDataset` serves them from memory instead.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        targets: Sequence[float],
        crop_size: int = 224,
        crops_per_image: int = 1,
        flip: bool = True,
        cache: DecodeCache | None = None,
        seed: int = 0,
    ) -> None:
        if len(samples) != len(targets):
            raise ValueError("samples and targets differ in length")
        self.samples = list(samples)
        self.cache = cache
        self._init_crops(targets, crop_size, crops_per_image, flip, seed)

    def _init_crops(
        self, targets: Sequence[float], crop_size: int, crops_per_image: int, flip: bool, seed: int
    ) -> None:
        self.targets = np.asarray(targets, dtype=np.float32)
        self.crop_size = crop_size
        self.crops_per_image = crops_per_image
        self.flip = flip
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Make the crops of an epoch reproducible (also across worker processes)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.targets)

    def image(self, i: int) -> np.ndarray:
        """The ``(H, W, 3)`` uint8 image of item ``i``."""
        s = self.samples[i]
        try:
            return self.cache.get(s.path) if self.cache else load_rgb(s.path, self.crop_size)
        except (ImageError, OSError, ValueError) as exc:
            warnings.warn(f"skipping an undecodable image: {exc}", RuntimeWarning, stacklevel=2)
            raise

    def __getitem__(self, i: int):
        import torch

        i = int(i)
        rng = np.random.default_rng((self.seed, self.epoch, i))
        img = self.image(i)
        crops = np.stack(
            [random_crop(img, self.crop_size, rng, self.flip) for _ in range(self.crops_per_image)]
        )
        x = torch.from_numpy(np.ascontiguousarray(crops.transpose(0, 3, 1, 2)))
        return x, torch.tensor(float(self.targets[i]))
