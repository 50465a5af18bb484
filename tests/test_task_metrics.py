"""The metrics of the task types beyond classification, against hand-worked cases: regression
correlations, multi-label F1, seqeval entity scores in both schemes, the official SQuAD EM/F1
(punctuation, articles, empty and unanswerable answers), and word-piece label alignment with the
bundled tokenizer."""

from __future__ import annotations

import math

import pytest

from hsk_cache.errors import ConfigError, DataError
from hsk_cache.tasks import multi_label, qa, regression, token_classification
from hsk_cache.tasks.token_classification import IGNORE


def test_pearson_and_spearman_by_hand_with_ties():
    assert regression.correlations([1, 2, 3], [2, 4, 6]) == pytest.approx({"pearson": 1.0, "spearman": 1.0})
    assert regression.correlations([1, 2, 3], [3, 2, 1]) == pytest.approx({"pearson": -1.0, "spearman": -1.0})
    # ranks of x with a tie: 1, 2.5, 2.5, 4; of y: 1, 3, 2, 4 → r of the ranks = 4.5 / sqrt(4.5 · 5)
    got = regression.correlations([1, 2, 2, 3], [1, 3, 2, 4])
    assert got["spearman"] == pytest.approx(4.5 / math.sqrt(4.5 * 5))
    # Pearson of x = (1, 2, 2, 3), y = (1, 3, 2, 4): deviations (−1, 0, 0, 1), (−1.5, .5, −.5, 1.5)
    assert got["pearson"] == pytest.approx(3 / math.sqrt(2 * 5))
    assert regression.correlations([2, 2, 2], [1, 2, 3]) == {"pearson": 0.0, "spearman": 0.0}
    with pytest.raises(DataError, match="at least 2"):
        regression.correlations([1], [1])
    with pytest.raises(DataError, match="non-finite"):
        regression.correlations([1, float("nan")], [1, 2])


def test_micro_and_macro_f1_by_hand():
    gold = [[1, 0, 1], [0, 1, 0]]
    pred = [[1, 1, 0], [0, 1, 0]]
    # pooled: TP 2 (n0 c0, n1 c1), FP 1 (n0 c1), FN 1 (n0 c2) → P = R = 2/3 → micro F1 = 2/3
    # per label: c0 F1 1; c1 P 1/2 R 1 → 2/3; c2 P 0/0 R 0 → 0 → macro = (1 + 2/3 + 0) / 3
    got = multi_label.f1_scores(pred, gold)
    assert got == pytest.approx({"micro_f1": 2 / 3, "macro_f1": (1 + 2 / 3) / 3})
    with pytest.raises(DataError, match="same shape"):
        multi_label.f1_scores([[1, 0]], [[1, 0, 1]])
    with pytest.raises(DataError, match="0/1"):
        multi_label.f1_scores([[2, 0]], [[1, 0]])


def test_entity_scores_in_both_schemes():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O"]]
    pred = [["B-PER", "I-PER", "O", "B-ORG"], ["B-ORG", "O"]]
    # gold entities PER(0-1), LOC(3), ORG; predicted PER(0-1), ORG(3), ORG: 2 of 3 right each way
    assert token_classification.entity_metrics(gold, pred) == pytest.approx(
        {"precision": 2 / 3, "recall": 2 / 3, "f1": 2 / 3}
    )
    # a boundary error is a whole miss: PER(0) predicted for PER(0-1)
    assert token_classification.entity_metrics([["B-PER", "I-PER"]], [["B-PER", "O"]])["f1"] == 0.0
    # a stray I-PER starts an entity for conlleval, is no entity in strict IOB2
    stray = [["I-PER", "I-PER", "O"]]
    assert token_classification.entity_metrics([["B-PER", "I-PER", "O"]], stray)["f1"] == 1.0
    strict = token_classification.entity_metrics([["B-PER", "I-PER", "O"]], stray, scheme="IOB2")
    assert strict == {"precision": 0.0, "recall": 0.0, "f1": 0.0}
    with pytest.raises(ConfigError, match="BILOU"):
        token_classification.entity_metrics(gold, pred, scheme="BILOU")
    with pytest.raises(DataError, match="differ"):
        token_classification.entity_metrics(gold, [["O"]])


def test_word_piece_alignment_labels_the_first_piece_only(tokenizer):
    words, tags = ["Hello", "tokenization", "!"], [3, 5, 0]
    encoded = tokenizer(words, is_split_into_words=True)
    assert encoded.tokens() == ["[CLS]", "hello", "token", "##ization", "!", "[SEP]"]
    aligned = token_classification.align_labels(encoded.word_ids(), tags)
    assert aligned == [IGNORE, 3, 5, IGNORE, 0, IGNORE]
    assert token_classification.word_predictions([9, 3, 5, 7, 0, 9], aligned) == [3, 5, 0]
    # truncation cuts the last word: its tag simply has no token
    short = tokenizer(words, is_split_into_words=True, truncation=True, max_length=4)
    assert token_classification.align_labels(short.word_ids(), tags) == [IGNORE, 3, 5, IGNORE]
    with pytest.raises(DataError, match="2 tagged words"):
        token_classification.align_labels(encoded.word_ids(), tags[:2])


def test_squad_normalization_exact_match_and_f1_by_the_official_rules():
    assert qa.normalize_answer("The  Cat, sat!") == "cat sat"
    assert qa.normalize_answer("an apple a day") == "apple day"
    assert qa.normalize_answer("theatre") == "theatre"  # articles only as whole words
    assert qa.exact_match("the cat", "A cat.") == 1
    assert qa.exact_match("Denver Broncos", "Broncos") == 0
    assert qa.f1("cat", "the big cat") == pytest.approx(2 / 3)  # P 1/2, R 1
    assert qa.f1("big cat sat", "cat sat down") == pytest.approx(2 / 3)  # 2 common of 3 and 3
    assert qa.f1("cat", "dog") == 0.0
    assert qa.f1("", "") == 1.0 and qa.f1("", "cat") == 0.0 and qa.f1("cat", "") == 0.0
    assert qa.f1("the", "") == 1.0  # "the" normalizes to nothing: an empty answer


def test_squad_v2_metrics_take_the_best_gold_and_split_answerable_questions():
    references = {
        "q1": ["Denver Broncos", "the Broncos"],  # answerable, two gold answers
        "q2": [],  # unanswerable
        "q3": ["1990s"],
        "q4": [],
    }
    predictions = {"q1": "Broncos", "q2": "", "q3": "the 1990s.", "q4": "a cat"}
    got = qa.squad_metrics(predictions, references)
    # q1: EM 1 against "the Broncos"; q2: EM 1; q3: EM 1 (article and period go); q4: 0
    assert got["exact_match"] == 0.75 and got["f1"] == 0.75 and got["total"] == 4
    assert got["has_answer_exact_match"] == 1.0 and got["has_answer_total"] == 2
    assert got["no_answer_exact_match"] == 0.5 and got["no_answer_total"] == 2
    partial = qa.squad_metrics({"q": "Denver"}, {"q": ["Denver Broncos"]})
    assert partial["exact_match"] == 0 and partial["f1"] == pytest.approx(2 / 3)
    assert "no_answer_total" not in partial
    with pytest.raises(DataError, match="no prediction"):
        qa.squad_metrics({}, {"q": ["x"]})
