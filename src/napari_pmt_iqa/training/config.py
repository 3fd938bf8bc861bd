"""Settings and outcome of a training run: :class:`TrainConfig`, :class:`TrainResult`,
:func:`config_from_dict` and the coercion of ``score_scale`` values.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from typing import Any

from .errors import TrainingError


@dataclass
class TrainConfig:
    """Everything a training run needs.

    The defaults are the paper's recipe made to fit a CPU: its progressive multi-task schedule,
    Adam with weight decay 5e-4 and the step decay of the authors' code, but an ImageNet
    EfficientNet-Lite0 (weights offline) instead of ResNet-50, 10 epochs instead of 30, batches of
    8 images x 1 crop instead of 12 x 4, and a heads learning rate 10 times the backbone's.
    :meth:`paper` gives the paper's own settings.

    Parameters
    ----------
    data
        A data set folder or CSV (see :func:`~napari_pmt_iqa.data.datasets.load_dataset`), an
        :class:`~napari_pmt_iqa.data.datasets.IQADataset`, a list of ``(array_or_path, mos)``
        pairs (images rated in napari), or a list of several data sets (paths or ``IQADataset``)
        trained on together, each on its own score scale. Samples whose ``split`` is ``"test"`` are
        never used; ``"val"`` samples, when present, are the validation part.
    data_repeat
        With several data sets: how many times each one's training images are used per epoch (a
        fraction draws a seeded random share anew every epoch); default 1 each.
    layout
        ``"auto"``, ``"csv"``, ``"livec"`` or ``"biq2021"`` (for a path).
    score_scale
        The units of the scores: a ``ScoreScale``, a dict, or ``(low, high[, higher_is_better])``.
        ``None``: the data set's own (LIVE-C 0-100, BIQ2021 0-1) or inferred; for in-memory pairs
        fine-tuning a checkpoint, the checkpoint's when all scores fall in it. One data set only.
    output_scale
        The units the trained model answers in (default: those of the (first) data set).
    out_dir
        Where checkpoints go (created). ``None``: a new folder under the cache folder.
    init
        ``None``: an ImageNet backbone (``backbone``, ``pretrained``); otherwise a registered model
        name or a checkpoint path to fine-tune.
    multiscale
        False for the ablation without the multi-scale taps (only the last stage reaches the heads).
    epochs, batch_size, crops_per_image
        Epochs; images per optimiser step (over all processes); random crops per image.
    lr, head_lr, weight_decay, lr_step, lr_schedule
        Adam learning rates of the backbone and of the heads (``None``: ``10 * lr``); decay.
        ``lr_schedule="step"`` (default): both rates are divided by 10 every ``lr_step`` epochs (0:
        never), the first time after epoch ``lr_step`` as in the authors' code (there the rate set
        at the end of epoch ``t`` is ``lr / 10 ** (t // 6)``); ``"cosine"``: from the full rates at
        the first epoch down to 5 % of them at the last, one value per epoch.
    freeze_backbone
        Train the heads only (backbone fixed, its batch-norm statistics too).
    sync_batchnorm
        With several GPU processes (torchrun) and a trainable backbone, compute the batch-norm
        statistics over the whole global batch (``SyncBatchNorm``), so that the run trains like one
        process with the same batch. PyTorch's SyncBatchNorm needs a GPU: CPU (gloo) runs keep
        per-process statistics whatever this says.
    progressive, loss_weights
        The PMT schedule, or constant ``(w_reg, w_cls)`` weights when ``progressive`` is False.
    precision
        ``"fp32"``, ``"bf16"`` (CPU or GPU) or ``"fp16"`` (GPU, with gradient scaling).
    device
        ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"mps"`` (under torchrun: the local GPU).
    val_fraction, seed
        Share of the training data kept for validation; seed of the split, crops, order and init.
    num_workers
        DataLoader worker processes (0: decode in the main process; images that fit in
        ``cache_mb`` are decoded only once anyway).
    resume
        A ``state.pt`` (or the folder holding it) to continue from.
    max_batches
        At most this many batches per epoch (quick runs, tests).
    limit
        Use a seeded random subset of this many images of the data (quick runs).
    synthetic
        Pristine photos for the distortion-aware objective (:mod:`~napari_pmt_iqa.training.synthetic`):
        a folder, an image file, a ``.txt`` list of image paths, or a list of these; ``None``: off.
        Every step then also trains ``synthetic_pairs`` ranking pairs: two versions of the same crop
        of a photo, degraded by one kind of the bank at two levels; the less degraded must score at
        least ``synthetic_margin`` points (internal 0-100 scale) per level higher.
    synthetic_top
        Also use this share of the best-rated training images of every data set as pristine photos.
    synthetic_kinds
        The degradation kinds of the bank (default: ``data.degradations.TRAIN_KINDS``, the bank
        without its held-out kinds).
    synthetic_pairs, synthetic_margin, synthetic_stack
        Pairs per step (over all processes); margin per level; probability of a second, shared
        degradation under the graded one.
    synthetic_cross
        Share of cross-region pairs: a clean crop of a photo against another crop of the same
        photo at level 3-5, so that a defect outranks the content of a place (quality maps).
    synthetic_kind_margin
        Margin per level of given kinds instead of ``synthetic_margin`` (``{"jpeg": 12.0}``): a
        kind whose levels the human scores barely penalise can be asked for a larger gap.
    synthetic_zoom
        Each pair is cut from its photo enlarged by a random factor between 1 and this (bicubic),
        so that defects are learned on the smoother content of large photos too. 1: off.
    synthetic_weight, synthetic_schedule, synthetic_floor
        Weight of the ranking loss next to the human-score losses: ``"progressive"`` (the easy,
        synthetic task first, in the spirit of PMT) goes linearly from ``synthetic_weight`` at the
        first epoch to ``synthetic_floor * synthetic_weight`` at the last; ``"constant"`` keeps
        ``synthetic_weight``.
    synthetic_val_fraction
        Share of the pristine photos held out: their graded versions give the validation figure
        ``synthetic_acc`` (pairs of levels ordered right), which joins the mean validation SRCC of
        the data sets in the selection of the best epoch.
    data_description, recipe_command
        Free text for the checkpoint's metadata: what the data sets are (e.g. which part of a
        public data set) and the command that ran the training.
    """

    data: Any = None
    data_repeat: tuple[float, ...] | None = None
    layout: str = "auto"
    score_scale: Any = None
    output_scale: Any = None
    out_dir: str | os.PathLike | None = None
    init: str | os.PathLike | None = None
    backbone: str = "efficientnet_lite0"
    pretrained: bool = True
    multiscale: bool = True
    epochs: int = 10
    batch_size: int = 8
    crops_per_image: int = 1
    lr: float = 1e-4
    head_lr: float | None = None
    weight_decay: float = 5e-4
    freeze_backbone: bool = False
    sync_batchnorm: bool = True
    progressive: bool = True
    loss_weights: tuple[float, float] = (1.0, 1.0)
    lr_step: int = 6
    lr_schedule: str = "step"
    precision: str = "fp32"
    device: str = "auto"
    val_fraction: float = 0.2
    seed: int = 0
    num_workers: int = 0
    resume: str | os.PathLike | None = None
    max_batches: int | None = None
    limit: int | None = None
    flip: bool = True
    cache_mb: float = 2048
    max_bad_fraction: float = 0.1
    eval_batch_size: int = 8
    description: str = ""
    synthetic: Any = None
    synthetic_top: float = 0.0
    synthetic_kinds: tuple[str, ...] | None = None
    synthetic_pairs: int = 8
    synthetic_margin: float = 3.0
    synthetic_stack: float = 0.3
    synthetic_cross: float = 0.0
    synthetic_kind_margin: dict[str, float] | None = None
    synthetic_zoom: float = 1.0
    synthetic_weight: float = 1.0
    synthetic_schedule: str = "progressive"
    synthetic_floor: float = 0.3
    synthetic_val_fraction: float = 0.1
    data_description: Any = None
    recipe_command: str = ""

    @classmethod
    def paper(cls, **overrides) -> TrainConfig:
        """The paper's own settings (authors' code): ResNet-50, 30 epochs, 12 images x 4 crops,
        Adam at about 1.1e-4 for every parameter, weight decay 5e-4, step decay every 6 epochs."""
        settings = dict(
            backbone="resnet50",
            epochs=30,
            batch_size=12,
            crops_per_image=4,
            lr=1.1e-4,
            head_lr=1.1e-4,
            weight_decay=5e-4,
            lr_step=6,
            lr_schedule="step",
            progressive=True,
        )
        settings.update(overrides)
        return cls(**settings)

    def recipe(self) -> dict:
        """The settings as plain JSON data (for checkpoint metadata)."""
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name in ("data", "synthetic"):
                v = _describe_data(v)
            out[f.name] = _json_setting(v)
        out["head_lr"] = self.head_lr if self.head_lr is not None else 10 * self.lr
        return out


@dataclass
class TrainResult:
    """What :func:`train` returns."""

    best_path: str | None
    last_path: str | None
    state_path: str | None
    best_val: dict = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)
    stopped: bool = False
    epochs_done: int = 0
    best_epoch: int | None = None
    out_dir: str | None = None
    n_train: int = 0
    n_val: int = 0
    skipped: list[str] = field(default_factory=list)


def _json_setting(v: Any) -> Any:
    """A setting as plain JSON data: a score scale as its dict, a path as text, a tuple as a list."""
    if v is not None and hasattr(v, "to_dict"):
        return v.to_dict()
    if isinstance(v, os.PathLike):
        return str(v)
    if isinstance(v, tuple):
        return list(v)
    return v


def _describe_data(data) -> Any:
    if data is None:
        return None
    if isinstance(data, (str, os.PathLike)):
        return str(data)
    if hasattr(data, "samples") and hasattr(data, "name"):
        return {"dataset": data.name, "root": str(data.root) if data.root else None, "n": len(data)}
    if is_source_list(data):
        return [_describe_data(d) for d in data]
    try:
        return {"in_memory_pairs": len(data)}
    except TypeError:
        return repr(data)[:80]


def is_source_list(data) -> bool:
    """Whether ``TrainConfig.data`` is a list of several data sets (not of rated images)."""
    if not isinstance(data, (list, tuple)) or not data:
        return False
    return all(
        isinstance(d, (str, os.PathLike)) or (hasattr(d, "samples") and hasattr(d, "scale"))
        for d in data
    )


def _to_scale(value):
    from ..score_scale import ScoreScale

    if value is None or isinstance(value, ScoreScale):
        return value
    try:
        if isinstance(value, dict):
            return ScoreScale.from_dict(value)
        vals = list(value)
        low, high = float(vals[0]), float(vals[1])
        hib = bool(vals[2]) if len(vals) > 2 else True
        name = str(vals[3]) if len(vals) > 3 else f"score ({low:g}-{high:g})"
        return ScoreScale(low, high, hib, name)
    except ValueError as exc:
        raise TrainingError(f"Invalid score range: {exc}") from exc
    except (TypeError, KeyError, IndexError) as exc:
        raise TrainingError(
            f"score_scale must be a ScoreScale, a dict or (low, high[, higher_is_better]); got {value!r}."
        ) from exc


def config_from_dict(d: dict) -> TrainConfig:
    """A :class:`TrainConfig` from a plain dict (unknown keys are an error)."""
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise TrainingError(f"Unknown training settings: {', '.join(unknown)}.")
    return TrainConfig(**d)
