"""The defect head: where an image is blurred, noisy or compressed, whatever it shows.

The quality map (the regression head, crop by crop) mixes two things: how good a place's
content looks to people and how degraded it is. A clean patch of sky can score below a
JPEG-compressed patch of foliage. The defect head answers the second question alone: for every
crop it estimates the degradation level (0 none .. 5 severe, the levels of
:mod:`~napari_pmt_iqa.data.degradations`) of each defect *family*: blur, noise, compression.

It is a linear read-out of the mean and root mean square of every channel of the backbone's first
three stages over the crop (:meth:`PMTIQA.defect_features`), fitted in closed form (ridge
regression, one family at a time: its own kinds at their levels, clean crops and the other
families' kinds at level 0) on windows of pristine photos, clean and synthetically degraded. The
fit changes neither the backbone nor the other heads.

A model may also take its defect levels into its score (``ModelConfig.defect_weights``,
:meth:`PMTIQA.fuse`): every crop's score loses a few points per level of each family, so that
the quality map too lowers where the head sees a defect. The weights are chosen on validation
images (``scripts/fit_fusion.py``); a refit of the head drops them. A fine-tune keeps them and
trains its heads through the defect-aware score (``FinetuneConfig.defect_score``), or drops them
when told to (:func:`drop_defect_weights`): its heads then learn the user's ratings alone.

Few-shot fine-tuning leaves the first three stages as they are, so the head stays valid; a full
training run changes them and drops the head (:func:`drop_defect_head`).

Usage::

    rows = defect_rows(model, photos)                 # features of clean and degraded windows
    fit = fit_defects(rows, ridge=0.03)
    attach_defect_head(model, fit)                     # model.config.defect_kinds is set
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ..data.degradations import LEVELS, distort
from .errors import TrainingError

#: Defect families of the head and the degradation kinds each is fitted on. Kinds not named here
#: (tone changes, and the kinds held out of training) are never shown to the fit.
DEFECT_FAMILIES: dict[str, tuple[str, ...]] = {
    "blur": ("blur", "defocus", "resample"),
    "noise": ("noise", "poisson", "chroma_noise"),
    "compression": ("jpeg", "webp"),
}


@dataclass
class DefectRows:
    """Training rows of the defect head.

    Attributes
    ----------
    features
        ``(n, defect_dim)`` defect features of sampled crop windows.
    levels
        ``(n,)`` degradation level of each window's image (0 for a clean one).
    family
        ``(n,)`` index into ``kinds`` of the degradation's family, -1 for a clean window.
    kinds
        Names of the families.
    photos
        How many photos the rows come from.
    """

    features: np.ndarray
    levels: np.ndarray
    family: np.ndarray
    kinds: tuple[str, ...]
    photos: int


@dataclass
class DefectFit:
    """A fitted defect head: ``levels = features @ weight.T + bias`` (then clipped to 0..5)."""

    kinds: tuple[str, ...]
    weight: np.ndarray
    bias: np.ndarray
    ridge: float
    windows: int
    photos: int
    specific: bool = False

    def to_meta(self) -> dict:
        """What a checkpoint's metadata records about the fit."""
        return {
            "kinds": list(self.kinds),
            "families": {k: list(DEFECT_FAMILIES.get(k, ())) for k in self.kinds},
            "ridge": self.ridge,
            "specific": self.specific,
            "windows": self.windows,
            "photos": self.photos,
        }


def _as_rgb(photo) -> np.ndarray:
    if isinstance(photo, np.ndarray):
        img = photo
    else:
        from PIL import Image

        with Image.open(photo) as im:
            img = np.asarray(im.convert("RGB"))
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise TrainingError(
            f"defect-head photos must be 8-bit RGB images; got {img.dtype} {img.shape}."
        )
    return img


def window_features(model, img: np.ndarray) -> np.ndarray:
    """Defect features of every lattice window of an 8-bit RGB image (its centre cut to a multiple
    of 32 pixels), ``(n_windows, defect_dim)``; empty for an image smaller than one crop."""
    import torch

    crop = model.config.crop_size
    lat = model.lattice
    h, w = (img.shape[0] // lat) * lat, (img.shape[1] // lat) * lat
    if h < crop or w < crop:
        return np.zeros((0, model.defect_dim), np.float32)
    y0, x0 = (img.shape[0] - h) // 2, (img.shape[1] - w) // 2
    a = np.ascontiguousarray(img[y0 : y0 + h, x0 : x0 + w], dtype=np.float32) / 255.0
    dev = next(model.parameters()).device
    with torch.inference_mode():
        x = model.normalize(torch.from_numpy(a).permute(2, 0, 1)[None].to(dev))
        return model.defect_features(model.backbone(x)).float().cpu().numpy()


def defect_rows(
    model,
    photos: Sequence,
    *,
    families: dict[str, tuple[str, ...]] | None = None,
    versions_per_family: int = 2,
    windows_per_image: int = 12,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> DefectRows:
    """Defect features of clean and degraded versions of ``photos``.

    Each photo gives its clean version and, per family, ``versions_per_family`` versions degraded
    by a random kind of the family at a random level 1..5; ``windows_per_image`` random lattice
    windows of each version become rows.

    Parameters
    ----------
    model
        A :class:`~napari_pmt_iqa.model.network.PMTIQA` (its backbone is only read).
    photos
        Paths or 8-bit RGB arrays of pristine photos (at least 224 pixels a side; smaller ones
        are skipped).
    """
    families = dict(DEFECT_FAMILIES if families is None else families)
    for name, kinds in families.items():
        unknown = [k for k in kinds if k not in LEVELS]
        if not kinds or unknown:
            raise TrainingError(
                f"defect family {name!r}: unknown or no degradation kinds {unknown}."
            )
    names = tuple(families)
    rng = np.random.default_rng(seed)
    feats, levels, fam = [], [], []
    used = 0
    was_training = model.training
    model.eval()
    try:
        for i, photo in enumerate(photos):
            img = _as_rgb(photo)
            versions = [(-1, 0, img)]
            for f, name in enumerate(names):
                for _ in range(versions_per_family):
                    kind = families[name][int(rng.integers(len(families[name])))]
                    level = int(rng.integers(1, 6))
                    versions.append((f, level, distort(img, kind, level, seed=seed + i)))
            took = False
            for f, level, version in versions:
                x = window_features(model, version)
                if not len(x):
                    continue
                pick = rng.choice(len(x), min(windows_per_image, len(x)), replace=False)
                feats.append(x[pick])
                levels.append(np.full(len(pick), level, np.float64))
                fam.append(np.full(len(pick), f, np.int64))
                took = True
            used += took
            if progress:
                progress(i + 1, len(photos))
    finally:
        model.train(was_training)
    if not feats:
        raise TrainingError("no photo was large enough (224 pixels a side) for the defect head.")
    return DefectRows(
        np.concatenate(feats).astype(np.float32),
        np.concatenate(levels),
        np.concatenate(fam),
        names,
        used,
    )


def fit_defects(rows: DefectRows, ridge: float = 0.03, specific: bool = True) -> DefectFit:
    """Ridge regression of the level of each family on the standardised features.

    Each family is fitted on the clean rows, its own degraded rows and (``specific``, the default)
    the other families' degraded rows as level 0, so that a family's map stays low on the other
    defects: without them a strongly blurred region also reads as "compressed", both having lost
    their fine detail. ``ridge`` is the penalty per row (the penalty
    is ``ridge * rows`` on standardised features), so it means the same for any amount of data.
    The standardisation is folded into the returned weight and bias.
    """
    if not np.isfinite(ridge) or ridge <= 0:
        raise TrainingError(f"the ridge penalty must be a positive number; got {ridge!r}.")
    X = rows.features.astype(np.float64)
    mu = X.mean(0)
    sd = X.std(0) + 1e-6
    Z = np.c_[(X - mu) / sd, np.ones(len(X))]
    weights, biases = [], []
    for f, name in enumerate(rows.kinds):
        if not (rows.family == f).any() or not (rows.family == -1).any():
            raise TrainingError(f"defect family {name!r} has no degraded or no clean rows.")
        m = np.ones(len(Z), bool) if specific else (rows.family == f) | (rows.family == -1)
        A, y = Z[m], np.where(rows.family[m] == f, rows.levels[m], 0.0)
        pen = ridge * len(A) * np.eye(A.shape[1])
        pen[-1, -1] = 0.0  # the intercept is not penalised
        beta = np.linalg.solve(A.T @ A + pen, A.T @ y)
        w = beta[:-1] / sd
        weights.append(w)
        biases.append(beta[-1] - float(w @ mu))
    return DefectFit(
        rows.kinds,
        np.stack(weights).astype(np.float32),
        np.asarray(biases, np.float32),
        float(ridge),
        int(len(X)),
        rows.photos,
        bool(specific),
    )


def attach_defect_head(model, fit: DefectFit):
    """Give ``model`` the fitted defect head (in place; also returned).

    Its configuration's ``defect_kinds`` becomes the fit's families, so that a saved checkpoint
    rebuilds the head.
    """
    import torch
    from torch import nn

    if fit.weight.shape != (len(fit.kinds), model.defect_dim):
        raise TrainingError(
            f"the defect fit has {fit.weight.shape[1]} features; this model's backbone gives "
            f"{model.defect_dim}."
        )
    p = next(model.parameters())
    head = nn.Linear(model.defect_dim, len(fit.kinds)).to(p.device)
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(fit.weight))
        head.bias.copy_(torch.from_numpy(fit.bias))
    head.requires_grad_(False)
    model.defect_head = head
    # weights of a defect-aware score were chosen for the head this one replaces: not kept
    model.config = dataclasses.replace(
        model.config, defect_kinds=tuple(fit.kinds), defect_weights=(), defect_thresholds=()
    )
    _forget_fusion(model)
    return model


def drop_defect_head(model):
    """Remove the defect head (in place; also returned): for a run that trains the first stages
    of the backbone, after which the head's read-out no longer fits them."""
    model.defect_head = None
    if model.config.defect_kinds:
        model.config = dataclasses.replace(
            model.config, defect_kinds=(), defect_weights=(), defect_thresholds=()
        )
    _forget_fusion(model)
    return model


def drop_defect_weights(model):
    """Make the scores plain head outputs again (in place; also returned): the defect head and
    its maps stay, the defect-aware score (``ModelConfig.defect_weights``) goes. For a training
    run whose heads learn the ratings as they are (a heads-only ``train`` run; a fine-tune with
    ``defect_score=False``)."""
    if model.config.defect_weights or model.config.defect_thresholds:
        model.config = dataclasses.replace(model.config, defect_weights=(), defect_thresholds=())
    _forget_fusion(model)
    return model


def _forget_fusion(model) -> None:
    """Drop the record of a defect-aware score from the metadata the model was loaded with."""
    meta = getattr(model, "meta", None)
    if isinstance(meta, dict) and "fusion" in meta:
        model.meta = {k: v for k, v in meta.items() if k != "fusion"}


def save_with_defect_head(path, model, fit: DefectFit, **info):
    """Write ``model`` (with the head of ``fit`` attached) to ``path``, atomically, keeping the
    metadata it was loaded with (training data, metrics, score scale) and recording the fit under
    ``defects`` (with ``info``)."""
    from ..weights import build_metadata, save_checkpoint

    # what describes this file, not the one it came from: rebuilt or dropped (a head fitted on a
    # registered model is not that registered model)
    own = {"config", "format_version", "architecture", "created", "package_version", "name"}
    own |= {"version", "storage_dtype", "float16_max_score_change", "description"}
    own |= {"fusion"}  # a new head takes the defect-aware score's weights with it
    kept = {k: v for k, v in (getattr(model, "meta", None) or {}).items() if k not in own}
    meta = build_metadata(model, **kept)
    meta["defects"] = {**fit.to_meta(), **info}
    return save_checkpoint(path, model, meta)
