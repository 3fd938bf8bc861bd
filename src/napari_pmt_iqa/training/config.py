"""Settings and outcome of a training run: :class:`TrainConfig` (the paper's recipe by default),
:class:`TrainResult`, :func:`config_from_dict` and the coercion of ``score_scale`` values.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from typing import Any

from .errors import TrainingError


@dataclass
class TrainConfig:
    """Everything a training run needs; the defaults are the paper's recipe.

    Parameters
    ----------
    data
        A data set folder or CSV (see :func:`~napari_pmt_iqa.data.datasets.load_dataset`), an
        :class:`~napari_pmt_iqa.data.datasets.IQADataset`, or a list of ``(array_or_path, mos)``
        pairs (images rated in napari). Samples whose ``split`` is ``"test"`` are never used;
        ``"val"`` samples, when present, are the validation part.
    layout
        ``"auto"``, ``"csv"``, ``"livec"`` or ``"biq2021"`` (for a path).
    score_scale
        The units of the scores: a ``ScoreScale``, a dict, or ``(low, high[, higher_is_better])``.
        ``None``: the data set's own (LIVE-C 0-100, BIQ2021 0-1) or inferred; for in-memory pairs
        fine-tuning a checkpoint, the checkpoint's when all scores fall in it.
    out_dir
        Where checkpoints go (created). ``None``: a new folder under the cache folder.
    init
        ``None``: an ImageNet backbone (``backbone``, ``pretrained``); otherwise a registered model
        name or a checkpoint path to fine-tune.
    multiscale
        False for the ablation without the multi-scale taps (only the last stage reaches the heads).
    epochs, batch_size, crops_per_image
        Epochs; images per optimiser step (over all processes); random crops per image.
    lr, head_lr, weight_decay, lr_step
        Adam learning rates of the backbone and of the heads (``None``: ``10 * lr``); decay; both
        rates are divided by 10 every ``lr_step`` epochs (0: never).
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
    """

    data: Any = None
    layout: str = "auto"
    score_scale: Any = None
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

    def recipe(self) -> dict:
        """The settings as plain JSON data (for checkpoint metadata)."""
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name == "data":
                v = _describe_data(v)
            elif f.name == "score_scale" and v is not None and hasattr(v, "to_dict"):
                v = v.to_dict()
            elif isinstance(v, os.PathLike):
                v = str(v)
            elif isinstance(v, tuple):
                v = list(v)
            out[f.name] = v
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


def _describe_data(data) -> Any:
    if data is None:
        return None
    if isinstance(data, (str, os.PathLike)):
        return str(data)
    if hasattr(data, "samples") and hasattr(data, "name"):
        return {"dataset": data.name, "root": str(data.root) if data.root else None, "n": len(data)}
    try:
        return {"in_memory_pairs": len(data)}
    except TypeError:
        return repr(data)[:80]


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
