"""Extractive question answering (SQuAD v1.1 / v2.0): the official metrics.

``normalize_answer``, ``exact_match`` and ``f1`` follow the official SQuAD v2.0 evaluation script
(``evaluate-v2.0.py``; v1.1's is the same for non-empty answers): lower case, punctuation
removed, the articles a/an/the removed, whitespace collapsed; F1 over the bag of normalized
tokens; an empty answer (unanswerable, v2.0) matches only an empty prediction. Each prediction is
scored against its best gold answer. Scores here are fractions in [0, 1]; the official script
prints them × 100.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Mapping, Sequence

from hsk_cache.errors import DataError

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """Lower case, drop punctuation, drop articles, collapse whitespace (the official order)."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def _tokens(text: str) -> list[str]:
    return normalize_answer(text).split() if text else []


def exact_match(gold: str, predicted: str) -> int:
    """1 when the normalized strings are equal, else 0."""
    return int(normalize_answer(gold) == normalize_answer(predicted))


def f1(gold: str, predicted: str) -> float:
    """Token-bag F1 of the normalized answers; 1/0 by equality when either is empty."""
    g, p = _tokens(gold), _tokens(predicted)
    if not g or not p:
        return float(g == p)
    same = sum((Counter(g) & Counter(p)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(p), same / len(g)
    return 2 * precision * recall / (precision + recall)


def squad_metrics(predictions: Mapping[str, str], references: Mapping[str, Sequence[str]]) -> dict:
    """Exact match and F1 over questions, as the official v2.0 script computes them.

    Args:
        predictions: question id → predicted answer text ("" = no answer).
        references: question id → its gold answer texts (empty, or only answers that normalize
            to "", for an unanswerable v2.0 question).
    Returns: {"exact_match", "f1", "total"} and, when there are answerable / unanswerable
        questions, {"has_answer_exact_match", "has_answer_f1", "has_answer_total"} /
        {"no_answer_exact_match", "no_answer_f1", "no_answer_total"}.
    Raises: DataError naming a question without a prediction, or a prediction of no question.
    """
    missing, extra = set(references) - set(predictions), set(predictions) - set(references)
    if missing or extra:
        which = (
            f"no prediction for {sorted(missing)[:3]}" if missing else f"predictions of unknown ids {sorted(extra)[:3]}"
        )
        raise DataError(f"SQuAD predictions and references differ: {which}")
    scores = {"has_answer": [], "no_answer": []}
    for qid, answers in references.items():
        golds = [a for a in answers if normalize_answer(a)] or [""]
        pred = predictions[qid]
        row = (max(exact_match(a, pred) for a in golds), max(f1(a, pred) for a in golds))
        scores["has_answer" if golds != [""] else "no_answer"].append(row)
    every = scores["has_answer"] + scores["no_answer"]
    out = _mean(every, "")
    for part, rows in scores.items():
        if rows:
            out.update(_mean(rows, f"{part}_"))
    return out


def _mean(rows: list[tuple[int, float]], prefix: str) -> dict:
    n = len(rows)
    return {
        f"{prefix}exact_match": sum(r[0] for r in rows) / n if n else 0.0,
        f"{prefix}f1": sum(r[1] for r in rows) / n if n else 0.0,
        f"{prefix}total": n,
    }
