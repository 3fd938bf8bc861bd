"""Checks of training settings, shared by the trainer and the fine-tuning recipe.

Each raises :class:`~napari_pmt_iqa.training.errors.TrainingError` with a message that names the
setting, says what it must be and what it got, so that a bad value is refused before any work
(and the GUI shows the message instead of a traceback).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterable
from numbers import Integral, Real
from pathlib import Path
from typing import Any

from .errors import TrainingError


def _real(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, Real):
        return None
    v = float(value)
    return v if math.isfinite(v) else None


def whole_number(name: str, value: Any, minimum: int = 1, optional: bool = False) -> None:
    """``value`` is an integer of at least ``minimum`` (or None, when ``optional``)."""
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, Integral) or value < minimum:
        also = " (or None: automatic)" if optional else ""
        raise TrainingError(
            f"{name} must be a whole number of at least {minimum}{also}; got {value!r}."
        )


def positive(name: str, value: Any, optional: bool = False) -> None:
    """``value`` is a finite number above 0 (or None, when ``optional``)."""
    if optional and value is None:
        return
    v = _real(value)
    if v is None or v <= 0:
        raise TrainingError(f"{name} must be a positive number; got {value!r}.")


def at_least(name: str, value: Any, minimum: float) -> None:
    """``value`` is a finite number of at least ``minimum``."""
    v = _real(value)
    if v is None or v < minimum:
        raise TrainingError(f"{name} must be a number of at least {minimum:g}; got {value!r}.")


def non_negative(name: str, value: Any) -> None:
    """``value`` is a finite number of at least 0."""
    v = _real(value)
    if v is None or v < 0:
        raise TrainingError(f"{name} must be a number of at least 0; got {value!r}.")


def fraction(name: str, value: Any, closed: bool = False) -> None:
    """``value`` lies in [0, 1) (in [0, 1] when ``closed``)."""
    v = _real(value)
    if v is None or v < 0 or (v > 1 if closed else v >= 1):
        raise TrainingError(f"{name} must be in [0, 1{']' if closed else ')'}; got {value!r}.")


def one_of(name: str, value: Any, choices: Iterable[str]) -> None:
    """``value`` is one of ``choices``."""
    choices = tuple(choices)
    if value not in choices:
        shown = ", ".join(repr(c) for c in choices)
        raise TrainingError(f"{name} must be one of {shown}; got {value!r}.")


def output_folder(out_dir: str | os.PathLike | None, prefix: str) -> Path:
    """The folder of a run's files: ``out_dir``, or a new ``PREFIX-YYYYmmdd-HHMMSS`` folder under
    the plugin's cache (``runs/``) when it is None. Not created here.

    Raises
    ------
    TrainingError
        ``out_dir`` is an existing file.
    """
    out = Path(out_dir).expanduser() if out_dir else None
    if out is None:
        from ..weights import cache_dir

        out = cache_dir() / "runs" / time.strftime(f"{prefix}-%Y%m%d-%H%M%S")
    if out.exists() and not out.is_dir():
        raise TrainingError(
            f"The output folder {out} is an existing file.",
            "Choose a folder for the checkpoints (it is created if missing).",
        )
    return out
