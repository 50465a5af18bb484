"""``hsk extract``: run the teacher once over a split and write its selected knowledge to a cache."""

from __future__ import annotations

import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hsk_cache import distributed, outputs
from hsk_cache.config.run import DataConfig, check_device, check_precision
from hsk_cache.data import splits
from hsk_cache.data.sources import check_corpus_knowledge, check_task, load_teacher, read_examples
from hsk_cache.errors import CacheError, ConfigError, HskError
from hsk_cache.extraction import estimate
from hsk_cache.knowledge.batch import Examples, batches_of, collate, length_sorted
from hsk_cache.knowledge.plan import Plan
from hsk_cache.knowledge.spec import ExtractSpec
from hsk_cache.models import hub
from hsk_cache.models.teacher import HostCopy, run_teacher, teacher_knowledge
from hsk_cache.select import SELECTION_VERSION
from hsk_cache.store import layout
from hsk_cache.store.lease import WriterLease
from hsk_cache.store.location import Location
from hsk_cache.store.manifest import DataInfo, DimsInfo, LayoutInfo, Manifest, SpecInfo, TeacherInfo, TokenizerInfo
from hsk_cache.store.reader import TOKENIZER_GROUP
from hsk_cache.store.verify import check_group
from hsk_cache.store.writer import CacheWriter, file_records, tokenizer_files
from hsk_cache.version import __version__

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class ExtractConfig:
    """Everything ``hsk extract`` does (``extract(config)``).

    Attributes:
        teacher: a saved model directory, a hub name, or ``minilm-l6`` (the bundled teacher).
        data: the split to extract (``DataConfig``). out: the cache's path or fsspec URL.
        spec: what to keep and how to store it (``ExtractSpec``).
        batch_size: examples per teacher forward (≥ 1).
        sort_by_length: batch each shard's examples longest first (``knowledge.batch.length_sorted``)
            instead of in stored order, so a batch pads to its own examples' length: on 4,096 of
            SST-2's training sentences (128 tokens, batch 32, shards of 256) the teacher forwards
            1.27 tokens per real token instead of 3.01, and extraction runs 1.89x faster
            (``benchmarks/sort_by_length.py``). The cache keeps the stored order; its floats can
            differ from a stored-order extraction's in the last bits (a row's result depends on its
            place in a batch's matrix products: 2e-9 in fp32 logits), so the default is off.
        precision: teacher autocast, ``fp32`` (the reference), ``bf16`` or ``fp16`` (CUDA).
        overwrite: replace a cache of another identity at ``out`` (never something that is not a cache).
        shard_examples: examples per shard, a power of two; None sizes shards to about 32 MiB.
        device: ``cpu``, ``cuda`` or ``cuda:N``.
        storage_options: fsspec options of an ``out`` URL (endpoint, credentials); never stored.
    Raises: ConfigError naming the field and value, at construction.
    """

    teacher: str
    data: DataConfig
    out: str
    spec: ExtractSpec = field(default_factory=ExtractSpec)
    batch_size: int = 32
    sort_by_length: bool = False
    precision: str = "fp32"
    overwrite: bool = False
    shard_examples: int | None = None
    device: str = "cpu"
    storage_options: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_device(self.device)
        check_precision(self.precision, self.device)
        self.spec.tokens.check(self.data.max_length)
        if self.batch_size < 1:
            raise ConfigError(
                f"{{batch_size}} {self.batch_size}: use at least 1", field="batch_size", value=self.batch_size
            )
        s = self.shard_examples
        if s is not None and (s < 1 or s & (s - 1)):
            raise ConfigError(
                f"{{shard_examples}} {s}: use a power of two such as 256", field="shard_examples", value=s
            )


@dataclass(frozen=True, kw_only=True)
class ExtractResult:
    """What an extraction did.

    Attributes:
        manifest: the finished cache's ``Manifest``. shards_written: shards this run wrote
            (repaired ones included). shards_skipped: shards already committed (resumed).
        elapsed_s: wall-clock seconds. shards_repaired: damaged shards found and rewritten.
    """

    manifest: Manifest
    shards_written: int
    shards_skipped: int
    elapsed_s: float
    shards_repaired: int = 0


@dataclass
class Prepared:
    """Everything extraction decides before running the teacher."""

    tokenizer: object
    teacher: object | None  # None for a dry run: only the config is loaded
    teacher_config: object
    split: splits.Split | None  # None on ranks > 0 of a torchrun job (rank 0 tokenizes for all)
    tokenized: object | None
    examples: Examples
    plan: Plan
    specs: list
    chunk: dict[str, int]
    shard: int
    # the tokenizer files the cache stores (``writer.tokenizer_files``), saved as loaded: before
    # tokenizing, which leaves truncation state in the tokenizer (set or not as datasets' cache answered)
    stored_tokenizer: dict[str, bytes] = field(default_factory=dict)


def prepare(
    config: ExtractConfig, load_weights: bool = True, device: str | None = None, examples: Examples | None = None
) -> Prepared:
    """Load tokenizer, teacher (or only its config, onto ``device``), data; resolve the spec;
    size the arrays. ``examples``: already tokenized ones (from rank 0 of a torchrun job).

    Raises: ModelError, DataError, ConfigError.
    """
    tokenizer = hub.load_tokenizer(config.teacher)
    stored_tokenizer = tokenizer_files(tokenizer)  # ~6 ms
    if load_weights:
        teacher = load_teacher(config.teacher, config.data, config.spec).to(device or config.device)
        teacher_config = teacher.config
    else:
        check_corpus_knowledge(config.data, config.spec)
        teacher, teacher_config = None, hub.load_config(config.teacher)
    hub.check_max_length(teacher_config, config.data.max_length)
    split = tokenized = None
    plan = Plan.make(config.spec, teacher_config, tokenizer, config.data.max_length)
    if examples is None:
        names = None if config.data.corpus else hub.task_label_names_of_config(teacher_config)
        split, tokenized, examples = read_examples(config.data, tokenizer, names)
        if split is not None:
            check_task(split, teacher_config)
        examples = plan.prepare_examples(examples, tokenizer)  # static masks (mlm): both models see them
    specs = layout.arrays(plan, len(examples), examples.token_type_ids is not None)
    chunk, shard = layout.chunking(specs, len(examples), config.shard_examples)
    return Prepared(
        tokenizer, teacher, teacher_config, split, tokenized, examples, plan, specs, chunk, shard, stored_tokenizer
    )


def run(config: ExtractConfig, progress=None) -> ExtractResult:
    """Extract: prepare, open (or resume) the cache, re-extract damaged shards, write missing
    shards, finish.

    A rerun on an existing cache of the same identity first verifies every committed shard
    (size and crc32c of each file, see ``store.verify``) and re-extracts the bad ones (repair).
    Under ``torchrun`` (WORLD_SIZE > 1) the ranks share the work: rank 0 tokenizes, hashes the
    weights, creates (or verifies) the cache and sends the examples to the others; the missing
    shards are dealt out round-robin, each rank runs the teacher on its own device and writes
    its own whole shards; rank 0 marks the cache complete after a barrier. The cache is the
    same bytes as a one-process extraction's, whatever the rank count that wrote or resumed it.

    progress: optional factory ``progress(description, total, initial)`` returning a bar with
    ``update(n)`` and ``close()`` (a tqdm bar, for instance), counted in examples (rank 0's).
    Raises: ModelError, DataError, ConfigError, CacheError (before anything is written), and
    CacheError when the storage fails mid-way (disk full, permissions): committed shards are
    kept, so rerunning the same command resumes.
    """
    started = time.perf_counter()
    rank = distributed.init(config.device)
    try:
        return _run(config, rank, progress, started)
    except OSError as err:
        if isinstance(err, HskError):  # DataNotFoundError is a FileNotFoundError too
            raise
        reason = err.strerror or type(err).__name__
        raise CacheError(
            f"writing the cache {config.out!r} failed: {reason} ({err.filename or 'storage'}); shards "
            "committed so far are kept: fix the storage (free space, permissions) and rerun the same "
            "command to resume"
        ) from None


def _run(config: ExtractConfig, rank: distributed.Rank, progress, started: float) -> ExtractResult:
    device = rank.device(config.device)
    writer, committed, repaired = None, None, []
    if rank.is_main:
        failure, lease = None, None
        try:
            location = Location.of(config.out, config.storage_options)
            if location.local:
                outputs.check_writable(location.root, CacheError)
            location.sidecar(layout.LEASE_SUFFIX)  # the lease needs a place beside the cache: not a bucket's root
            lease = WriterLease.acquire(location)  # before the teacher and the data: a second run is told at once
            with ThreadPoolExecutor(max_workers=1, thread_name_prefix="hsk-weights-hash") as side:
                # the weights are hashed while the teacher loads and the data is tokenized (file
                # reads and sha256 release the GIL)
                weights = side.submit(hub.weights_sha256, hub.resolve(config.teacher))
                p = prepare(config, device=device)
                run_teacher(p.teacher, collate(p.examples, np.arange(1)), p.plan, config.precision)  # fails early
                weights_sha256 = weights.result()
            stored_tokenizer = p.stored_tokenizer
            manifest = _manifest(config, p, stored_tokenizer, weights_sha256)
            writer = CacheWriter.open(location, manifest, p.specs, config.overwrite, lease=False)
            writer.lease, lease = lease, None  # the writer releases it from now on
            repaired = _repair(writer, progress) if writer.resumed else []
            writer.write_tokenizer(stored_tokenizer)  # as loaded (``Prepared.stored_tokenizer``)
            if p.plan.dim_index is not None:
                writer.write_global("dim_index", p.plan.dim_index.astype(np.int16))
            committed = writer.committed()
        except BaseException as err:
            failure = f"rank 0 failed: {err}"
            if writer is not None:
                writer.close()
            if lease is not None:
                lease.release()
            raise
        finally:
            if rank.enabled:  # the other ranks wait for the cache, or for the reason there is none
                distributed.broadcast_json({"failure": failure})
                if failure is None:
                    distributed.broadcast_arrays(_arrays(p.examples))
                    distributed.broadcast_arrays({"committed": committed})
    else:
        failure = distributed.broadcast_json()["failure"]
        if failure is not None:
            raise CacheError(failure)
        examples = _examples(distributed.broadcast_arrays())
        committed = distributed.broadcast_arrays()["committed"]
        p = prepare(config, device=device, examples=examples)
        writer = CacheWriter.join(config.out, config.storage_options)
    try:
        mine = np.flatnonzero(~committed)[rank.rank :: rank.world_size]
        _write_shards(writer, p, config, mine, committed, progress)
        distributed.barrier()
        final = writer.finish({"examples": len(p.examples), "shards": len(committed)}) if rank.is_main else None
        final = Manifest.from_dict(distributed.broadcast_json(final.to_dict() if final is not None else None))
    finally:
        writer.close()
    return ExtractResult(
        manifest=final,
        shards_written=int((~committed).sum()),
        shards_skipped=int(committed.sum()),
        elapsed_s=time.perf_counter() - started,
        shards_repaired=len(repaired),
    )


def _arrays(examples: Examples) -> dict:
    fields = ("input_ids", "token_type_ids", "lengths", "labels", "example_ids")
    return {**{f: getattr(examples, f) for f in fields}, **{f"extra.{k}": v for k, v in examples.extra.items()}}


def _examples(arrays: dict) -> Examples:
    """Inverse of ``_arrays`` (rank 0's examples on the other ranks)."""
    extra = {k.removeprefix("extra."): v for k, v in arrays.items() if k.startswith("extra.")}
    return Examples(**{k: v for k, v in arrays.items() if not k.startswith("extra.")}, extra=extra)


def _write_shards(writer: CacheWriter, p: Prepared, config, shards, committed, progress) -> None:
    """Run the teacher on ``shards`` and write each whole shard (the bar counts this process's part)."""
    n = len(p.examples)
    total = sum(_shard_size(s, n, p.shard) for s in shards)
    done = sum(_shard_size(s, n, p.shard) for s in np.flatnonzero(committed))
    bar = progress("extract", total + done, done) if progress is not None else None
    # with the teacher on an accelerator, one writer thread: shard s is compressed, written and
    # committed while the teacher runs shard s + 1 (at most one shard waits; a write's error is
    # raised here before the next). On the CPU the teacher's threads use every core and a writer
    # thread only competes with them (measured: no gain), so writes run inline there.
    pending = None
    try:
        with _shard_writer(p.teacher.device.type != "cpu" if OVERLAP_WRITES is None else OVERLAP_WRITES) as pool:
            for s in shards:
                start, stop = layout.shard_range(int(s), n, p.shard)
                block = _extract_shard(p, start, stop, config, bar)
                if pending is not None:
                    pending.result()
                pending = pool.submit(writer.write_shard, int(s), start, block)
            if pending is not None:
                pending.result()
    finally:
        if bar is not None:
            bar.close()


OVERLAP_WRITES: bool | None = None  # None: a writer thread when the teacher is not on the CPU (tests force it)


class _Inline:
    """The executor interface, running each write at once in the caller's thread (its error is
    raised at once, before the next shard's teacher pass)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None

    def submit(self, fn, *args) -> Future:
        done = Future()
        done.set_result(fn(*args))
        return done


def _shard_writer(overlap: bool):
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="hsk-shard-writer") if overlap else _Inline()


def _repair(writer: CacheWriter, progress) -> list[int]:
    """Verify the committed shards of a reopened cache; uncommit the bad ones. Returns them."""
    problems, _, _ = check_group(writer.group, writer.manifest, progress)
    bad = sorted({p.shard for p in problems if p.shard is not None})
    for p in problems:
        log.warning("damaged: shard %s of %s: %s", p.shard, p.array, p.problem)
    writer.uncommit(bad)
    return bad


DRY_RUN_SAMPLE = 64


def dry_run(config: ExtractConfig) -> estimate.Estimate:
    """Predict the stored bytes of ``config`` without writing anything. Uncompressed specs need
    only the teacher's config; with a compressing codec the teacher runs on the first
    ``DRY_RUN_SAMPLE`` examples to measure how its knowledge compresses."""
    sample_needed = config.spec.codec != "none"
    p = prepare(config, load_weights=sample_needed)
    sample = None
    if sample_needed:
        sample = _extract_shard(p, 0, min(DRY_RUN_SAMPLE, len(p.examples)), config, None)
    return estimate.estimate(p.specs, p.examples, p.plan, p.chunk, p.shard, sample)


def _shard_size(shard: int, n: int, shard_examples: int) -> int:
    start, stop = layout.shard_range(int(shard), n, shard_examples)
    return stop - start


def _extract_shard(p: Prepared, start, stop, config, bar) -> dict[str, np.ndarray]:
    examples, plan = p.examples, p.plan
    rows = np.arange(start, stop)
    block = {
        "input_ids": examples.input_ids[rows],
        "lengths": examples.lengths[rows],
        "labels": examples.labels[rows],
        "example_ids": examples.example_ids[rows],
    }
    if examples.token_type_ids is not None:
        block["token_type_ids"] = examples.token_type_ids[rows]
    parts, pending = [], None
    order = length_sorted(examples.lengths, start, stop) if config.sort_by_length else np.arange(start, stop)
    for index in batches_of(order, config.batch_size):
        # selection on the teacher's device; only the selected tensors are copied to the host, and
        # batch i is encoded (padded, quantized) while the device runs batch i + 1
        copied = HostCopy(teacher_knowledge(p.teacher, collate(examples, index), plan, config.precision))
        if pending is not None:
            parts.append(plan.encode(pending.wait()))
        pending = copied
        if bar is not None:
            bar.update(len(index))
    if pending is not None:
        parts.append(plan.encode(pending.wait()))
    stored = np.argsort(order, kind="stable") if config.sort_by_length else slice(None)  # rows back in stored order
    for name in parts[0]:
        block[name] = np.concatenate([part[name] for part in parts])[stored]
    return block


def _task_type(split) -> dict:
    """{"task_type": the split's} beyond classification (inferred or given), else {} (so a
    classification cache's manifest is what it was before task types existed)."""
    return {"task_type": split.task_type} if split is not None and split.task_type != "classification" else {}


def _manifest(config: ExtractConfig, p: Prepared, stored_tokenizer: dict[str, bytes], weights_sha256: str) -> Manifest:
    """The typed manifest of the cache ``config`` writes (``complete`` False, no counts yet);
    ``stored_tokenizer``: the tokenizer files the cache stores (``writer.tokenizer_files``);
    ``weights_sha256``: ``hub.weights_sha256`` of the teacher."""
    tokenizer, split, plan, n = p.tokenizer, p.split, p.plan, len(p.examples)
    teacher_path = hub.resolve(config.teacher)
    source = Path(config.data.source).expanduser()
    return Manifest(
        format=layout.FORMAT_NAME,
        format_version=layout.FORMAT_VERSION,
        hsk_cache_version=__version__,
        selection_version=SELECTION_VERSION,
        teacher=TeacherInfo(
            path=str(Path(teacher_path).resolve()) if Path(teacher_path).exists() else teacher_path,
            weights_sha256=weights_sha256,
            num_layers=p.teacher_config.num_hidden_layers,
            hidden_size=p.teacher_config.hidden_size,
            num_heads=p.teacher_config.num_attention_heads,
            config=p.teacher_config.to_dict(),
        ),
        tokenizer=TokenizerInfo(
            group=TOKENIZER_GROUP,
            name_or_path=tokenizer.name_or_path,
            vocab_size=len(tokenizer),
            files=file_records(stored_tokenizer),
        ),
        data=DataInfo(
            **{**config.data.describe(), **_task_type(split)},
            task=split.task if split is not None else (config.data.source if not source.exists() else None),
            fingerprint=splits.fingerprint(p.tokenized),
            resolved_source=str(source.resolve()) if source.exists() else config.data.source,
            num_examples=n,
            label_names=split.label_names if split is not None else (),
        ),
        max_length=config.data.max_length,
        spec=SpecInfo(**config.spec.describe()),
        layers=plan.layers,
        attention_layers=plan.attention_layers,
        value_relation_layer=plan.value_relation_layer,
        dims=DimsInfo(
            kept_tokens=plan.kept_tokens,
            hidden_size=plan.hidden_size,
            kept_dims=plan.kept_dims,
            slots=plan.slots,
            heads=plan.heads,
            classes=plan.classes,
            token_types=p.examples.token_type_ids is not None,
        ),
        precision=config.precision,
        layout=LayoutInfo(chunk_examples=p.chunk, shard_examples=p.shard, num_shards=layout.num_shards(n, p.shard)),
        counts={},
        complete=False,
        kinds=plan.manifest_kinds(),
    )
