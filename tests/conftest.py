"""Shared fixtures: a tiny random BERT teacher with the bundled tokenizer, and small data files."""

from __future__ import annotations

import csv
import os
import random
from pathlib import Path

import pytest
import torch

from hsk_cache.models import hub as models

if os.environ.get("PYTEST_XDIST_WORKER"):  # `make test` runs three workers on two cores: one thread each
    torch.set_num_threads(1)

# The files holding the suite's longest tests (multi-process, 15-60 s each on 2 cores), longest
# first: collected first, so pytest-xdist starts them early and the short tests fill the workers
# at the end instead of one worker finishing a long test alone. With two workers a 2-core machine
# used 1.58 cores on average (waits on servers, timeouts and child processes); `make test` runs
# three: 491 s against 538-595 s for two on the same machine (one run each, 2026-12-03).
LONGEST_FIRST = (
    "test_bench_scale_out.py",
    "test_train_resume.py",
    "test_object_store.py",
    "test_general.py",
    "test_distributed.py",
    "test_faults.py",
    "test_api.py",
    "test_bench_extract.py",
    "test_bench_loader.py",
    "test_ablate.py",
    "test_object_store_faults.py",
)


def pytest_collection_modifyitems(config, items) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order


SHARED_GLUE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "glue"
WORDS = {
    "pos": "good great fine lovely superb happy bright warm".split(),
    "neg": "bad awful poor dreadful grim sad dark cold".split(),
}


def tiny_config(vocab_size: int, layers=2, hidden=32, heads=4, max_positions=128, **extra):
    """A tiny random BERT's config: ``layers`` × ``hidden`` wide, FFN 2 × hidden, ``extra`` fields."""
    from transformers import BertConfig

    return BertConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=2 * hidden,
        max_position_embeddings=max_positions,
        **extra,
    )


def tiny_bert(tokenizer, num_labels=2, layers=2, hidden=32, heads=4, seed=0, names=("neg", "pos")):
    from transformers import BertForSequenceClassification

    config = tiny_config(
        len(tokenizer),
        layers,
        hidden,
        heads,
        num_labels=num_labels,
        id2label=dict(enumerate(names)),
        label2id={n: i for i, n in enumerate(names)},
    )
    torch.manual_seed(seed)
    return BertForSequenceClassification(config).eval()


@pytest.fixture(scope="session")
def tokenizer():
    return models.load_tokenizer(models.BUNDLED_TEACHER)


@pytest.fixture(scope="session")
def tiny_teacher(tmp_path_factory, tokenizer) -> str:
    """A saved 2-layer, 32-wide random BERT classifier (classes neg/pos) with the bundled tokenizer."""
    out = tmp_path_factory.mktemp("tiny_teacher")
    models.save(tiny_bert(tokenizer), tokenizer, out)
    return str(out)


def write_rows(path: Path, rows: list[dict], delimiter=",") -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]), delimiter=delimiter)
        writer.writeheader()
        writer.writerows(rows)
    return path


def toy_rows(n: int, seed: int = 0) -> list[dict]:
    """n short sentences labelled neg/pos by their words; lengths vary from 3 to 20 words."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = "pos" if i % 2 else "neg"
        words = [rng.choice(WORDS[label]) for _ in range(rng.randint(3, 20))]
        rows.append({"text": " ".join(words), "label": label})
    return rows


@pytest.fixture(scope="session")
def toy_dir(tmp_path_factory) -> str:
    """A directory with train.csv (64 rows) and dev.csv (16 rows): columns text, label (neg/pos)."""
    out = tmp_path_factory.mktemp("toy")
    write_rows(out / "train.csv", toy_rows(64, seed=0))
    write_rows(out / "dev.csv", toy_rows(16, seed=1))
    return str(out)


def fails(capsys, argv, *needles) -> str:
    """Run the CLI expecting a usage error: exit 2, no traceback, and one stderr line naming every
    needle, the last one (progress lines off a terminal may precede it)."""
    from hsk_cache.cli import main

    capsys.readouterr()
    assert main(argv) == 2
    printed = capsys.readouterr().err
    # progress lines may come first (off a terminal, one line per refresh): the error is the last line, alone
    err = printed.strip().split("\r")[-1].strip().splitlines()[-1]
    assert err.startswith("hsk: error: ") and printed.count("hsk: error: ") == 1, printed
    assert "Traceback" not in printed, printed
    for needle in needles:
        assert needle in err, err
    return err


@pytest.fixture(scope="module")
def task_data(tmp_path_factory, tokenizer):
    """Generated data of every task type and a tiny teacher of each (``tests.task_data``)."""
    import json

    from hsk_cache.config.run import DataConfig
    from tests.task_data import scored_rows, squad_v2, tagged_sentences, tiny_task_model, topic_rows

    root = tmp_path_factory.mktemp("tasks")
    # VADER's layout: id, mean rating, text, tab-separated with a header, CRLF, named .txt
    with open(root / "ratings_GroundTruth.txt", "w", newline="") as handle:
        handle.write("id\tsentiment\ttext\r\n")
        for i, (text, score) in enumerate(scored_rows(48, seed=0)):
            handle.write(f"{i}_1\t{score}\t{text}\r\n")
    with open(root / "ner.conll", "w") as handle:
        for sentence in tagged_sentences(40, seed=1):
            handle.write("".join(f"{w}\t{t}\n" for w, t in sentence) + "\t\n")  # lone-tab separators, as WNUT
    with open(root / "topics.jsonl", "w") as handle:
        handle.write("".join(json.dumps(row) + "\n" for row in topic_rows(40, seed=2)))
    teachers = {}
    (root / "squad.json").write_text(json.dumps(squad_v2(seed=3)))
    for task in ("regression", "token_classification", "multi_label_classification", "question_answering"):
        teachers[task] = str(root / task)
        models.save(tiny_task_model(tokenizer, task), tokenizer, teachers[task])
    return {
        "regression": DataConfig(
            source=str(root / "ratings_GroundTruth.txt"), format="tsv", label_column="sentiment", max_length=32
        ),
        "token_classification": DataConfig(source=str(root / "ner.conll"), max_length=32),
        "question_answering": DataConfig(source=str(root / "squad.json"), max_length=48, doc_stride=12),
        "multi_label_classification": DataConfig(
            source=str(root / "topics.jsonl"), label_column="topics", max_length=32
        ),
        "teachers": teachers,
        "root": root,
    }
