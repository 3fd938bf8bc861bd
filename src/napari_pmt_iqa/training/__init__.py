"""Training and evaluation of PMT-IQA models (torch is imported on first use of a name).

>>> from napari_pmt_iqa.training import TrainConfig, train
>>> result = train(TrainConfig(data="~/iqa-data/ChallengeDB_release", out_dir="runs/x"))  # doctest: +SKIP

Fine-tuning on a few hundred ratings (the fine-tune widget's recipe):

>>> from napari_pmt_iqa.training import FinetuneConfig, finetune
>>> result = finetune(FinetuneConfig(data="ratings.csv", out_dir="runs/mine"))  # doctest: +SKIP
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

_LAZY = {
    "TrainConfig": "config",
    "TrainResult": "config",
    "TrainingError": "errors",
    "train": "trainer",
    "evaluate": "evaluation",
    "run_protocol": "protocol",
    "ProtocolResult": "protocol",
    "distributed_score_files": "distributed",
}

__all__ = [
    "FinetuneConfig",
    "FinetuneResult",
    "ProtocolResult",
    "TrainConfig",
    "TrainResult",
    "TrainingError",
    "distributed_score_files",
    "evaluate",
    "finetune",
    "run_protocol",
    "train",
]

# Imported at once (no torch): the function ``finetune`` shares its name with its module, and a lazy
# name would lose to the submodule once that is imported (``training.finetune`` is the function;
# the module's other names: ``from napari_pmt_iqa.training.finetune import ...``).
from .finetune import FinetuneConfig, FinetuneResult, finetune  # noqa: E402

if TYPE_CHECKING:  # pragma: no cover
    from .config import TrainConfig, TrainResult
    from .distributed import distributed_score_files
    from .errors import TrainingError
    from .evaluation import evaluate
    from .protocol import ProtocolResult, run_protocol
    from .trainer import train


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
