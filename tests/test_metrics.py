"""IQA correlation metrics: NaN, never an exception, for predictions that cannot be correlated."""

from __future__ import annotations

import math

import numpy as np
import pytest

from napari_pmt_iqa.metrics import iqa_metrics

KEYS = ("srcc", "plcc", "plcc_logistic", "krcc")


def test_metrics_of_a_monotonic_prediction():
    mos = np.array([2.5, 22.5, 52.5, 82.5, 90.0])
    out = iqa_metrics(mos / 10.0 + 1.0, mos)
    assert out["n"] == 5
    for k in KEYS:
        assert out[k] == pytest.approx(1.0, abs=1e-6), k


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_predictions_give_nan_metrics(bad):
    # scipy < 1.11 raises "array must not contain infs or NaNs" in pearsonr; a diverged model's
    # validation must still score NaN
    pred = np.array([1.0, bad, 3.0, 4.0])
    out = iqa_metrics(pred, [2.5, 22.5, 52.5, 82.5])
    assert out["n"] == 4
    assert all(math.isnan(out[k]) for k in KEYS), out
    out = iqa_metrics(np.full(4, np.nan), [2.5, 22.5, 52.5, 82.5])
    assert all(math.isnan(out[k]) for k in KEYS), out
