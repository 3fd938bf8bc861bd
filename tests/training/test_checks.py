"""Checks of training settings: each bad value is refused with a message that names it."""

from __future__ import annotations

import math

import numpy as np
import pytest

from napari_pmt_iqa.training import checks
from napari_pmt_iqa.training.errors import TrainingError


@pytest.mark.parametrize("bad", [0, -3, 2.5, "4", True, None])
def test_whole_number(bad):
    with pytest.raises(TrainingError, match=r"epochs must be a whole number of at least 1; got"):
        checks.whole_number("epochs", bad)
    checks.whole_number("epochs", 3)
    checks.whole_number("epochs", np.int64(3))
    checks.whole_number("epochs", None, optional=True)


@pytest.mark.parametrize("bad", [0, -1e-3, math.nan, math.inf, "1e-3", None])
def test_positive(bad):
    with pytest.raises(TrainingError, match="lr must be a positive number"):
        checks.positive("lr", bad)
    checks.positive("lr", 1e-4)
    checks.positive("lr", None, optional=True)


@pytest.mark.parametrize("bad", [0.5, -1, math.nan, math.inf, "2", True, None])
def test_at_least(bad):
    with pytest.raises(TrainingError, match=r"zoom must be a number of at least 1; got"):
        checks.at_least("zoom", bad, 1)
    checks.at_least("zoom", 1, 1)
    checks.at_least("zoom", 1.5, 1)
    checks.at_least("zoom", np.float32(2.0), 1)


def test_non_negative_fraction_and_choice():
    checks.non_negative("w", 0)
    with pytest.raises(TrainingError, match="at least 0"):
        checks.non_negative("w", -1)
    checks.fraction("f", 0.0)
    with pytest.raises(TrainingError, match=r"f must be in \[0, 1\)"):
        checks.fraction("f", 1.0)
    checks.fraction("f", 1.0, closed=True)
    with pytest.raises(TrainingError, match=r"\[0, 1\]"):
        checks.fraction("f", 1.5, closed=True)
    checks.one_of("s", "step", ("step", "cosine"))
    with pytest.raises(TrainingError, match="s must be one of 'step', 'cosine'; got 'linear'"):
        checks.one_of("s", "linear", ("step", "cosine"))
