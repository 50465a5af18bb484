import numpy as np

from hsk_cache.training.evaluate import matthews_corrcoef


def test_binary_mcc_matches_the_confusion_matrix_formula():
    labels = np.array([1, 1, 1, 0, 0, 0, 1, 0])
    preds = np.array([1, 0, 1, 0, 1, 0, 1, 0])
    tp, tn, fp, fn = 3, 3, 1, 1
    expected = (tp * tn - fp * fn) / np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    assert abs(matthews_corrcoef(labels, preds, 2) - expected) < 1e-12


def test_mcc_edge_cases():
    y = np.array([0, 1, 2, 2])
    assert matthews_corrcoef(y, y, 3) == 1.0
    assert matthews_corrcoef(y, np.zeros(4, dtype=int), 3) == 0.0  # constant predictions
