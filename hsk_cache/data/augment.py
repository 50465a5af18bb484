"""``hsk augment``: TinyBERT's data augmentation (Jiao et al., 2020, Algorithm 1), written as Parquet
shards that ``hsk extract``, ``hsk train --online`` and ``hsk finetune`` read as a data source.

For each example, every replaceable word (``candidates.replaceable``) gets a candidate list once:
a word of one word piece takes the masked LM's top ``candidates`` predictions at its position
(``--mlm``); any other word, and every word when no masked LM is given, takes its ``candidates``
nearest neighbours in a word-embedding space (``--vectors``, else the teacher's input embeddings).
Then ``copies`` times: each word is replaced, with probability ``p``, by a uniformly drawn
candidate. Duplicates (and variants equal to the original) are dropped, the original is kept first,
so an example yields 1 to copies + 1 rows, all with its label.

Output directory ``out``::

    hsk_augment.json            settings, source fingerprint, layout, ``complete`` (written last)
    <split>/part-00000.parquet  rows of ``shard_examples`` source examples each; columns text,
                                [text_pair], label (ClassLabel), original_id (the source row), variant
                                (0 = the original); written whole under a temporary name, then renamed
    dev.parquet                 the source's dev split, unchanged, when it has one

Each source example draws from its own generator ``default_rng([seed, original_id])`` and each
shard runs the masked LM in the same batches, so the output is a function of the settings and the
source alone: a resumed run writes the same bytes as an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from hsk_cache.config.run import DataConfig, check_device, check_precision
from hsk_cache.data import splits
from hsk_cache.data.candidates import MaskedLM, Neighbours, Slot, Words, replaceable
from hsk_cache.errors import ConfigError, DataError
from hsk_cache.models import hub
from hsk_cache.outputs import OutputKind, OutputState, check_output_dir, check_writable, commit_file, write_text
from hsk_cache.version import __version__

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
PAIR_SIDES = ("both", "first", "second")
_IDENTITY = ("settings", "source", "split", "layout")  # the manifest fields a resumed run must match
AUGMENT_OUTPUT = OutputKind(
    "an augmentation", ConfigError, "is not empty and holds no augmented data: choose a new or empty directory"
)


@dataclass(frozen=True, kw_only=True)
class AugmentConfig:
    """Settings of one augmentation run; all but ``out``, ``overwrite`` and ``device`` decide its rows.

    pair_side: for sentence pairs, augment ``both`` texts in each variant, or only the ``first`` or
    ``second`` (the other kept verbatim). TinyBERT's released code augments each side in turn.
    """

    data: DataConfig
    out: str
    copies: int = 20
    p: float = 0.4
    candidates: int = 15
    mlm: str | None = None
    vectors: str | None = None
    teacher: str = hub.BUNDLED_TEACHER  # splits words without --mlm; its input embeddings without --vectors
    pair_side: str = "both"
    seed: int = 0
    shard_examples: int = 1000
    batch_size: int = 64
    precision: str = "fp32"
    device: str = "cpu"
    overwrite: bool = False

    def __post_init__(self) -> None:
        check_device(self.device)
        check_precision(self.precision, self.device)
        for name, value, low in (
            ("copies", self.copies, 1),
            ("candidates", self.candidates, 1),
            ("shard_examples", self.shard_examples, 1),
            ("batch_size", self.batch_size, 1),
        ):
            if value < low:
                raise ConfigError(f"{{{name}}} {value}: use a positive number", field=name, value=value)
        if not 0.0 < self.p <= 1.0:
            raise ConfigError(
                f"{{p}} {self.p}: use a replacement probability in (0, 1], e.g. 0.4 (TinyBERT's)",
                field="p",
                value=self.p,
            )
        if self.pair_side not in PAIR_SIDES:
            raise ConfigError(
                f"{{pair_side}} {self.pair_side!r}: use one of {', '.join(PAIR_SIDES)}",
                field="pair_side",
                value=self.pair_side,
            )

    def identity(self) -> dict:
        """The settings that decide the rows (a resumed run must match them)."""
        settings = asdict(self)
        for key in ("out", "overwrite", "device"):
            settings.pop(key)
        settings["data"].pop("max_length")
        return settings


@dataclass(frozen=True, kw_only=True)
class AugmentResult:
    """What ``run`` wrote.

    Attributes:
        out: the output directory.
        examples: source examples augmented.
        rows: rows in the output split in all, originals included (from every shard, also those
            written by an earlier run).
        shards_written: shards this run wrote.
        shards_skipped: shards already there and readable (a resumed run), not written again.
        word_paths: replaceable words counted by where their candidates came from, over all shards:
            ``mlm`` (the masked LM), ``neighbours`` (nearest neighbours in the embedding space),
            ``none`` (no candidate found; the word is kept).
        elapsed_s: wall-clock seconds of this run.
        neighbours_from: where the neighbour space came from: ``"vectors file PATH"`` or
            ``"input embeddings of PATH"`` (the teacher).
    """

    out: str
    examples: int
    rows: int
    shards_written: int
    shards_skipped: int
    word_paths: dict = field(default_factory=dict)
    elapsed_s: float = 0.0
    neighbours_from: str = ""


def run(config: AugmentConfig, progress=None) -> AugmentResult:
    """Augment ``config.data`` into ``config.out``, resuming a run cut short.

    Args:
        progress: optional bar factory ``(description, total, initial) -> tqdm-like``.
    Raises:
        ConfigError: ``out`` holds something else, or an augmentation with other settings
            (pass ``overwrite``). DataError / ModelError: unreadable source, vectors or hub.
    """
    started = time.perf_counter()
    check_writable(config.out, ConfigError)
    split = splits.load_split(config.data)
    pair = "text_pair" in split.dataset.column_names
    if config.pair_side != "both" and not pair:
        raise ConfigError(
            f"{{pair_side}} {config.pair_side}: {config.data.source!r} has one text per example; drop it",
            field="pair_side",
            value=config.pair_side,
        )
    manifest = _manifest(config, split, pair)
    words, mlm, neighbours = _candidate_sources(config)  # before writing anything: bad models or vectors fail here
    out = Path(config.out)
    _prepare_out(out, config, manifest)
    shards = manifest["layout"]["num_shards"]
    done = {i for i in range(shards) if _readable(_shard_path(out, config.data.split, i))}
    if config.data.split == "train":
        _write_dev(out, config, split.label_names, pair)
    features = _features(split.label_names, pair)
    n = len(split.dataset)
    bar = progress("augment", n, _examples_in(done, config.shard_examples, n)) if progress else None
    for shard in range(shards):
        if shard in done:
            continue
        start = shard * config.shard_examples
        rows = split.dataset[start : start + config.shard_examples]
        table, stats = _augment_shard(rows, start, config, pair, words, mlm, neighbours)
        _write_shard(_shard_path(out, config.data.split, shard), table, features, stats)
        if bar is not None:
            bar.update(len(rows["label"]))
    if bar is not None:
        bar.close()
    totals = _totals(out, config.data.split, shards)
    write_text(out / splits.AUGMENT_MANIFEST, json.dumps({**manifest, **totals, "complete": True}, indent=1))
    return AugmentResult(
        out=str(out),
        examples=len(split.dataset),
        rows=totals["rows"],
        shards_written=shards - len(done),
        shards_skipped=len(done),
        word_paths=totals["word_paths"],
        elapsed_s=time.perf_counter() - started,
        neighbours_from=neighbours.source,
    )


def sample_variants(sides: list[tuple[str, list[str], dict[int, tuple[str, ...]]] | str], copies: int, p: float, rng):
    """TinyBERT's Algorithm 1 sampling for one example.

    Args:
        sides: per text of the example, ``(text, words, {word index: candidates})`` to augment,
            or the text itself to keep verbatim.
        copies: tries; p: probability of replacing each word that has candidates.
        rng: a ``numpy.random.Generator``; per augmented side it draws, in order, [copies, n]
            uniforms for "replace?" and [copies, n] uniforms for "which candidate".
    Returns:
        the distinct variants (tuples of texts, one per side) that differ from the original, in
        the order they were drawn. A side with replacements is its words joined by spaces.
    """
    original = tuple(side if isinstance(side, str) else side[0] for side in sides)
    draws = []
    for side in sides:
        if isinstance(side, str):
            draws.append(None)
            continue
        n = len(side[2])
        draws.append((rng.random((copies, n)), rng.random((copies, n))))
    seen, variants = {original}, []
    for copy in range(copies):
        texts = []
        for side, draw in zip(sides, draws):
            if draw is None:
                texts.append(side)
                continue
            text, words, options = side
            replace, choose = draw
            new = list(words)
            for j, position in enumerate(sorted(options)):
                if replace[copy, j] < p:
                    candidates = options[position]
                    new[position] = candidates[int(choose[copy, j] * len(candidates))]
            texts.append(" ".join(new) if new != words else text)
        variant = tuple(texts)
        if variant not in seen:
            seen.add(variant)
            variants.append(variant)
    return variants


def _augment_shard(rows: dict, start: int, config: AugmentConfig, pair: bool, words, mlm, neighbours):
    """Candidates for every replaceable word of the shard's texts, then each example's variants."""
    columns = ["text", "text_pair"] if pair else ["text"]
    augmented = _augmented_columns(columns, config.pair_side)
    n = len(rows["label"])
    texts = [rows[c][i] for c in augmented for i in range(n)]  # side-major: side s of example i at s·n + i
    split_texts = [words(t) for t in texts]
    slots = [Slot(t, j) for t, ws in enumerate(split_texts) for j, w in enumerate(ws) if replaceable(w)]
    options, rest = mlm.candidates(split_texts, slots) if mlm else ({}, slots)
    stats = {"mlm": sum(1 for c in options.values() if c), "neighbours": 0, "none": 0}
    for slot in rest:
        found = neighbours.nearest(split_texts[slot.text][slot.word])
        options[slot] = found
        stats["neighbours" if found else "none"] += 1
    looked_up = set(rest)
    stats["none"] += sum(1 for s in slots if s not in looked_up and not options[s])
    per_text = [{} for _ in texts]
    for slot, found in options.items():
        if found:
            per_text[slot.text][slot.word] = found
    table = {c: [] for c in (*columns, "label", "original_id", "variant")}
    for i in range(n):
        sides = [
            (rows[c][i], split_texts[augmented.index(c) * n + i], per_text[augmented.index(c) * n + i])
            if c in augmented
            else rows[c][i]
            for c in columns
        ]
        original = tuple(rows[c][i] for c in columns)
        rng = np.random.default_rng([config.seed, start + i])
        for variant, values in enumerate([original, *sample_variants(sides, config.copies, config.p, rng)]):
            for c, value in zip(columns, values):
                table[c].append(value)
            table["label"].append(rows["label"][i])
            table["original_id"].append(start + i)
            table["variant"].append(variant)
    return table, stats


def _augmented_columns(columns: list[str], pair_side: str) -> list[str]:
    """The text columns to augment: all for ``both``, else the ``first`` or ``second``."""
    if pair_side == "both":
        return columns
    return [columns[PAIR_SIDES.index(pair_side) - 1]]


def _candidate_sources(config: AugmentConfig):
    """(word splitter, masked LM or None, neighbour space) for ``config``."""
    mlm = None
    if config.mlm:
        mlm = MaskedLM(config.mlm, config.candidates, config.batch_size, config.precision, config.device)
    else:
        log.info("no --mlm given: every word takes the nearest-neighbour path (TinyBERT's masked-LM path is off)")
    # the teacher's tokenizer splits words without an MLM and its embeddings give neighbours without vectors
    tokenizer = hub.load_tokenizer(config.teacher) if mlm is None or not config.vectors else None
    words = Words(mlm.tokenizer if mlm else tokenizer)
    if config.vectors:
        neighbours = Neighbours.from_vectors_file(config.vectors, config.candidates)
    else:
        neighbours = Neighbours.from_model_embeddings(config.teacher, tokenizer, config.candidates)
    return words, mlm, neighbours


def _manifest(config: AugmentConfig, split, pair: bool) -> dict:
    n = len(split.dataset)
    return {
        "format_version": FORMAT_VERSION,
        "hsk_cache_version": __version__,
        "settings": config.identity(),
        "source": {
            "examples": n,
            "sha256": _source_sha256(split.dataset, pair),
            "pair": pair,
            "task": split.task,
            "label_names": list(split.label_names),
        },
        "split": config.data.split,
        "layout": {"shard_examples": config.shard_examples, "num_shards": -(-n // config.shard_examples)},
        "complete": False,
    }


def _source_sha256(dataset, pair: bool) -> str:
    """sha256 over the source's texts and labels, in order."""
    digest = hashlib.sha256()
    columns = ["text", "text_pair", "label"] if pair else ["text", "label"]
    for rows in dataset.select_columns(columns).iter(batch_size=4096):
        digest.update(json.dumps([rows[c] for c in columns]).encode())
    return digest.hexdigest()


def _prepare_out(out: Path, config: AugmentConfig, manifest: dict) -> None:
    """Start, resume, or (``overwrite``) restart the output directory; refuse anything else."""
    identity = {key: manifest[key] for key in _IDENTITY}
    state = check_output_dir(
        out, AUGMENT_OUTPUT, marker=splits.AUGMENT_MANIFEST, identity=identity, read=_held, overwrite=config.overwrite
    )
    if state is OutputState.REPLACE:
        shutil.rmtree(out)
    (out / config.data.split).mkdir(parents=True, exist_ok=True)
    if state is not OutputState.SAME:
        write_text(out / splits.AUGMENT_MANIFEST, json.dumps(manifest, indent=1))


def _held(path: Path) -> dict:  # the identity of the augmentation that manifest ``path`` describes
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise DataError(
            f"{str(path)!r} is damaged ({err}): pass {{overwrite}} to augment again", field="overwrite"
        ) from None
    return {key: old.get(key) for key in _IDENTITY}


def _features(label_names, pair: bool):
    import datasets

    columns = {"text": datasets.Value("string")}
    if pair:
        columns["text_pair"] = datasets.Value("string")
    columns.update(
        label=datasets.ClassLabel(names=list(label_names)),
        original_id=datasets.Value("int64"),
        variant=datasets.Value("int32"),
    )
    return datasets.Features(columns)


def _shard_path(out: Path, split: str, shard: int) -> Path:
    return out / split / f"part-{shard:05d}.parquet"


def _write_shard(path: Path, table: dict, features, stats: dict) -> None:
    """Write one shard whole (Parquet with page checksums) under a temporary name, then rename."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = features.arrow_schema
    schema = schema.with_metadata({**schema.metadata, b"hsk_augment": json.dumps(stats).encode()})
    tmp = path.parent / f".tmp-{path.name}"
    pq.write_table(pa.Table.from_pydict(table, schema=schema), tmp, write_page_checksum=True)
    commit_file(tmp, path)


def _readable(path: Path) -> bool:
    """True for a shard that exists and reads back with valid page checksums; a damaged one is
    logged and written again."""
    import pyarrow.parquet as pq

    if not path.is_file():
        return False
    try:
        pq.read_table(path, page_checksum_verification=True)
        return True
    except Exception as err:  # pyarrow raises several types for damaged files
        log.warning("shard %s is damaged (%s): writing it again", path, err)
        return False


def _examples_in(done: set[int], shard_examples: int, n: int) -> int:
    return sum(min(shard_examples, n - shard * shard_examples) for shard in done)


def _totals(out: Path, split: str, shards: int) -> dict:
    """Rows and word-path counts of all shards, from their Parquet footers."""
    import pyarrow.parquet as pq

    rows, paths = 0, {"mlm": 0, "neighbours": 0, "none": 0}
    for shard in range(shards):
        meta = pq.read_metadata(_shard_path(out, split, shard))
        rows += meta.num_rows
        for key, value in json.loads(meta.metadata[b"hsk_augment"]).items():
            paths[key] += value
    return {"rows": rows, "word_paths": paths}


def _write_dev(out: Path, config: AugmentConfig, label_names, pair: bool) -> None:
    """Copy the source's dev split (unaugmented) so ``--split dev`` works on the output too."""
    from dataclasses import replace

    path = out / "dev.parquet"
    if path.is_file() or Path(config.data.source).expanduser().is_file():  # a single file has no dev split
        return
    try:
        dev = splits.load_split(replace(config.data, split="dev", limit=None), label_names=label_names)
    except DataError:
        log.info("the source has no dev split: %s gets none", out)
        return
    columns = ["text", "text_pair"] if pair else ["text"]
    n = len(dev.dataset)
    table = {c: dev.dataset[c] for c in columns}
    table.update(label=dev.dataset["label"], original_id=list(range(n)), variant=[0] * n)
    _write_shard(path, table, _features(label_names, pair), {"mlm": 0, "neighbours": 0, "none": 0})
