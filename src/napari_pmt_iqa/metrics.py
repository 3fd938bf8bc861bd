"""Correlation metrics of IQA: SRCC (Spearman), PLCC (Pearson) and KRCC (Kendall).

Two PLCCs are reported, and they are not the same figure:

* ``plcc`` is the raw Pearson correlation of the predictions with the opinion scores, as the
  PMT-IQA authors' code (and HyperIQA's) computes it;
* ``plcc_logistic`` is the Pearson correlation after the predictions are mapped by the monotonic
  4-parameter logistic ``f(x) = (b1 - b2) / (1 + exp(-(x - b3) / |b4|)) + b2`` fitted to the opinion
  scores, as most IQA papers (VQEG) report it. It is never lower than the raw figure by more than the
  fit's numerical error, and usually a little higher; it keeps the sign of the raw figure.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np


def logistic4(x: np.ndarray, b1: float, b2: float, b3: float, b4: float) -> np.ndarray:
    """The 4-parameter logistic of VQEG: ``(b1 - b2) / (1 + exp(-(x - b3) / |b4|)) + b2``."""
    z = np.clip(-(x - b3) / max(abs(b4), 1e-12), -60.0, 60.0)
    return (b1 - b2) / (1.0 + np.exp(z)) + b2


def plcc_logistic(pred: Sequence[float], mos: Sequence[float]) -> float:
    """PLCC after the 4-parameter logistic mapping of ``pred`` onto ``mos`` (NaN if it fails)."""
    from scipy import optimize, stats

    p = np.asarray(pred, dtype=np.float64)
    m = np.asarray(mos, dtype=np.float64)
    if p.size < 5 or np.ptp(p) == 0 or np.ptp(m) == 0:
        return float("nan")
    raw = float(stats.pearsonr(p, m)[0])
    sign = 1.0 if raw >= 0 else -1.0
    p0 = [
        m.max() if sign > 0 else m.min(),
        m.min() if sign > 0 else m.max(),
        np.median(p),
        np.std(p) + 1e-9,
    ]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            params, _ = optimize.curve_fit(logistic4, p, m, p0=p0, maxfev=20000)
        fitted = logistic4(p, *params)
    except (RuntimeError, ValueError, optimize.OptimizeWarning):
        return float("nan")
    if not np.all(np.isfinite(fitted)) or np.ptp(fitted) == 0:
        return float("nan")
    # the mapping may be decreasing: keep the sign of the raw correlation, so that a model whose
    # scores run the wrong way still shows a negative figure
    return sign * abs(float(stats.pearsonr(fitted, m)[0]))


def iqa_metrics(
    pred: Sequence[float], mos: Sequence[float], logistic: bool = True
) -> dict[str, float]:
    """SRCC, PLCC (raw and after the logistic mapping) and KRCC between predictions and scores.

    ``logistic=False`` skips the logistic fit (``plcc_logistic`` is then NaN): a curve fit costs
    tens of milliseconds, too much for a measurement taken at every epoch of a quick fine-tune.

    Returns
    -------
    dict
        ``srcc``, ``plcc`` (raw Pearson), ``plcc_logistic`` (see the module docstring), ``krcc``
        and ``n``. Each metric is NaN when fewer than 3 pairs exist, either side is constant or
        holds a NaN or an infinity.
    """
    from scipy import stats

    p = np.asarray(pred, dtype=np.float64)
    m = np.asarray(mos, dtype=np.float64)
    if p.shape != m.shape:
        raise ValueError(f"{p.shape[0]} predictions but {m.shape[0]} scores")
    nan = float("nan")
    out = {"srcc": nan, "plcc": nan, "plcc_logistic": nan, "krcc": nan, "n": int(p.size)}
    if p.size < 3 or not (np.isfinite(p).all() and np.isfinite(m).all()):
        return out  # (scipy < 1.11 raises on NaN where later releases return NaN)
    if np.ptp(p) == 0 or np.ptp(m) == 0:
        return out
    out["srcc"] = float(stats.spearmanr(p, m)[0])
    out["plcc"] = float(stats.pearsonr(p, m)[0])
    if logistic:
        out["plcc_logistic"] = plcc_logistic(p, m)
    out["krcc"] = float(stats.kendalltau(p, m)[0])
    return out
