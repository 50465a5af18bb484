"""The columns and labels of a loaded split, per task type (``tasks.types``), and the
tokenization the task types beyond classification need.

``data.splits`` finds the rows (files, GLUE, augmentations, the hub); this module turns them into
the columns every path reads: text/text_pair and ``label`` as class ids (classification), float32
scores (regression), multi-hot float32 lists (multi-label), or per-word tag ids with ``tokens``
(token classification); question answering keeps the SQuAD columns (``SQUAD_COLUMNS``) and is
tokenized into doc-stride features (``tokenize_questions``). ``task_type_of`` infers the task
type from the columns where ``DataConfig.task_type`` does not name it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from hsk_cache.config.run import DataConfig
from hsk_cache.errors import DataError
from hsk_cache.tasks import qa, token_classification, types
from hsk_cache.version import __version__

log = logging.getLogger(__name__)

TOKEN_COLUMNS = ("tokens", "words")  # token classification: the words of a sentence
TAG_COLUMNS = ("tags", "ner_tags", "labels")  # and their tags (strings or ids)
SQUAD_COLUMNS = ("id", "question", "context", "answers", "answer_starts")  # question answering (tasks.qa)
LABEL_SET_SEPARATOR = "|"  # multi-label: a CSV/TSV label cell "sports|politics" holds two labels


def task_type_of(config: DataConfig, split, label_column: str | None) -> types.TaskType:
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
    if column in columns and not str(getattr(split.features[column], "dtype", "")).startswith(("int", "uint")):
        # (ClassLabel and integer columns are classes); unique() on the one column: on a selection
        # of rows datasets would first copy every column (BBC News: ~50 ms of texts)
        values = [v for v in split.select_columns([column]).unique(column) if not is_empty(v)]
        if values and all(isinstance(v, float) for v in values) and not all(v.is_integer() for v in values):
            return types.REGRESSION
    return types.CLASSIFICATION


def _pick(columns, given, candidates) -> str | None:
    """The column named by ``given`` (the first one of a tuple) or the first of ``candidates`` present."""
    if given:
        name = given[0] if isinstance(given, tuple) else given
        return name if name in columns else None
    return next((c for c in candidates if c in columns), None)


def normalize_scores(split, text_columns, label_column, source):
    """Regression: rename to text/text_pair/label, labels float32, drop rows without text or score."""
    import datasets

    split = text_and_label(split, text_columns, label_column, source)
    split, dropped = drop_empty(split, source)
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


def normalize_questions(split, source):
    """Question answering: the SQuAD columns (``SQUAD_COLUMNS``) as they are; no label names."""
    missing = [c for c in SQUAD_COLUMNS if c not in split.column_names]
    if missing:
        raise DataError(
            f"{source!r} has no column(s) {missing}: question answering reads SQuAD v1.1/v2.0 JSON "
            "(set {data_format} squad for a file not named .json)",
            field="data_format",
        )
    return split.select_columns(list(SQUAD_COLUMNS)), (), 0


def normalize_label_sets(split, text_columns, label_column, label_names, source):
    """Multi-label: rename to text/text_pair/label, each label set (a list, or a string of names
    joined by ``LABEL_SET_SEPARATOR``) as a multi-hot float32 list over ``label_names`` (the
    model's, else the sorted union). Rows without text are dropped; an empty set is kept (no label)."""
    import datasets

    split = text_and_label(split, text_columns, label_column, source)
    sets = [
        [str(v) for v in value]
        if isinstance(value, list)
        else [v.strip() for v in str(value or "").split(LABEL_SET_SEPARATOR) if v.strip()]
        for value in split["label"]
    ]
    texts = split.select_columns([c for c in ("text", "text_pair") if c in split.column_names]).to_dict()
    kept = np.flatnonzero([all(not is_empty(v[i]) for v in texts.values()) for i in range(len(split))])
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


def normalize_tags(split, config: DataConfig, label_names, source):
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


def is_squad(file: Path) -> bool:
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


def text_and_label(split, text_columns, label_column, source):
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


def normalize_classes(split, text_columns, label_column, label_names, source):
    """Rename to text/text_pair/label, map string labels to ids, drop rows without text or label."""
    import datasets

    split = text_and_label(split, text_columns, label_column, source)
    split, dropped = drop_empty(split, source)
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


def is_empty(value) -> bool:
    """None, NaN, or a string of only whitespace."""
    if isinstance(value, str):
        return not value.strip()
    return value is None or (isinstance(value, float) and np.isnan(value))


def drop_empty(split, source: str):
    """Drop rows whose label or text (or text_pair) is empty, with a warning saying how many.

    Returns: (the kept rows, the number dropped).
    """
    columns = split.select_columns([c for c in ("label", "text", "text_pair") if c in split.column_names]).to_dict()
    no_label = np.array([is_empty(v) for v in columns.pop("label")], dtype=bool)
    no_text = np.zeros(len(split), dtype=bool)
    for values in columns.values():
        no_text |= np.array([is_empty(v) for v in values], dtype=bool)
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


def question_examples(dataset) -> list[qa.QAExample]:
    """The ``tasks.qa.QAExample`` of each row of a question-answering split's dataset."""
    return [
        qa.QAExample(r["id"], r["question"], r["context"], tuple(r["answers"]), tuple(r["answer_starts"]))
        for r in dataset
    ]


def tokenize_questions(dataset, tokenizer, max_length: int, doc_stride: int | None):
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


def tokenize_words(dataset, tokenizer, max_length: int):
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

    return dataset.map(
        encode,
        batched=True,
        remove_columns=["tokens"],
        desc="tokenize",
        new_fingerprint=map_fingerprint(dataset, tokenizer, encode, max_length=max_length),
    )


def read_squad_dataset(file: Path):
    """A SQuAD v1.1/v2.0 file (``tasks.qa.read_squad``) as a ``datasets.Dataset`` of ``SQUAD_COLUMNS``."""
    import datasets

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


def map_fingerprint(dataset, tokenizer, encode, **params) -> str | None:
    """The ``new_fingerprint`` of ``dataset.map(encode, ...)``, where ``encode`` tokenizes with
    ``tokenizer`` and ``params`` (``max_length``, ...) are the rest of what it depends on.

    - A dataset held in memory (generated splits, ``Dataset.from_dict``): a random one. datasets never caches
      a map of it, so the name is read by nothing.
    - A dataset read from files: a hash of the dataset's fingerprint, the tokenizer's state (its
      class, the fast tokenizer's serialized pipeline without the truncation and padding a call
      sets, ``init_kwargs``, padding and truncation sides), ``encode``'s code and ``params``.
      datasets names its on-disk cache file with it and reuses that file on a rerun, as with its
      own fingerprint (which hashes the same function code); its own pickles the whole tokenizer
      to get there: ~0.45 s for the bundled MiniLM's, per call, on a 64-row CSV as on SST-2,
      where this takes ~10 ms.
    - None (datasets' own) for a file-backed dataset and a tokenizer without a serialized fast
      pipeline (a slow, Python tokenizer).
    """
    from datasets.fingerprint import Hasher, generate_random_fingerprint

    if not dataset.cache_files:
        return generate_random_fingerprint()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    pipeline = _pipeline_without_call_settings(backend.to_str())
    state = (
        type(tokenizer).__module__,
        type(tokenizer).__qualname__,
        pipeline,
        sorted((key, repr(value)) for key, value in tokenizer.init_kwargs.items()),
        tokenizer.padding_side,
        tokenizer.truncation_side,
    )
    return Hasher.hash([dataset._fingerprint, state, encode.__code__, sorted(params.items()), __version__])


_CALL_SETTINGS = {"version", "truncation", "padding"}


def _pipeline_without_call_settings(serialized: str) -> str:
    """A fast tokenizer's serialized pipeline without the truncation and padding that the last
    call set (the first call that truncates changes them; every call sets its own). tokenizers
    writes them first, before ``added_tokens``: that head is cut off when it holds nothing else;
    otherwise they are dropped from the parsed JSON (~0.25 s to write it back sorted, on the
    bundled MiniLM's)."""
    head, marker, rest = serialized.partition(',"added_tokens":')
    if marker:
        try:
            if set(json.loads(head + "}")) <= _CALL_SETTINGS:
                return marker + rest
        except ValueError:
            pass
    pipeline = json.loads(serialized)
    for key in _CALL_SETTINGS - {"version"}:
        pipeline.pop(key, None)
    return json.dumps(pipeline, sort_keys=True)
