"""Correlation metrics of IQA: SRCC (Spearman), PLCC (Pearson) and KRCC (Kendall)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def iqa_metrics(pred: Sequence[float], mos: Sequence[float]) -> dict[str, float]:
    """SRCC, PLCC and KRCC between predictions and opinion scores.

    Returns NaN for each metric when fewer than 3 pairs exist or either side is constant.
    """
    from scipy import stats

    p = np.asarray(pred, dtype=np.float64)
    m = np.asarray(mos, dtype=np.float64)
    if p.shape != m.shape:
        raise ValueError(f"{p.shape[0]} predictions but {m.shape[0]} scores")
    out = {"srcc": float("nan"), "plcc": float("nan"), "krcc": float("nan"), "n": int(p.size)}
    if p.size < 3 or np.ptp(p) == 0 or np.ptp(m) == 0:
        return out
    out["srcc"] = float(stats.spearmanr(p, m)[0])
    out["plcc"] = float(stats.pearsonr(p, m)[0])
    out["krcc"] = float(stats.kendalltau(p, m)[0])
    return out
