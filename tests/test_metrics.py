"""SRCC, PLCC (raw and after the 4-parameter logistic mapping) and KRCC."""

from __future__ import annotations

import numpy as np
import pytest

from napari_pmt_iqa.metrics import iqa_metrics, logistic4, plcc_logistic


def test_the_logistic_plcc_sees_through_a_monotonic_nonlinearity():
    rng = np.random.default_rng(0)
    x = rng.normal(size=400)
    mos = 60 * logistic4(x, 1.0, 0.0, 0.2, 0.4) + rng.normal(0, 1.0, 400)
    m = iqa_metrics(x, mos)
    assert m["plcc_logistic"] > m["plcc"] + 0.02  # the raw figure is hurt by the curve
    assert m["plcc_logistic"] == pytest.approx(plcc_logistic(x, mos))
    assert m["srcc"] > 0.9 and m["krcc"] > 0.7 and m["n"] == 400


def test_a_model_that_runs_the_wrong_way_keeps_its_negative_sign():
    rng = np.random.default_rng(1)
    x = rng.normal(size=200)
    mos = 3 * x + rng.normal(0, 1, 200)
    m = iqa_metrics(-x, mos)
    assert m["plcc"] < -0.9 and m["plcc_logistic"] < -0.9


def test_degenerate_inputs_give_nan():
    m = iqa_metrics([1.0, 1.0, 1.0], [1.0, 2.0, 3.0])
    assert all(np.isnan(m[k]) for k in ("srcc", "plcc", "plcc_logistic", "krcc"))
    with pytest.raises(ValueError):
        iqa_metrics([1.0, 2.0], [1.0])
