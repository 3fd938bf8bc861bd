"""Data plumbing of the trainer: decoded-image store, crop data set, epoch batch plans.

* :class:`ImageStore` decodes every image once before training (that is also how bad images are
  found), keeps the decoded ``uint8`` arrays in memory while they fit in a budget and decodes the
  rest on demand (in DataLoader workers when there are any).
* :class:`CropDataset` gives random ``crop`` x ``crop`` crops (and flips) of image ``i`` whose
  randomness depends only on ``(seed, epoch, i)``, so runs are reproducible, resumable and the same
  with any number of workers or processes.
* :func:`epoch_batches` is the order of one epoch, a function of ``(seed, epoch)`` only, cut into
  global batches; :func:`rank_share` gives one process its contiguous part of each global batch, so
  that N processes see exactly the images one process would (the DDP-equals-single-process rule).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..data.crops import RandomCropDataset, load_sample_rgb
from ..imaging import ImageError


class ImageStore:
    """Decoded images of a list of samples, kept in memory up to ``budget_mb``.

    Parameters
    ----------
    samples
        :class:`~napari_pmt_iqa.data.datasets.Sample` or ``ArraySample`` objects.
    min_side
        Images are enlarged so both sides are at least this (the crop size).
    budget_mb
        Memory for decoded images; images beyond it are decoded again whenever they are used.
    """

    def __init__(self, samples: Sequence, min_side: int = 224, budget_mb: float = 2048) -> None:
        self.samples = list(samples)
        self.min_side = min_side
        self.budget = int(budget_mb * 2**20)
        self.used = 0
        self._mem: dict[int, np.ndarray] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.samples)

    def __getstate__(self):  # spawned DataLoader workers: no lock, no cached arrays
        d = dict(self.__dict__)
        d["_lock"] = None
        d["_mem"] = {}
        d["used"] = 0
        return d

    def __setstate__(self, d) -> None:
        self.__dict__.update(d)
        self._lock = threading.Lock()

    @property
    def cached_mb(self) -> float:
        return self.used / 2**20

    def _keep(self, i: int, arr: np.ndarray) -> None:
        with self._lock:
            if i not in self._mem and self.used + arr.nbytes <= self.budget:
                self._mem[i] = arr
                self.used += arr.nbytes

    def get(self, i: int) -> np.ndarray:
        """The ``(H, W, 3)`` uint8 image ``i``."""
        arr = self._mem.get(i)
        if arr is not None:
            return arr
        arr = load_sample_rgb(self.samples[i], self.min_side)
        return arr

    def check(
        self, threads: int = 2, progress: Callable[[int, int], None] | None = None
    ) -> list[tuple[int, str]]:
        """Decode every image once (keeping what fits); return ``(index, reason)`` of the bad ones."""
        bad: list[tuple[int, str]] = []
        n = len(self.samples)

        def one(i: int):
            try:
                arr = load_sample_rgb(self.samples[i], self.min_side)
            except (ImageError, OSError, ValueError, MemoryError) as exc:
                return i, str(exc)
            self._keep(i, arr)
            return i, None

        done = 0
        step = max(1, n // 50)
        with ThreadPoolExecutor(max(1, threads)) as pool:
            for i, err in pool.map(one, range(n)):
                if err is not None:
                    bad.append((i, err))
                done += 1
                if progress and (done % step == 0 or done == n):
                    progress(done, n)
        return bad


class CropDataset(RandomCropDataset):
    """:class:`~napari_pmt_iqa.data.crops.RandomCropDataset` over images held in an :class:`ImageStore`.

    Item ``i`` is ``(crops, target)``: ``crops`` a uint8 tensor ``(K, 3, S, S)`` of
    ``crops_per_image`` random crops (flipped left-right half the time) of image
    ``store[indices[i]]``.
    """

    def __init__(
        self,
        store: ImageStore,
        indices: Sequence[int],
        targets: Sequence[float],
        crop_size: int = 224,
        crops_per_image: int = 1,
        flip: bool = True,
        seed: int = 0,
    ) -> None:
        if len(indices) != len(targets):
            raise ValueError("images and targets differ in length")
        self.store = store
        self.indices = list(indices)
        self._init_crops(targets, crop_size, crops_per_image, flip, seed)

    def image(self, i: int) -> np.ndarray:
        return self.store.get(self.indices[i])


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """The global batches of one epoch: a seeded permutation of ``range(n)``, last partial dropped."""
    perm = np.random.default_rng((seed, 7919, epoch)).permutation(n)
    nb = n // batch_size
    return [perm[b * batch_size : (b + 1) * batch_size].tolist() for b in range(nb)]


def plan_batches(n: int, batch_size: int) -> list[list[int]]:
    """Consecutive global batches of positions ``0..n-1`` (of an already shuffled epoch plan)."""
    return [list(range(b * batch_size, (b + 1) * batch_size)) for b in range(n // batch_size)]


def rank_share(batch: list[int], rank: int, world: int) -> list[int]:
    """The contiguous part of a global batch that process ``rank`` of ``world`` trains on."""
    per = len(batch) // world
    return batch[rank * per : (rank + 1) * per]


class Timer:
    """Accumulates wall time of named phases (data wait, compute) for the events and benchmarks."""

    def __init__(self) -> None:
        self.t = time.perf_counter()

    def lap(self) -> float:
        now = time.perf_counter()
        dt, self.t = now - self.t, now
        return dt
