"""Extractive question answering (SQuAD v1.1 / v2.0): reading SQuAD JSON, doc-stride features,
the post-processing of start/end logits to answer spans, and the official metrics.

Features (``make_features``) follow transformers' ``run_qa.py``: the question first, the context
second and truncated only there (``truncation="only_second"``), contexts longer than a feature
split into overlapping windows that share ``doc_stride`` tokens, each feature keeping the
character offsets of its context tokens and the example it came from. Post-processing
(``postprocess``) is that script's: for every feature of an example the ``n_best`` highest start
and end logits are paired, spans outside the context, reversed or longer than
``max_answer_length`` tokens are skipped, and the highest start + end logit wins; with
``version_2`` the null answer (start = end = [CLS]; its lowest score over the features) wins
when it beats the best span by more than ``null_threshold``.

``normalize_answer``, ``exact_match`` and ``f1`` follow the official SQuAD v2.0 evaluation script
(``evaluate-v2.0.py``; v1.1's is the same for non-empty answers): lower case, punctuation
removed, the articles a/an/the removed, whitespace collapsed; F1 over the bag of normalized
tokens; an empty answer (unanswerable, v2.0) matches only an empty prediction. Each prediction is
scored against its best gold answer. Scores here are fractions in [0, 1]; the official script
prints them × 100.
"""

from __future__ import annotations

import json
import re
import string
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hsk_cache.errors import ConfigError, DataError, DataNotFoundError

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


@dataclass(frozen=True)
class QAExample:
    """One SQuAD question: ``answers`` the gold texts with their character ``answer_starts`` in
    ``context`` (both empty for an unanswerable v2.0 question)."""

    id: str
    question: str
    context: str
    answers: tuple[str, ...]
    answer_starts: tuple[int, ...]


def read_squad(path: str | Path) -> list[QAExample]:
    """The questions of a SQuAD v1.1 or v2.0 JSON file, in file order.

    The format: ``{"data": [{"title", "paragraphs": [{"context", "qas": [{"id", "question",
    "answers": [{"text", "answer_start"}], "is_impossible"}]}]}]}`` (``is_impossible``: v2.0; its
    ``plausible_answers`` are not gold answers and are ignored).
    Raises: DataNotFoundError; DataError naming the file and the first malformed question (a
    missing field, or an answer whose text is not at its ``answer_start`` in the context).
    """
    path = Path(path)
    if not path.is_file():
        raise DataNotFoundError(f"no SQuAD file at {str(path)!r}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))["data"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as err:
        raise DataError(f'{str(path)!r} is not SQuAD JSON (a top-level "data" list): {err}') from None
    out = []
    for article in data:
        for paragraph in article.get("paragraphs", []):
            context = paragraph.get("context")
            for qa in paragraph.get("qas", []):
                qid = qa.get("id")
                if not isinstance(context, str) or not isinstance(qa.get("question"), str) or qid is None:
                    raise DataError(f"{str(path)!r}: question {qid!r} lacks its id, question or context")
                answers = [] if qa.get("is_impossible") else qa.get("answers", [])
                texts, starts = [], []
                for a in answers:
                    text, start = a.get("text"), a.get("answer_start")
                    if (
                        not isinstance(text, str)
                        or not isinstance(start, int)
                        or context[start : start + len(text)] != text
                    ):
                        raise DataError(
                            f"{str(path)!r}: question {qid!r} has an answer {text!r} that is not at character {start} "
                            "of its context"
                        )
                    texts.append(text)
                    starts.append(start)
                out.append(QAExample(str(qid), qa["question"], context, tuple(texts), tuple(starts)))
    if not out:
        raise DataError(f"{str(path)!r} holds no questions")
    return out


@dataclass(frozen=True)
class QAFeatures:
    """F features of E examples.

    input_ids, token_type_ids: F lists of token ids (unpadded; token_type_ids None when the
    tokenizer makes none). example_index: [F] int64, the example of each feature. offsets: F lists
    of (start, end) character offsets into the example's context, None for tokens outside it.
    start_positions, end_positions: [F] int64 token index of the first answer's first and last
    token, 0 ([CLS]) when the answer is not wholly inside the feature or there is none (the
    training targets of run_qa.py).
    """

    input_ids: list[list[int]]
    token_type_ids: list[list[int]] | None
    example_index: np.ndarray
    offsets: list[list[tuple[int, int] | None]]
    start_positions: np.ndarray
    end_positions: np.ndarray

    def __len__(self) -> int:
        return len(self.input_ids)


def make_features(examples: Sequence[QAExample], tokenizer, max_length: int, doc_stride: int) -> QAFeatures:
    """Question + context windows of at most ``max_length`` tokens (module docstring).

    Args: examples: from ``read_squad``; tokenizer: a fast tokenizer (offsets needed);
        max_length: tokens per feature; doc_stride: tokens consecutive windows share.
    Returns: ``QAFeatures``.
    Raises: ConfigError when the tokenizer is not a fast one, or ``doc_stride`` leaves no room.
    """
    if not getattr(tokenizer, "is_fast", False):
        raise ConfigError("extractive QA needs a fast tokenizer (character offsets): load it with use_fast=True")
    if not 0 <= doc_stride < max_length // 2:
        raise ConfigError(
            f"{{doc_stride}} {doc_stride} must be at least 0 and below half of max length {max_length}",
            field="doc_stride",
        )
    encoded = tokenizer(
        [e.question.lstrip() for e in examples],
        [e.context for e in examples],
        truncation="only_second",
        max_length=max_length,
        stride=doc_stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
    )
    example_index = np.asarray(encoded["overflow_to_sample_mapping"], dtype=np.int64)
    offsets, starts, ends = [], [], []
    for f in range(len(encoded["input_ids"])):
        sequence = encoded.sequence_ids(f)
        feature_offsets = [tuple(o) if s == 1 else None for o, s in zip(encoded["offset_mapping"][f], sequence)]
        offsets.append(feature_offsets)
        example = examples[example_index[f]]
        start = end = 0
        if example.answers:
            first, last = example.answer_starts[0], example.answer_starts[0] + len(example.answers[0])
            context = [i for i, o in enumerate(feature_offsets) if o is not None]
            if context and feature_offsets[context[0]][0] <= first and feature_offsets[context[-1]][1] >= last:
                start = next(i for i in context if feature_offsets[i][1] > first)
                end = next(i for i in reversed(context) if feature_offsets[i][0] < last)
        starts.append(start)
        ends.append(end)
    types = encoded.get("token_type_ids")
    return QAFeatures(
        encoded["input_ids"], types, example_index, offsets, np.asarray(starts, np.int64), np.asarray(ends, np.int64)
    )


def postprocess(
    examples: Sequence[QAExample],
    features: QAFeatures,
    start_logits: Sequence[np.ndarray],
    end_logits: Sequence[np.ndarray],
    *,
    n_best: int = 20,
    max_answer_length: int = 30,
    version_2: bool = False,
    null_threshold: float = 0.0,
) -> dict[str, str]:
    """Answer texts from per-feature logits (module docstring).

    Args:
        examples, features: as ``make_features`` made them.
        start_logits, end_logits: per feature, [T_f] float (T_f its tokens; the teacher's or the
            student's ``start_logits`` / ``end_logits``, padding cut off).
        n_best: start and end candidates per feature. max_answer_length: in tokens.
        version_2: allow the null answer (""); null_threshold: how much the null score must
            beat the best span by (run_qa.py's ``null_score_diff_threshold``).
    Returns: question id → answer text ("" for no answer).
    Raises: DataError when the logits do not match the features in count or length.
    """
    if len(start_logits) != len(features) or len(end_logits) != len(features):
        raise DataError(f"{len(features)} features but {len(start_logits)} start and {len(end_logits)} end logit rows")
    best: dict[int, tuple[float, str]] = {}
    null: dict[int, float] = {}
    for f in range(len(features)):
        starts, ends = np.asarray(start_logits[f], np.float64), np.asarray(end_logits[f], np.float64)
        offsets = features.offsets[f]
        if len(starts) != len(offsets) or len(ends) != len(offsets):
            raise DataError(f"feature {f} has {len(offsets)} tokens but {len(starts)} start / {len(ends)} end logits")
        e = int(features.example_index[f])
        null[e] = min(null.get(e, np.inf), starts[0] + ends[0])
        context = examples[e].context
        for s in np.argsort(-starts, kind="stable")[:n_best]:
            for t in np.argsort(-ends, kind="stable")[:n_best]:
                if offsets[s] is None or offsets[t] is None or t < s or t - s + 1 > max_answer_length:
                    continue
                score = starts[s] + ends[t]
                if e not in best or score > best[e][0]:
                    best[e] = (score, context[offsets[s][0] : offsets[t][1]])
    out = {}
    for e, example in enumerate(examples):
        span = best.get(e)
        if version_2 and (span is None or null.get(e, -np.inf) - span[0] > null_threshold):
            out[example.id] = ""
        else:
            out[example.id] = span[1] if span is not None else ""
    return out
