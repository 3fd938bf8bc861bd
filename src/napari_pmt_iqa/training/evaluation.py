"""Evaluation with the deterministic crop grid: :func:`predict_images` (also the validation of each
training epoch) and :func:`evaluate` (SRCC/PLCC/KRCC of a model on a data set).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from .config import TrainConfig
from .errors import TrainingError
from .prepare import resolve_dataset

#: Images with more pixels than this are scored one by one (tiled), not batched, in evaluation.
BATCH_EVAL_MAX_PIXELS = 1024 * 1024


def predict_images(
    model,
    get_image: Callable[[int], np.ndarray],
    indices: Sequence[int],
    device=None,
    precision: str = "fp32",
    batch_size: int = 8,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """Scores (in the model's units) of images ``get_image(i)`` for ``i`` in ``indices``.

    Uses the deterministic crop grid of :func:`~napari_pmt_iqa.scoring.score` (maps off); images
    of equal shape are batched through :func:`~napari_pmt_iqa.scoring.score_batch`. Where
    ``get_image`` returns ``None`` (an image that cannot be read) the score is NaN.
    """
    from ..scoring import score, score_batch

    dev = str(device or next(model.parameters()).device)
    was_training = model.training
    model.eval()
    out = np.empty(len(indices), dtype=np.float64)
    chunk = max(1, batch_size) * 4
    try:
        for k in range(0, len(indices), chunk):
            idx = list(range(k, min(k + chunk, len(indices))))
            imgs = [get_image(indices[j]) for j in idx]
            for j, im in zip(idx, imgs):
                if im is None:
                    out[j] = np.nan
            ok = [(j, im) for j, im in zip(idx, imgs) if im is not None]
            small = [j for j, im in ok if im.shape[0] * im.shape[1] <= BATCH_EVAL_MAX_PIXELS]
            big = [j for j, im in ok if im.shape[0] * im.shape[1] > BATCH_EVAL_MAX_PIXELS]
            if small:
                res = score_batch(
                    [imgs[j - k] for j in small],
                    model=model,
                    device=dev,
                    precision=precision,
                    batch_size=batch_size,
                    maps=False,
                )
                for j, r in zip(small, res):
                    out[j] = r.score
            for j in big:
                out[j] = score(
                    imgs[j - k], model=model, device=dev, maps=False, precision=precision
                ).score
            if progress:
                progress(min(k + chunk, len(indices)), len(indices))
    finally:
        model.train(was_training)
    return out


def evaluate(
    model,
    data,
    device: str = "auto",
    precision: str = "fp32",
    batch_size: int = 8,
    progress: Callable[[int, int], None] | None = None,
    return_predictions: bool = False,
    part: str = "test",
):
    """SRCC, PLCC and KRCC of ``model`` on a data set (deterministic crop grid).

    Parameters
    ----------
    model
        A :class:`~napari_pmt_iqa.model.PMTIQA`, a checkpoint path or a registered name.
    data
        An :class:`IQADataset`, a path (any layout) or ``(image, mos)`` pairs. Scores are compared
        in the data set's own units (the metrics do not depend on a linear rescaling).
    part
        For a BIQ2021 folder: ``"test"`` (default: the held-out split, as ``pmt-iqa eval``),
        ``"train"`` or ``"all"``.

    Returns
    -------
    dict
        ``srcc``, ``plcc`` (raw Pearson, as the authors' code), ``plcc_logistic`` (after the
        4-parameter logistic mapping, as most IQA papers), ``krcc``, ``n`` (images measured), ``mae_internal`` and ``unreadable``
        (``(path, reason)`` of images that could not be read: left out, like missing files);
        with ``return_predictions`` also the per-sample scores (NaN where unreadable).
    """
    from ..data.crops import load_sample_rgb
    from ..imaging import ImageError
    from ..metrics import iqa_metrics
    from ..scoring import get_model

    net = get_model(model, device)
    if isinstance(data, (str, os.PathLike)):
        from ..data.datasets import detect_layout, load_biq2021

        path = Path(data).expanduser()
        if path.is_dir() and detect_layout(path) == "biq2021":
            data = load_biq2021(path, part)
    if not hasattr(data, "samples"):
        data = resolve_dataset(TrainConfig(data=data))
    samples = data.samples
    if not samples:
        raise TrainingError("The evaluation data set is empty.")
    unreadable: list[tuple[str, str]] = []

    def get_image(i):
        try:
            return load_sample_rgb(samples[i], net.config.crop_size)
        except (ImageError, OSError) as exc:
            unreadable.append((str(samples[i].path), str(exc)))
            return None

    preds = predict_images(
        net,
        get_image,
        range(len(samples)),
        device=None,
        precision=precision,
        batch_size=batch_size,
        progress=progress,
    )
    ok = np.isfinite(preds)
    if not ok.any():
        first = unreadable[0][1] if unreadable else "the model gave no finite score"
        raise TrainingError(
            f"None of the {len(samples)} evaluation images could be scored ({first})."
        )
    # compare on the internal scale of the model vs the data set's scale mapped there too
    mscale = getattr(net, "score_scale", None)
    p_int = np.asarray(mscale.to_internal(preds)) if mscale is not None else preds
    m_int = np.asarray(
        data.scale.to_internal(np.asarray([s.mos for s in samples], dtype=np.float64))
    )
    m = iqa_metrics(p_int[ok], m_int[ok])
    m["mae_internal"] = float(np.mean(np.abs(p_int[ok] - m_int[ok])))
    m["unreadable"] = unreadable
    if return_predictions:
        return m, preds
    return m
