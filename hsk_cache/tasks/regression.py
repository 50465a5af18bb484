"""Regression (``problem_type="regression"``, one output): its metrics.

Pearson's r and Spearman's ρ (Pearson's r of the ranks, ties given their mean rank), as GLUE
reports them for STS-B, computed by ``scipy.stats``.
"""

from __future__ import annotations

import numpy as np

from hsk_cache.errors import DataError


def correlations(predictions, labels) -> dict[str, float]:
    """Pearson and Spearman correlation of predictions and gold scores.

    Args: predictions, labels: [N] float (any array-like), N ≥ 2.
    Returns: {"pearson": r, "spearman": ρ}, each in [−1, 1]; 0.0 where a side is constant (the
        correlation is undefined there: a model that predicts one value has learnt no ordering).
    Raises: DataError when the lengths differ, N < 2, or a value is not finite.
    """
    from scipy import stats  # imported here: ~1 s of every hsk process start otherwise

    x, y = np.asarray(predictions, dtype=np.float64).ravel(), np.asarray(labels, dtype=np.float64).ravel()
    if len(x) != len(y) or len(x) < 2:
        raise DataError(f"correlation needs two equal-length series of at least 2 values, got {len(x)} and {len(y)}")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise DataError("correlation of non-finite values (NaN or inf): check the labels and the model's outputs")
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return {"pearson": 0.0, "spearman": 0.0}
    return {"pearson": float(stats.pearsonr(x, y).statistic), "spearman": float(stats.spearmanr(x, y).statistic)}
