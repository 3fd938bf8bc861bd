"""Training errors: :class:`TrainingError` (a message and a hint) and :func:`explain`, which turns any
exception raised during training into such a message and hint (:func:`is_oom` spots out-of-memory).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from .config import TrainConfig


class TrainingError(RuntimeError):
    """Training could not start or go on; ``str(exc)`` says why, ``exc.hint`` what to do."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message if not hint else f"{message} {hint}")
        self.message = message
        self.hint = hint


def is_oom(exc: BaseException) -> bool:
    """True for a (GPU) out-of-memory error."""
    import torch

    if isinstance(exc, getattr(torch.cuda, "OutOfMemoryError", ())):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def explain(exc: BaseException, config: TrainConfig | None = None) -> tuple[str, str]:
    """A ``(message, hint)`` pair for an exception raised during training."""
    from ..data.datasets import DatasetError
    from ..imaging import ImageError

    if isinstance(exc, TrainingError):
        return exc.message, exc.hint
    if is_oom(exc):
        b = config.batch_size if config else "?"
        k = config.crops_per_image if config else "?"
        return (
            f"The device ran out of memory ({b} images x {k} crops per step).",
            "Lower --batch-size (batch_size) first, then --crops-per-image; or use --precision "
            "bf16/fp16, --freeze-backbone, --eval-batch-size, or a lighter --backbone.",
        )
    if isinstance(exc, (DatasetError, ImageError)):
        return str(exc), "Fix the data (see the message) and start again."
    if isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError)):
        return f"{type(exc).__name__}: {exc}", "Check the paths and their permissions."
    try:
        from ..weights import CheckpointError

        if isinstance(exc, CheckpointError):
            return str(exc), "Give a valid checkpoint or registered model name to init."
    except ImportError:  # pragma: no cover
        pass
    if isinstance(exc, ValueError):
        return str(exc), "Check the training settings."
    return f"Training failed: {type(exc).__name__}: {exc}", ""
