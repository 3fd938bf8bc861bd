"""Training data preparation: :func:`resolve_dataset` (``TrainConfig.data`` to an ``IQADataset`` with
its score scale and ``limit``), :func:`split_train_val` (the training pool and validation part) and
:func:`prepare_training_data` (a run's data sets decoded, checked and planned epoch by epoch:
:class:`TrainingData`).
"""

from __future__ import annotations

import math
import os
import random
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from .config import TrainConfig, _to_scale
from .errors import TrainingError


def report_unusable(skipped: list[str], n_all: int, max_bad_fraction: float, emit) -> None:
    """Refuse a run with more than ``max_bad_fraction`` of its ``n_all`` images unusable; otherwise
    warn about the ``skipped`` ones (their reasons) and emit a :class:`DataIssue`."""
    from .events import DataIssue

    if not skipped:
        return
    if len(skipped) > max_bad_fraction * max(n_all, 1):
        raise TrainingError(
            f"{len(skipped)} of {n_all} images cannot be used, e.g. "
            + "; ".join(skipped[:3])
            + ".",
            "Fix the paths or files (or remove them from the list) and start again.",
        )
    msg = f"{len(skipped)} image(s) cannot be used and are left out: " + "; ".join(skipped[:10])
    warnings.warn(msg, RuntimeWarning, stacklevel=4)  # as from the caller of this helper before
    emit(DataIssue(msg, tuple(skipped)))


def resolve_dataset(config: TrainConfig, init_scale=None):
    """Load ``config.data`` into an :class:`IQADataset` with the right score scale."""
    from ..data.datasets import IQADataset, dataset_from_pairs, load_dataset

    data = config.data
    scale = _to_scale(config.score_scale)
    if data is None:
        raise TrainingError("No training data was given (TrainConfig.data is None).")
    if isinstance(data, IQADataset):
        ds = data
    elif isinstance(data, (str, os.PathLike)):
        path = Path(data).expanduser()
        if not path.exists():
            raise TrainingError(
                f"The data set {path} does not exist.",
                "Check the data path (--data, or the data set field of the fine-tune widget).",
            )
        ds = load_dataset(path, config.layout)
    else:
        try:
            pairs = list(data)
        except TypeError:
            raise TrainingError(
                f"TrainConfig.data must be a path, an IQADataset or a list of (image, mos) pairs; "
                f"got {type(data).__name__}."
            ) from None
        if not pairs:
            raise TrainingError("The list of rated images is empty.")
        use = scale
        if use is None and init_scale is not None:
            mos = []
            for p in pairs:
                try:
                    mos.append(float(p[1]))
                except (TypeError, ValueError, IndexError):
                    mos = []
                    break
            if mos and all(init_scale.low <= m <= init_scale.high for m in mos):
                use = init_scale
        ds = dataset_from_pairs(pairs, scale=use)
    if scale is not None:
        ds = replace(ds, scale=scale)
    if config.limit is not None:
        if config.limit < 1:
            raise TrainingError(f"limit must be at least 1; got {config.limit}.")
        if config.limit < len(ds):
            rng = random.Random(config.seed + 4242)
            keep = sorted(rng.sample(range(len(ds)), config.limit))
            ds = replace(
                ds, samples=[ds.samples[i] for i in keep], name=f"{ds.name}[limit {config.limit}]"
            )
    return ds


def split_train_val(ds, val_fraction: float, seed: int):
    """The training pool (split column train/None), and the validation part (``val`` column or carved)."""
    from ..data.datasets import random_split

    has_split = any(s.split for s in ds.samples)
    if has_split:
        pool = ds.subset([s for s in ds.samples if s.split in (None, "", "train")], "[train]")
        val = ds.subset(
            [s for s in ds.samples if s.split in ("val", "valid", "validation")], "[val]"
        )
        if len(val) > 0:
            return pool, val
    else:
        pool = ds
    if val_fraction <= 0 or len(pool) < 4:
        return pool, ds.subset([], "[val]")
    train, val = random_split(pool, val_fraction, seed=seed + 1000)
    return train, val


# --------------------------------------------------------------------------- a run's data
@dataclass
class Source:
    """One human-scored data set of a run: its store indices for training and validation."""

    ds: object  # IQADataset
    train_idx: list[int]
    val_idx: list[int]
    repeat: float = 1.0
    name: str = ""  # unique within the run (the data set's name, numbered if two share it)


@dataclass
class TrainingData:
    """Everything the loop needs of the human-scored data (built by :func:`prepare_training_data`).

    ``store`` holds the images of every data set (training parts first, then validation parts, data
    set by data set); ``targets[i]`` is the internal 0-100 target of store image ``i``.
    """

    store: object  # ImageStore
    samples: list
    sources: list[Source]
    targets: np.ndarray
    scale: object  # ScoreScale: the units of the trained model
    skipped: list[str] = field(default_factory=list)

    @property
    def train_idx(self) -> list[int]:
        return [i for s in self.sources for i in s.train_idx]

    @property
    def val_idx(self) -> list[int]:
        return [i for s in self.sources for i in s.val_idx]

    def epoch_plan(self, seed: int, epoch: int) -> list[int]:
        """The store indices of one epoch, in training order (a function of the seed and epoch).

        Each data set contributes its training images ``floor(repeat)`` times plus a seeded random
        share ``repeat - floor(repeat)`` of them (drawn anew every epoch); the whole is permuted.
        """
        items: list[int] = []
        for g, src in enumerate(self.sources):
            whole = int(math.floor(src.repeat))
            items += src.train_idx * whole
            frac = src.repeat - whole
            n = int(round(frac * len(src.train_idx)))
            if n > 0:
                rng = np.random.default_rng((seed, 4099, epoch, g))
                pick = rng.choice(len(src.train_idx), size=n, replace=False)
                items += [src.train_idx[k] for k in sorted(pick)]
        perm = np.random.default_rng((seed, 7919, epoch)).permutation(len(items))
        return [items[k] for k in perm]

    def epoch_size(self) -> int:
        return sum(
            int(math.floor(s.repeat)) * len(s.train_idx)
            + int(round((s.repeat - math.floor(s.repeat)) * len(s.train_idx)))
            for s in self.sources
        )


def resolve_sources(config: TrainConfig, init_scale=None) -> list:
    """``config.data`` as a list of :class:`IQADataset` (one, or several data sets)."""
    from .config import is_source_list

    if not is_source_list(config.data):
        return [resolve_dataset(config, init_scale)]
    if config.score_scale is not None:
        raise TrainingError(
            "score_scale gives the units of one data set; with several, each keeps its own.",
            "Give each data set with its scale (an IQADataset), and output_scale for the units "
            "of the trained model.",
        )
    return [resolve_dataset(replace(config, data=d)) for d in config.data]


def prepare_training_data(config: TrainConfig, init_scale=None, emit=None) -> TrainingData:
    """Load, split, decode and check the human-scored data of a run.

    Raises
    ------
    TrainingError
        No data, too many unreadable images, nothing to train on, fewer images than one batch,
        equal scores, a bad ``data_repeat``.
    """
    from ..data.datasets import IQADataset
    from .data import ImageStore
    from .events import Preparing

    c = config
    emit = emit or (lambda ev: None)
    datasets: list[IQADataset] = resolve_sources(c, init_scale)
    repeats = list(c.data_repeat) if c.data_repeat is not None else [1.0] * len(datasets)
    if len(repeats) != len(datasets) or any(not (float(r) > 0) for r in repeats):
        raise TrainingError(
            f"data_repeat needs one positive number per data set ({len(datasets)}); got "
            f"{c.data_repeat!r}."
        )
    parts = [split_train_val(ds, c.val_fraction, c.seed) for ds in datasets]
    samples: list = []
    ranges = []
    for tr, va in parts:
        a = len(samples)
        samples += list(tr.samples)
        b = len(samples)
        samples += list(va.samples)
        ranges.append((a, b, len(samples)))
    store = ImageStore(samples, min_side=224, budget_mb=c.cache_mb)
    bad = store.check(threads=max(2, c.num_workers), progress=lambda a, b: emit(Preparing(a, b)))
    skipped = [r for ds in datasets for r in (getattr(ds, "skipped", []) or [])]
    n_all = len(samples) + len(skipped)
    bad_idx = {i for i, _ in bad}
    skipped += [reason for _, reason in bad]
    report_unusable(skipped, n_all, c.max_bad_fraction, emit)
    sources = []
    for k, (ds, (a, b, e), r) in enumerate(zip(datasets, ranges, repeats)):
        tr = [i for i in range(a, b) if i not in bad_idx]
        va = [i for i in range(b, e) if i not in bad_idx]
        name = str(ds.name)
        if name in {src.name for src in sources}:
            name = f"{name} ({k + 1})"
        sources.append(Source(ds, tr, va, float(r), name))
    out_scale = _to_scale(c.output_scale) or datasets[0].scale
    targets = np.full(len(samples), np.nan, dtype=np.float32)
    for src, (a, _, e) in zip(sources, ranges):
        for i in range(a, e):
            targets[i] = float(src.ds.scale.to_internal(samples[i].mos))
    data = TrainingData(store, samples, sources, targets, out_scale, skipped)
    _check_data(c, data, datasets, emit)
    return data


def _check_data(c: TrainConfig, data: TrainingData, datasets: list, emit) -> None:
    from .events import DataIssue

    train_idx, val_idx, samples = data.train_idx, data.val_idx, data.samples
    if not train_idx:
        n_rows = sum(len(ds.samples) for ds in datasets)
        n_test = sum(1 for ds in datasets for s in ds.samples if s.split == "test")
        why = (
            f"all {n_test} rows of the data are marked split=test (test rows are never trained on)"
            if n_test == n_rows
            else f"all {len(samples)} usable images went to validation or could not be read"
        )
        raise TrainingError(
            f"There is nothing to train on: {why}.",
            "Mark the rows to train on as split=train (or leave the split column empty), or "
            "lower val_fraction.",
        )
    if data.epoch_size() < c.batch_size:
        raise TrainingError(
            f"The training part has {len(train_idx)} usable images, fewer than one batch "
            f"(batch_size={c.batch_size}).",
            f"Lower batch_size to at most {max(1, len(train_idx))}, lower val_fraction, or add "
            "images.",
        )
    for src in data.sources:
        mos_train = [samples[i].mos for i in src.train_idx]
        if src.train_idx and len(set(mos_train)) < 2:
            raise TrainingError(
                f"All {len(mos_train)} training scores of {src.name} are equal ({mos_train[0]}): "
                "the score range has zero width and nothing can be learnt.",
                "Rate images with different scores.",
            )
        scale = src.ds.scale
        idx = src.train_idx + src.val_idx
        if not idx:
            continue
        lo, hi = min(samples[i].mos for i in idx), max(samples[i].mos for i in idx)
        tol = 1e-9 * abs(scale.high - scale.low)
        if lo < scale.low - tol or hi > scale.high + tol:
            msg = (
                f"Scores range over {lo:g}..{hi:g}, beyond the score scale "
                f"{scale.low:g}..{scale.high:g} ({scale.name}); out-of-range scores fall into the "
                "end classes."
            )
            warnings.warn(msg, RuntimeWarning, stacklevel=4)
            emit(DataIssue(msg))
    if len(val_idx) < 3:
        msg = (
            f"The validation part has {len(val_idx)} image(s), too few to measure anything: no "
            "epoch can be selected, the last one is kept and its validation SRCC is NaN. Give at "
            "least a few more rated images (or a split column with 'val' rows)."
        )
        warnings.warn(msg, RuntimeWarning, stacklevel=4)
        emit(DataIssue(msg))
