"""The few-shot fine-tuning recipe: a user's ratings of their own kind of images in, a model out.

One recipe for the three ways in: :func:`finetune` (Python), ``pmt-iqa finetune`` (the command line)
and the fine-tune widget all run it with the defaults of :class:`FinetuneConfig`.

Recipe (the defaults; measured by ``benchmarks/bench_finetune.py``, numbers in ``docs/results.md``)
------------------------------------------------------------------------------------------------
1. **Start from a quality model** (the default model, a registered name or a checkpoint; an ImageNet
   backbone with new heads is possible but learns far less from a hundred ratings).
2. **Hold out** 20 % of the ratings (at least :attr:`FinetuneConfig.min_holdout`; seeded, every
   version of one photo on the same side): they choose the epoch and say whether the fine-tune
   helped. Rows of a data set marked ``split=val`` are the held-out part instead; ``split=test``
   rows are never used.
3. **Cache the backbone**: the backbone runs once per image and stays frozen up to its pointwise
   head (:mod:`~napari_pmt_iqa.training.features`): the pooled stage maps of the image's
   224-windows are cached, and, where the backbone ends in a pointwise head (EfficientNet-Lite's
   1 x 1 head convolution; ``adapt_head``), the map that enters that head
   (:mod:`~napari_pmt_iqa.training.head_maps`): the whole image's when it has at most twice
   ``windows_per_image`` windows (training images) or ``holdout_windows`` (held-out images), else
   seeded, non-overlapping patches of 4 x 4 windows. Held-out images within that size are so
   scored exactly as :func:`~napari_pmt_iqa.scoring.score` scores them.
4. **Calibrate**: the least-squares map of the starting model's scores onto the ratings is folded
   into its linear regression head (exact, free), so training starts at the right scale. A
   starting model with a defect-aware score (``PMTIQA.fuse``; the default model) keeps it unless
   ``defect_score=False``: the windows' defect levels are cached with their features, and the
   calibration, the losses and the held-out figures all use that score, as the scorer does.
5. **Train the heads** (tap convolutions, tap layers, trunk, both heads; with Adam at ``lr``) and
   the backbone's pointwise head (its convolution and batch-norm affine, at ``head_lr``; the
   batch-norm statistics stay) on the cached features and maps
   (:mod:`~napari_pmt_iqa.training.heads_fit`): regression of each image's mean window
   score on its rating, a margin ranking loss on every pair of differently rated images of a
   batch (ratings are ordinal), the class head's cross-entropy, and an L2 pull towards the
   starting weights so that the model keeps what it knew. ``batch_size`` images per step, a few
   windows of each (a random block of 2 x 4 adjacent windows when the head is adapted, so that it
   runs on few cells); the number of epochs follows from the number of ratings
   (:meth:`FinetuneConfig.epochs_for`).
6. **Select** the epoch with the best held-out SRCC (early stopping after ``patience`` epochs
   without a gain).
7. **Refit** on every rating (training and held-out images) for the selected number of epochs
   (at least ``min_refit_steps`` and at most ``max_refit_steps`` optimiser steps,
   :meth:`FinetuneConfig.refit_epochs_for`).
8. **Blend**: take ``blend`` (half) of the step from the calibrated start (calibrated again on
   every rating for the refit) to the trained weights
   (:mod:`~napari_pmt_iqa.training.weight_blend`); the blend is the model written as
   ``best.safetensors``. Its held-out SRCC (the "after" beside the starting model's "before") is
   the selection run's blend, which did not see those images; the selection run chose its epoch
   on that blend too.

Files in ``out_dir`` (atomic writes): ``best.safetensors`` (the model, with the recipe, the
held-out metrics before and after and the data used in its metadata), ``report.json`` (the same
report) and, after a stop, ``state.pt`` (``resume`` continues from it).

Where the code lives: the settings, the result, the recipe's events and the held-out split in
:mod:`~napari_pmt_iqa.training.finetune_config`; the run itself (selection, blend, refit) in
:mod:`~napari_pmt_iqa.training.finetune_run`, its setup (checks, data, backbone cache) in
:mod:`~napari_pmt_iqa.training.finetune_setup` and its files in
:mod:`~napari_pmt_iqa.training.finetune_files`; the blend in
:mod:`~napari_pmt_iqa.training.weight_blend`; the head training on cached
features in :mod:`~napari_pmt_iqa.training.heads_fit`, :mod:`~napari_pmt_iqa.training.features`
and (the backbone head's maps) :mod:`~napari_pmt_iqa.training.head_maps`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from .errors import TrainingError
from .events import Control, Emitter, Event, Failed
from .finetune_config import (
    RATINGS_SCALE_ARGS,
    RECIPE,
    Baseline,
    FinetuneConfig,
    FinetuneResult,
    Refitting,
    holdout_split,
    is_ratings_csv,
    ratings_scale,
)
from .finetune_run import _Run

__all__ = [
    "RATINGS_SCALE_ARGS",
    "RECIPE",
    "Baseline",
    "FinetuneConfig",
    "FinetuneResult",
    "Refitting",
    "finetune",
    "holdout_split",
    "is_ratings_csv",
    "ratings_scale",
]


# --------------------------------------------------------------------------- the run
def finetune(
    config: FinetuneConfig,
    listeners: Iterable[Callable[[Event], None]] = (),
    control: Control | None = None,
) -> FinetuneResult:
    """Fine-tune a quality model on a few hundred (or fewer) ratings with the few-shot recipe.

    Parameters
    ----------
    config
        The settings (:class:`FinetuneConfig`; its defaults are the recipe).
    listeners
        Callables that receive every :mod:`~napari_pmt_iqa.training.events` event, plus
        :class:`Baseline` and :class:`Refitting`.
    control
        A :class:`~napari_pmt_iqa.training.events.Control` to pause or stop the run from another
        thread (a stop writes ``state.pt``; ``resume`` continues from it).

    Returns
    -------
    FinetuneResult

    Raises
    ------
    TrainingError
        Too few or equal ratings, unreadable data, a checkpoint that cannot be loaded, a bad
        setting; the message says what to do (after a :class:`Failed` event).

    Examples
    --------
    >>> from napari_pmt_iqa.training import FinetuneConfig, finetune
    >>> res = finetune(FinetuneConfig(data="ratings.csv", out_dir="runs/mine"))  # doctest: +SKIP
    >>> res.start_val["srcc"], res.best_val["srcc"]  # doctest: +SKIP
    """
    emit = Emitter(listeners, what="fine-tuning")
    run = None
    try:
        run = _Run(config, emit, control or Control())
        return run.run()
    except BaseException as exc:
        if isinstance(exc, (KeyboardInterrupt, SystemExit, GeneratorExit)):
            raise
        from .errors import explain, is_oom

        if is_oom(exc):
            msg, hint = (
                "The device ran out of memory while fine-tuning.",
                "Lower windows_per_image, holdout_windows or memory_mb, or use the CPU.",
            )
        else:
            msg, hint = explain(exc)
        best = str(run.best_path) if run is not None and run.best_path else ""
        emit(Failed(msg, hint, best))
        if isinstance(exc, TrainingError):
            raise
        raise TrainingError(msg, hint) from exc
    finally:
        from .head_maps import clear_cache

        clear_cache()  # the window-pooling matrices (also on a GPU)
