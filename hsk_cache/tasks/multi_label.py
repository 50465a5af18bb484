"""Multi-label classification (``problem_type="multi_label_classification"``): its metrics.

Micro F1 pools every (example, label) decision; macro F1 is the mean of the per-label F1s, a
label with no gold and no predicted positive counting as F1 = 0 (``zero_division=0``), as
scikit-learn's ``f1_score`` defines them.
"""

from __future__ import annotations

import numpy as np

from hsk_cache.errors import DataError


def f1_scores(predictions, labels) -> dict[str, float]:
    """Micro and macro F1 of label sets.

    Args: predictions, labels: [N, C] of 0/1 (bool or int): label c is in example n's set.
    Returns: {"micro_f1": ..., "macro_f1": ...} in [0, 1].
    Raises: DataError when the shapes differ or are not [N, C], or a value is not 0/1.
    """
    from sklearn.metrics import f1_score  # imported here: ~1.9 s of every hsk process start otherwise

    p, y = np.asarray(predictions), np.asarray(labels)
    if p.shape != y.shape or p.ndim != 2:
        raise DataError(f"label sets must be two [N, C] arrays of the same shape, got {p.shape} and {y.shape}")
    for name, a in (("predictions", p), ("labels", y)):
        if not np.isin(a, (0, 1)).all():
            raise DataError(f"multi-label {name} must be 0/1 per (example, label)")
    p, y = p.astype(np.int64), y.astype(np.int64)
    return {
        "micro_f1": float(f1_score(y, p, average="micro", zero_division=0)),
        "macro_f1": float(f1_score(y, p, average="macro", zero_division=0)),
    }
