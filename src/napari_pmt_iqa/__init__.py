"""napari-pmt-iqa: blind image quality assessment (PMT-IQA) for napari and Python.

The public API is imported lazily, so that ``import napari_pmt_iqa`` (which napari does at
start-up) stays cheap and does not import torch::

    from napari_pmt_iqa import score, load_model
    result = score(image)            # the default model shipped with the package
    result.score, result.units
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

from ._version import __version__

_LAZY = {
    "score": "scoring",
    "score_batch": "scoring",
    "ScoreResult": "scoring",
    "StackResult": "scoring",
    "QualityMaps": "scoring",
    "ScoringCancelled": "scoring",
    "ModelOutputError": "scoring",
    "load_model": "weights",
    "load_checkpoint": "weights",
    "save_checkpoint": "weights",
    "list_models": "weights",
    "REGISTRY": "weights",
    "PMTIQA": "model",
    "ModelConfig": "model",
    "ScoreScale": "score_scale",
    "ImageError": "imaging",
    "read_image": "imaging",
    "iqa_metrics": "metrics",
    "finetune": "training.finetune",
    "FinetuneConfig": "training.finetune",
}

__all__ = ["__version__", *_LAZY]

if TYPE_CHECKING:  # pragma: no cover
    from .imaging import ImageError, read_image
    from .metrics import iqa_metrics
    from .model import PMTIQA, ModelConfig
    from .score_scale import ScoreScale
    from .scoring import (
        ModelOutputError,
        QualityMaps,
        ScoreResult,
        ScoringCancelled,
        StackResult,
        score,
        score_batch,
    )
    from .training.finetune import FinetuneConfig, finetune
    from .weights import REGISTRY, list_models, load_checkpoint, load_model, save_checkpoint


def __getattr__(name: str):
    if name in _LAZY:
        mod = import_module(f".{_LAZY[name]}", __name__)
        return getattr(mod, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
