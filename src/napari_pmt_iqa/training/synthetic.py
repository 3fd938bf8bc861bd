"""The distortion-aware objective: ranking pairs of synthetically degraded photos.

Human scores (LIVE-C, BIQ2021, a user's ratings) are few and expensive; degradations we make
ourselves are an unlimited, perfectly labelled task. A *pair* is two versions of the same crop of a
pristine photo, degraded by the same kind at two levels ``a < b`` of
:mod:`napari_pmt_iqa.data.degradations` (sometimes over a shared second degradation): the less
degraded version must score higher, by at least ``margin * (b - a)`` points of the internal 0-100
scale (:func:`ranking_loss`). A share of the pairs (``cross``) are *cross-region* pairs: the clean
version is one crop of the photo and the clearly degraded one (level 3-5) another crop of the same
photo, so the score learns to rank a defect above the content of the place, which is what a
quality map asks of it (one degraded quarter of an image must be its worst quarter). The trainer mixes these pairs into every batch of human-scored crops
(``TrainConfig.synthetic``), weighted by its own schedule: high first (the easy task), lower as the
human scores take over, in the spirit of PMT.

* :func:`pristine_samples` lists the photos: folders of pristine photos, plus the best-rated share
  of the human-scored training images;
* :class:`PairDataset` makes the pairs (each a function of ``(seed, epoch, index)`` only, so runs
  are reproducible and the same with any number of DataLoader workers or processes);
* :class:`SyntheticValidation` is a fixed set of graded versions of held-out photos; its
  ``accuracy`` (share of level pairs ordered right) is a validation figure of every epoch.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..data import degradations as D

#: Kinds that are not stacked under another one (tone curves would mask each other's levels).
_TONE = {"contrast", "underexpose", "overexpose", "desaturate", "oversaturate", "quantize"}


def check_kinds(kinds: Sequence[str] | None) -> tuple[str, ...]:
    """The training bank's kinds (default :data:`~napari_pmt_iqa.data.degradations.TRAIN_KINDS`).

    Raises
    ------
    ValueError
        An unknown kind, or an empty list.
    """
    if kinds is None:
        return D.TRAIN_KINDS
    kinds = tuple(str(k) for k in kinds)
    bad = [k for k in kinds if k not in D.LEVELS]
    if bad:
        raise ValueError(
            f"Unknown degradation kind(s) {', '.join(bad)}; choose from {', '.join(D.KINDS)}."
        )
    if not kinds:
        raise ValueError("The list of degradation kinds is empty.")
    return kinds


def check_kind_margin(kind_margin, kinds: Sequence[str]) -> dict[str, float]:
    """``{kind: margin per level}`` of kinds of the bank (``None``: ``{}``).

    Raises
    ------
    ValueError
        A kind outside the bank, or a margin that is not a positive number.
    """
    if not kind_margin:
        return {}
    out = {}
    for kind, m in dict(kind_margin).items():
        if kind not in kinds:
            raise ValueError(
                f"The margin of {kind!r} is given, but {kind!r} is not a kind of the bank "
                f"({', '.join(kinds)})."
            )
        try:
            m = float(m)
        except (TypeError, ValueError):
            m = float("nan")
        if not np.isfinite(m) or m <= 0:
            raise ValueError(
                f"The margin of {kind!r} must be a positive number, not {kind_margin[kind]!r}."
            )
        out[str(kind)] = m
    return out


def pristine_samples(sources) -> list:
    """Image files (as :class:`~napari_pmt_iqa.data.datasets.Sample`) of pristine-photo sources.

    Parameters
    ----------
    sources
        A folder (every image file in it and its sub-folders), an image file, a text file listing
        one image path per line (``.txt``), or a list of these.
    """
    from ..data.datasets import IMAGE_SUFFIXES, Sample

    if sources is None:
        return []
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    out: list = []
    for src in sources:
        p = Path(src).expanduser()
        if p.is_dir():
            files = sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
        elif p.suffix.lower() == ".txt" and p.is_file():
            lines = [ln.strip() for ln in p.read_text().splitlines()]
            files = [
                Path(ln).expanduser() if os.path.isabs(ln) else p.parent / ln
                for ln in lines
                if ln and not ln.startswith("#")
            ]
        elif p.is_file():
            files = [p]
        else:
            raise ValueError(f"The pristine-photo source {p} does not exist.")
        out += [Sample(f, 100.0, None, f"pristine:{f}") for f in files]
    return out


def ranking_loss(better, worse, steps, margin: float):
    """Margin ranking loss of pairs: ``mean(relu(margin * steps - (better - worse)))``.

    Parameters
    ----------
    better, worse
        Scores ``(N,)`` of the less and of the more degraded version (internal 0-100 scale).
    steps
        ``(N,)`` level differences ``b - a`` (at least 1).
    margin
        Points of the internal scale per level of difference.

    Returns
    -------
    loss, accuracy
        The loss (a scalar tensor with gradients) and the share of pairs ordered right (a float).
    """
    import torch

    better, worse = better.float(), worse.float()
    steps = steps.to(device=better.device, dtype=torch.float32)
    loss = torch.relu(margin * steps - (better - worse)).mean()
    acc = float((better > worse).float().mean().item()) if better.numel() else float("nan")
    return loss, acc


@dataclass(frozen=True)
class PairSpec:
    """How one pair is made (a function of the seed, the epoch and the pair's index)."""

    photo: int
    y: int
    x: int
    kind: str
    low: int
    high: int
    extra: tuple[tuple[str, int], ...]
    extra_first: bool
    flip: bool
    noise_seed: int
    y2: int | None = None  # a cross-region pair: where the worse version is cut
    x2: int | None = None
    zoom: float = 1.0  # the photo enlarged by this factor before the crops are cut


class PairDataset:
    """Pairs of graded versions of random crops of pristine photos (a map-style torch data set).

    Item ``i`` is ``(pair, steps)``: ``pair`` a uint8 tensor ``(2, 3, S, S)``, the less degraded
    version first; ``steps`` the level difference (float). Convert like the trainer's crops
    (``x.float() / 255`` and the model's normalisation).

    Parameters
    ----------
    store
        An :class:`~napari_pmt_iqa.training.data.ImageStore` of the photos (sides at least
        ``crop + 2 * CONTEXT``).
    indices
        The photos of the store that this data set draws from.
    length
        Pairs per epoch.
    kinds
        The degradation kinds of the bank.
    stack
        Probability that a second degradation (level 1-3, the same on both versions) lies under
        the graded one.
    cross
        Probability that a pair is a cross-region pair: a clean crop against another crop of the
        same photo at level 3-5 (its ``steps`` count half the level difference, as the two places
        differ in content too).
    zoom
        Largest enlargement of the photo: each pair is cut from the photo enlarged (bicubic) by a
        factor drawn uniformly between 1 and ``zoom``, so that defects are also learned on the
        smoother content of high-resolution photos (a JPEG block or a noise grain is the same
        size in pixels on any photo, the content is not). 1: off.
    kind_margin
        Margin per level of given kinds, instead of ``margin`` (``{kind: points}``): applied by
        scaling the pair's ``steps`` by ``kind_margin[kind] / margin``.
    margin
        The margin per level of the other kinds (needed with ``kind_margin`` only).
    """

    def __init__(
        self,
        store,
        indices: Sequence[int],
        length: int,
        kinds: Sequence[str] | None = None,
        crop_size: int = 224,
        stack: float = 0.3,
        flip: bool = True,
        seed: int = 0,
        cross: float = 0.0,
        zoom: float = 1.0,
        kind_margin: dict[str, float] | None = None,
        margin: float = 1.0,
    ) -> None:
        if not indices:
            raise ValueError("A pair data set needs at least one photo.")
        self.store = store
        self.indices = list(indices)
        self.length = int(length)
        self.kinds = check_kinds(kinds)
        self.crop_size = int(crop_size)
        self.stack = float(stack)
        self.flip = flip
        self.seed = int(seed)
        self.cross = float(cross)
        self.zoom = float(zoom)
        if self.zoom < 1:
            raise ValueError(f"zoom must be at least 1, not {zoom}.")
        self.kind_margin = check_kind_margin(kind_margin, self.kinds)
        self.margin = float(margin)
        if self.kind_margin and not self.margin > 0:
            raise ValueError(f"A margin per kind needs a positive common margin, not {margin}.")
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.length

    def spec(self, i: int, shape: tuple[int, int]) -> PairSpec:
        """The recipe of pair ``i`` (``shape`` is its photo's ``(H, W)``)."""
        rng = np.random.default_rng((self.seed, 31337, self.epoch, int(i)))
        photo = int(rng.integers(len(self.indices)))
        region = self.crop_size + 2 * D.CONTEXT
        h, w = shape
        y = int(rng.integers(0, max(1, h - region + 1)))
        x = int(rng.integers(0, max(1, w - region + 1)))
        kind = self.kinds[int(rng.integers(len(self.kinds)))]
        low = int(rng.integers(0, 5))
        high = int(rng.integers(low + 1, 6))
        extra: tuple[tuple[str, int], ...] = ()
        others = [k for k in self.kinds if k != kind and not (k in _TONE and kind in _TONE)]
        if others and rng.random() < self.stack:
            extra = ((others[int(rng.integers(len(others)))], int(rng.integers(1, 4))),)
        y2 = x2 = None
        cross = np.random.default_rng((self.seed, 4243, self.epoch, int(i)))  # its own stream:
        if self.cross > 0 and cross.random() < self.cross:  # the other pairs stay as without it
            low, high, extra = 0, int(cross.integers(3, 6)), ()
            y2 = int(cross.integers(0, max(1, h - region + 1)))
            x2 = int(cross.integers(0, max(1, w - region + 1)))
        zoom = 1.0
        if self.zoom > 1:  # its own stream too
            zoom = float(
                np.random.default_rng((self.seed, 6151, self.epoch, int(i))).uniform(1, self.zoom)
            )
        return PairSpec(
            photo,
            y,
            x,
            kind,
            low,
            high,
            extra,
            bool(rng.random() < 0.5),
            bool(self.flip and rng.random() < 0.5),
            int(rng.integers(2**31)),
            y2,
            x2,
            zoom,
        )

    def photo_index(self, i: int) -> int:
        rng = np.random.default_rng((self.seed, 31337, self.epoch, int(i)))
        return self.indices[int(rng.integers(len(self.indices)))]

    def _region(self, img: np.ndarray, y: int, x: int, zoom: float = 1.0) -> np.ndarray:
        region = self.crop_size + 2 * D.CONTEXT
        if zoom > 1:  # cut a smaller region and enlarge it to the full one
            side = max(8, int(np.ceil(region / zoom)))
            r = np.ascontiguousarray(img[y : y + side, x : x + side])
            from PIL import Image

            r = np.asarray(Image.fromarray(r).resize((region, region), Image.BICUBIC))
            return np.ascontiguousarray(r)
        r = np.ascontiguousarray(img[y : y + region, x : x + region])
        if r.shape[0] < region or r.shape[1] < region:  # a photo smaller than the region
            r = np.pad(
                r, ((0, region - r.shape[0]), (0, region - r.shape[1]), (0, 0)), mode="reflect"
            )
        return r

    def make(self, img: np.ndarray, s: PairSpec) -> np.ndarray:
        """The two versions ``(2, S, S, 3)`` of pair ``s`` cut from photo ``img``."""
        first = self._region(img, s.y, s.x, s.zoom)
        second = first if s.y2 is None else self._region(img, s.y2, s.x2, s.zoom)
        out = []
        for r, level in ((first, s.low), (second, s.high)):
            steps = [(s.kind, level)]
            if s.extra:
                steps = list(s.extra) + steps if s.extra_first else steps + list(s.extra)
            v = r
            for k, (kind, lv) in enumerate(steps):
                v = D.distort(v, kind, lv, seed=s.noise_seed + 7 * k)
            c = D.CONTEXT
            v = v[c : c + self.crop_size, c : c + self.crop_size]
            out.append(v[:, ::-1] if s.flip else v)
        return np.stack(out)

    def __getitem__(self, i: int):
        import torch

        i = int(i)
        img = self.store.get(self.photo_index(i))
        s = self.spec(i, img.shape[:2])
        pair = self.make(img, s)
        x = torch.from_numpy(np.ascontiguousarray(pair.transpose(0, 3, 1, 2)))
        steps = float(s.high - s.low) * (0.5 if s.y2 is not None else 1.0)
        if s.kind in self.kind_margin:  # the loss multiplies steps by the common margin
            steps *= self.kind_margin[s.kind] / self.margin
        return x, torch.tensor(steps)


class SyntheticValidation:
    """Graded versions (levels 0-5) of centre crops of held-out photos, one set per kind.

    ``accuracy(model)`` is the share of the 15 level pairs of every (photo, kind) that the model
    orders right (the less degraded version scoring higher), overall and per kind.
    """

    def __init__(
        self,
        store,
        indices: Sequence[int],
        kinds: Sequence[str] | None = None,
        crop_size: int = 224,
        seed: int = 0,
    ) -> None:
        self.kinds = check_kinds(kinds)
        self.crop_size = crop_size
        self.items: list[tuple[str, np.ndarray]] = []  # (kind, (6, S, S, 3))
        region = crop_size + 2 * D.CONTEXT
        c = D.CONTEXT
        for n, j in enumerate(indices):
            img = store.get(j)
            h, w = img.shape[:2]
            y0, x0 = max(0, (h - region) // 2), max(0, (w - region) // 2)
            r = np.ascontiguousarray(img[y0 : y0 + region, x0 : x0 + region])
            if r.shape[0] < region or r.shape[1] < region:
                continue
            for kind in self.kinds:
                versions = [
                    D.distort(r, kind, lv, seed=seed + n)[c : c + crop_size, c : c + crop_size]
                    for lv in range(6)
                ]
                self.items.append((kind, np.stack(versions)))

    def __len__(self) -> int:
        return len(self.items)

    def accuracy(self, model, device=None, precision: str = "fp32", batch_size: int = 48) -> dict:
        """``{"synthetic_acc": overall, "synthetic_acc_<kind>": ...}`` (NaN when empty)."""
        import torch

        from ..devices import autocast

        if not self.items:
            return {"synthetic_acc": float("nan")}
        dev = device or next(model.parameters()).device
        was = model.training
        model.eval()
        crops = np.concatenate([v for _, v in self.items])  # (6 * n, S, S, 3)
        scores = np.empty(len(crops), np.float64)
        try:
            with torch.inference_mode(), autocast(torch.device(dev), precision):
                for k in range(0, len(crops), batch_size):
                    x = torch.from_numpy(np.ascontiguousarray(crops[k : k + batch_size]))
                    x = x.to(dev).permute(0, 3, 1, 2).float().div_(255.0)
                    scores[k : k + batch_size] = model(model.normalize(x)).score.float().cpu()
        finally:
            model.train(was)
        scores = scores.reshape(len(self.items), 6)
        iu = np.triu_indices(6, 1)
        right = scores[:, iu[0]] > scores[:, iu[1]]  # level a < b: a must score higher
        out = {"synthetic_acc": float(right.mean())}
        kinds = np.array([k for k, _ in self.items])
        for kind in self.kinds:
            out[f"synthetic_acc_{kind}"] = float(right[kinds == kind].mean())
        return out


class SyntheticTask:
    """The synthetic ranking task of one training run (``TrainConfig.synthetic``).

    Builds the store of pristine photos (the given sources plus the best-rated share of the
    human-scored training images), holds out ``synthetic_val_fraction`` of the given photos for
    :class:`SyntheticValidation`, and serves each epoch's pairs through :meth:`loader`.
    """

    def __init__(self, config, data, crop_size: int, emit=None) -> None:
        from . import checks
        from .data import ImageStore
        from .errors import TrainingError
        from .events import DataIssue, Preparing

        c = config
        emit = emit or (lambda ev: None)
        self.cfg = c
        self.kinds = check_kinds(c.synthetic_kinds)
        checks.whole_number("synthetic_pairs", c.synthetic_pairs)
        checks.fraction("synthetic_cross", c.synthetic_cross, closed=True)
        checks.at_least("synthetic_zoom", c.synthetic_zoom, 1)
        try:
            self.kind_margin = check_kind_margin(c.synthetic_kind_margin, self.kinds)
        except ValueError as exc:
            raise TrainingError(str(exc), "Check --synthetic-kind-margin KIND=POINTS.") from exc
        if self.kind_margin:  # the per-kind margins are applied relative to the common one
            checks.positive("synthetic_margin", c.synthetic_margin)
        checks.fraction("synthetic_top", c.synthetic_top)
        checks.one_of("synthetic_schedule", c.synthetic_schedule, ("progressive", "constant"))
        try:
            given = pristine_samples(c.synthetic)
        except ValueError as exc:
            raise TrainingError(
                str(exc), "Check the pristine-photo folders (--synthetic)."
            ) from exc
        top = []
        if c.synthetic_top > 0:
            for src in data.sources:
                idx = sorted(src.train_idx, key=lambda i: -float(data.targets[i]))
                top += [data.samples[i] for i in idx[: int(round(c.synthetic_top * len(idx)))]]
        if not given and not top:
            raise TrainingError(
                "The synthetic objective has no photos: the pristine sources hold no image files "
                "and synthetic_top is 0."
            )
        rng = np.random.default_rng((c.seed, 5003))
        order = rng.permutation(len(given))
        n_val = int(round(c.synthetic_val_fraction * len(given))) if len(given) >= 4 else 0
        val_set = {int(k) for k in order[:n_val]}
        train_given = [s for k, s in enumerate(given) if k not in val_set]
        val_given = [s for k, s in enumerate(given) if k in val_set]
        samples = train_given + top + val_given
        self.store = ImageStore(samples, min_side=crop_size + 2 * D.CONTEXT, budget_mb=c.cache_mb)
        bad = self.store.check(
            threads=max(2, c.num_workers),
            progress=lambda a, b: emit(Preparing(a, b, "decoding pristine photos")),
        )
        bad_idx = {i for i, _ in bad}
        if bad:
            msg = f"{len(bad)} pristine photo(s) cannot be read and are left out: " + "; ".join(
                r for _, r in bad[:5]
            )
            emit(DataIssue(msg, tuple(r for _, r in bad)))
        n_tr = len(train_given) + len(top)
        self.train_idx = [i for i in range(n_tr) if i not in bad_idx]
        self.val_idx = [i for i in range(n_tr, len(samples)) if i not in bad_idx]
        if not self.train_idx:
            raise TrainingError(
                "None of the pristine photos for the synthetic objective is usable."
            )
        self.n_given, self.n_top = len(train_given), len(top)
        self.crop_size = crop_size
        self.validation = SyntheticValidation(
            self.store, self.val_idx, self.kinds, crop_size, seed=c.seed
        )

    def weight(self, epoch: int, epochs: int) -> float:
        """The ranking loss's weight at ``epoch`` (see ``TrainConfig.synthetic_schedule``)."""
        c = self.cfg
        w = float(c.synthetic_weight)
        if c.synthetic_schedule == "constant" or epochs <= 1:
            return w
        t = epoch / (epochs - 1)
        return w * (1.0 - (1.0 - float(c.synthetic_floor)) * t)

    def dataset(self, n_batches: int, epoch: int) -> PairDataset:
        c = self.cfg
        ds = PairDataset(
            self.store,
            self.train_idx,
            n_batches * int(c.synthetic_pairs),
            self.kinds,
            self.crop_size,
            c.synthetic_stack,
            c.flip,
            c.seed,
            c.synthetic_cross,
            c.synthetic_zoom,
            self.kind_margin,
            c.synthetic_margin,
        )
        ds.set_epoch(epoch)
        return ds

    def batches(self, n_batches: int, rank: int, world: int) -> list[list[int]]:
        """Pair indices of each step for process ``rank`` (its contiguous share)."""
        p = int(self.cfg.synthetic_pairs)
        per = max(1, p // world)
        return [[b * p + rank * per + j for j in range(per)] for b in range(n_batches)]

    def describe(self) -> dict:
        """For the checkpoint's metadata."""
        c = self.cfg
        return {
            "kinds": list(self.kinds),
            "held_out_kinds": [k for k in D.KINDS if k not in self.kinds],
            "photos": self.n_given,
            "best_rated_share": float(c.synthetic_top),
            "best_rated_photos": self.n_top,
            "validation_photos": len(self.val_idx),
            "pairs_per_step": int(c.synthetic_pairs),
            "margin_per_level": float(c.synthetic_margin),
            "margin_per_level_of_kind": dict(self.kind_margin),
            "zoom": float(c.synthetic_zoom),
            "stack": float(c.synthetic_stack),
            "cross_region": float(c.synthetic_cross),
            "weight": float(c.synthetic_weight),
            "schedule": c.synthetic_schedule,
            "floor": float(c.synthetic_floor),
        }
