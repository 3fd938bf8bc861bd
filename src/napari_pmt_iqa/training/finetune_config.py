"""Settings, result and events of the few-shot fine-tuning recipe (:mod:`.finetune`).

:class:`FinetuneConfig` holds the recipe's defaults; :func:`holdout_split` cuts the held-out
ratings; :class:`Baseline` and :class:`Refitting` are the recipe's own events, beside those of
:mod:`~napari_pmt_iqa.training.events`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from .config import _describe_data, _json_setting
from .events import Event

#: Units of ratings given in napari (1-5 stars are 10, 30, 50, 70, 90 on it).
RATINGS_SCALE_ARGS = (0.0, 100.0, True, "quality (0-100, rated in napari)")
#: Version of the recipe (stored in checkpoints and state files).
RECIPE = "few-shot-3"  # 3: the blend (half the fine-tuned step); 2: the backbone head adapted
#: About how many optimiser steps the selection run makes (:meth:`FinetuneConfig.epochs_for`).
SELECTION_STEPS = 600
#: Share of the fine-tuned step kept when starting from a quality model
#: (:meth:`FinetuneConfig.blend_for`; measured in ``docs/results.md`` section 8).
DEFAULT_BLEND = 0.5


def ratings_scale():
    """The :class:`~napari_pmt_iqa.score_scale.ScoreScale` of ratings given in napari (0-100)."""
    from ..score_scale import ScoreScale

    return ScoreScale(*RATINGS_SCALE_ARGS)


def is_ratings_csv(data: Any) -> bool:
    """True for a CSV written by the rating widget (columns ``image,mos,layer,plane``)."""
    import csv

    if not isinstance(data, (str, os.PathLike)):
        return False
    path = Path(data).expanduser()
    if path.suffix.lower() != ".csv" or not path.is_file():
        return False
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            header = next(csv.reader(f), [])
    except (OSError, UnicodeDecodeError, csv.Error):
        return False
    cols = {h.strip().lower() for h in header}
    return {"image", "mos", "layer", "plane"} <= cols


@dataclass
class FinetuneConfig:
    """Settings of a few-shot fine-tune; the defaults are the recipe (see the module docstring).

    Parameters
    ----------
    data
        A data set folder or CSV (any layout :func:`~napari_pmt_iqa.data.datasets.load_dataset`
        reads, e.g. the CSV the rating widget saves), an ``IQADataset``, or ``(image, score)``
        pairs (images rated in napari).
    layout, score_scale, limit
        As for :class:`~napari_pmt_iqa.training.TrainConfig`: the layout of a path, the units of
        the scores (``None``: the data set's own; 0-100 for the rating widget's CSV; else
        inferred) and a seeded random subset of that many images.
    init
        The model to fine-tune: a registered name or a checkpoint path; ``None``: the default
        model shipped with the package.
    backbone
        Start instead from this ImageNet backbone with new, random heads (``init`` must be None).
    out_dir
        The run folder (created); ``None``: a new folder under the cache folder.
    device
        ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"mps"``.
    seed
        Seed of the held-out part, the windows, the order and new heads.
    holdout_fraction, min_holdout
        Share of the ratings held out, and the least number held out.
    min_ratings
        Fewer usable rated images than this are refused (the held-out SRCC would mean nothing).
    epochs
        Epochs of the selection run; ``None``: from the number of ratings (:meth:`epochs_for`).
    patience
        Stop after this many epochs without a better held-out SRCC (``None``: a third of the
        epochs, at least 5).
    batch_size
        Images per step.
    windows_per_image, windows_per_step, holdout_windows
        Windows cached per training image, drawn per image in each step, and cached per held-out
        image (all of an image's windows when it has fewer). When the backbone head is adapted a
        training image keeps all its windows up to twice ``windows_per_image`` (else about
        ``windows_per_image`` in patches of 4 x 4), a held-out one up to ``holdout_windows``, and
        a step draws a block of 2 x ``windows_per_step / 2`` adjacent windows.
    lr
        Adam learning rate of the heads.
    adapt_head, head_lr
        Also train the backbone's pointwise head (EfficientNet's 1 x 1 head convolution and its
        batch-norm affine, on cached maps of what enters it; :mod:`~.head_maps`), with Adam at
        ``head_lr``. ``None``: wherever the backbone has such a head (EfficientNet-Lite, the
        tiny test backbone; not ResNets). On LIVE-C ratings it raised the SRCC that 100 ratings
        reach by about 0.01-0.02 over the heads alone; ``head_lr`` 1e-3 was chosen against 1e-4
        and 3e-4 (``docs/results.md`` section 8).
    reg_weight, rank_weight, rank_margin, cls_weight, anchor
        Weights of the loss terms: regression (smooth L1 on the internal 0-100 scale), ranking
        (``rank_margin``: the share of a rated difference the predicted one must reach), the
        class head's cross-entropy, and the L2 pull towards the starting weights.
    calibrate
        Fold the affine map of the starting scores onto the ratings into the regression head first.
    defect_score
        Keep the starting model's defect-aware score (``PMTIQA.fuse``: the default model lowers
        crops where its defect head sees strong blur, noise or compression). The heads then train
        through it, so the fine-tuned model keeps ordering those defects, and the starting
        figure on the held-out ratings is what the scorer gave (exactly for held-out images of
        up to ``holdout_windows`` windows). The fine-tune leaves the first
        backbone stages the head reads unchanged, so its levels stay valid. ``False``: the
        penalty is dropped and the heads learn the ratings as they are (for images whose noise
        or compression you rate as fine); the defect maps stay. No effect on a model without
        such a score. Measured in ``docs/results.md`` section 8.
    blend
        Share of the fine-tuned step kept in the saved model: every trained weight becomes
        ``start + blend * (tuned - start)``, ``start`` being the starting model after its
        calibration to the ratings (to every rating for the refitted model; a weight-space
        ensemble, :mod:`~.weight_blend`). 1: the
        fine-tuned weights alone (the recipe before the blend); 0: the calibrated start.
        ``None``: 0.5 from a quality model, 1 from an ImageNet ``backbone`` (its new heads know
        nothing worth keeping; :meth:`blend_for`). The held-out figures, the epoch selection and
        the saved model are the blend's. On photos
        like the starting model's training data, 100 star ratings cost it about 0.03 SRCC at 1
        and nothing at 0.5; on a defect it did not know, 0.5 keeps the fix and forgets less of
        the rest (``docs/results.md`` section 8, *Taking half the step*).
    refit
        Train the final model on every rating (training and held-out images).
    min_refit_steps
        The refit runs the selected number of epochs, but at least this many optimiser steps: a
        small held-out part often peaks early by chance. 300 was measured against 60, 150 and
        600 on LIVE-C ratings (docs/results.md section 8): with 50 and 100 ratings it gains about
        0.01 SRCC over 60; with 300 ratings the selected epochs are longer anyway.
    max_refit_steps
        ... and at most this many (``None``: no limit), the selection run's own budget
        (:meth:`epochs_for`), so that a run whose held-out SRCC peaks late does not train about
        2.4 times as long as one that peaks early: it bounds the time of 100 ratings on 2 CPU
        cores to about a minute. Only late peaks are cut (with 100 ratings, a best epoch after
        85 of 120; with 300, after 31 of 40).
    memory_mb, precision
        Memory budget and precision of the backbone passes.
    head_threads
        CPU threads while the heads train (``None``: leave torch's setting; ``"auto"``: one for
        the heads alone, two, within torch's setting, when the backbone head is adapted). The
        heads' steps are small: one thread is as fast as two on an idle 2-core machine and many
        times faster on a busy one (threads waiting for each other), and it leaves a core to the
        GUI; the backbone head's 1 x 1 convolution makes a step about 1.6 times faster on two.
        torch's thread count is process-wide: it is restored when the run ends.
    cache_mb
        Memory for decoded images.
    max_bad_fraction
        Unreadable images beyond this share of the data are an error (fewer are left out).
    resume
        A ``state.pt`` (or its folder) of a stopped run to continue.
    description
        The model's description in the model lists.
    """

    data: Any = None
    layout: str = "auto"
    score_scale: Any = None
    limit: int | None = None
    init: str | os.PathLike | None = None
    backbone: str | None = None
    out_dir: str | os.PathLike | None = None
    device: str = "auto"
    seed: int = 0
    holdout_fraction: float = 0.2
    min_holdout: int = 5
    min_ratings: int = 20
    epochs: int | None = None
    patience: int | None = None
    batch_size: int = 16
    windows_per_image: int = 48
    windows_per_step: int = 8
    holdout_windows: int = 256
    lr: float = 1e-3
    adapt_head: bool | None = None
    head_lr: float = 1e-3
    reg_weight: float = 1.0
    rank_weight: float = 1.0
    rank_margin: float = 0.5
    cls_weight: float = 0.1
    anchor: float = 0.0
    calibrate: bool = True
    defect_score: bool = True
    blend: float | None = None
    refit: bool = True
    min_refit_steps: int = 300
    max_refit_steps: int | None = SELECTION_STEPS
    memory_mb: float = 1024
    precision: str = "fp32"
    head_threads: int | str | None = "auto"
    cache_mb: float = 2048
    max_bad_fraction: float = 0.1
    resume: str | os.PathLike | None = None
    description: str = ""

    def epochs_for(self, n_train: int) -> int:
        """Epochs of the selection run for ``n_train`` training images (``epochs`` if set).

        About :data:`SELECTION_STEPS` (600) optimiser steps whatever the number of ratings (more
        epochs for fewer images), between 20 and 300 epochs.
        """
        if self.epochs is not None:
            return int(self.epochs)
        steps_per_epoch = max(1, -(-int(n_train) // max(1, int(self.batch_size))))
        return int(min(300, max(20, round(SELECTION_STEPS / steps_per_epoch))))

    def refit_epochs_for(self, n_images: int, best_epoch: int) -> int:
        """Epochs of the refit on ``n_images`` when the selection run chose ``best_epoch``.

        As many epochs as the selection run's best (``best_epoch + 1``), but at least
        ``min_refit_steps`` and at most ``max_refit_steps`` optimiser steps (where the two
        conflict, the minimum wins; at least one epoch).
        """
        steps_per_epoch = max(1, -(-int(n_images) // max(1, int(self.batch_size))))
        floor = -(-int(self.min_refit_steps) // steps_per_epoch)  # epochs of at least the minimum
        epochs = max(int(best_epoch) + 1, floor)
        if self.max_refit_steps is not None:  # the limit never goes below the minimum
            epochs = min(epochs, max(floor, int(self.max_refit_steps) // steps_per_epoch))
        return max(1, int(epochs))

    def blend_for(self, new_heads: bool) -> float:
        """The share of the fine-tuned step kept (``blend``; ``None``: 0.5, or 1 for a start
        with ``new_heads``)."""
        if self.blend is not None:
            return float(self.blend)
        return 1.0 if new_heads else DEFAULT_BLEND

    def threads_for(self, adapt_head: bool) -> int | None:
        """CPU threads while the heads train (see ``head_threads``); ``None``: torch's setting."""
        if self.head_threads != "auto":
            return None if self.head_threads is None else int(self.head_threads)
        if not adapt_head:
            return 1
        import torch

        return max(1, min(2, torch.get_num_threads()))

    def patience_for(self, epochs: int) -> int:
        """Epochs without a better held-out SRCC before the selection run stops."""
        if self.patience is not None:
            return int(self.patience)
        return max(5, epochs // 3)

    def recipe(self) -> dict:
        """The settings as plain JSON data (for the checkpoint's metadata)."""
        out: dict[str, Any] = {"recipe": RECIPE}
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name == "data":
                v = _describe_data(v)
            out[f.name] = _json_setting(v)
        return out


@dataclass
class FinetuneResult:
    """What :func:`finetune` returns.

    ``start_val`` and ``best_val`` are the held-out metrics (SRCC, PLCC, ...) of the starting
    model and of the fine-tuned one (its selection run, which did not see the held-out images);
    ``improved`` says whether the SRCC went up.
    """

    best_path: str | None
    state_path: str | None
    report_path: str | None = None
    out_dir: str | None = None
    start_val: dict = field(default_factory=dict)
    best_val: dict = field(default_factory=dict)
    improved: bool = False
    history: list[dict] = field(default_factory=list)
    stopped: bool = False
    epochs_done: int = 0
    best_epoch: int | None = None
    refit: bool = False
    n_train: int = 0
    n_holdout: int = 0
    skipped: list[str] = field(default_factory=list)
    seconds: float = 0.0
    feature_seconds: float = 0.0
    last_path: str | None = None


@dataclass(frozen=True)
class Baseline(Event):
    """The starting model measured on the held-out ratings, before any training."""

    val: dict
    n_holdout: int


@dataclass(frozen=True)
class Refitting(Event):
    """The selected epoch count is being refitted on every rating (``done`` of ``total`` steps)."""

    done: int
    total: int
    epochs: int
    n_images: int


def holdout_split(samples: Sequence, fraction: float, minimum: int, seed: int) -> list[int]:
    """Indices of the held-out samples: a seeded share, every version of a photo on one side.

    Samples are grouped by ``content`` where they have one; groups are taken in the order they
    first appear (not by name), so that the same ratings in the same order give the same split
    whether they come from the viewer or from the CSV the rating widget saved.
    """
    groups: dict[Any, list[int]] = {}
    for i, s in enumerate(samples):
        key = s.content if getattr(s, "content", None) else ("#", i)
        groups.setdefault(key, []).append(i)
    order = list(groups.values())
    if fraction <= 0 or len(order) < 2:
        return []
    want = max(int(minimum), int(round(fraction * len(samples))))
    perm = np.random.default_rng((int(seed), 1013)).permutation(len(order))
    out: list[int] = []
    for g in perm:
        if len(out) >= want or len(out) + len(order[g]) > len(samples) - 1:
            break
        out.extend(order[g])
    return sorted(out)
