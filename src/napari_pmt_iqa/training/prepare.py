"""Training data preparation: :func:`resolve_dataset` (``TrainConfig.data`` to an ``IQADataset`` with
its score scale and ``limit``) and :func:`split_train_val` (the training pool and validation part).
"""

from __future__ import annotations

import os
import random
from dataclasses import replace
from pathlib import Path

from .config import TrainConfig, _to_scale
from .errors import TrainingError


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
