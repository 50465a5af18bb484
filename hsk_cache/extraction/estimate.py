"""Predict a cache's stored bytes before running the teacher (``hsk extract --dry-run``).

Uncompressed arrays are sized exactly (plus each shard's chunk index). Compressed id arrays are
compressed for real in memory, chunk by chunk (the token ids are known before the teacher runs).
Index arrays are synthesized from the example lengths (their −1 padding is what compresses).
Compressed float knowledge compresses as a sample of it does: the caller runs the teacher on a
few examples and passes their encoded rows; without a sample, ``FLOAT_RATIO`` (1.08×, measured on
real float16 hidden states with zstd) is assumed for the kept rows and padding rows vanish.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numcodecs import Blosc, Zstd

from hsk_cache.knowledge.batch import Examples
from hsk_cache.knowledge.kind import ArraySpec
from hsk_cache.knowledge.plan import Plan

ARRAY_METADATA_BYTES = 700  # one array's zarr.json
GROUP_METADATA_BYTES = 6000  # the group's zarr.json with the manifest (teacher config included)
SHARD_INDEX_BYTES_PER_CHUNK = 16  # offset + length, uint64 each
CHUNK_CHECKSUM_BYTES = 4  # the crc32c every chunk ends in
FLOAT_RATIO = 1.08


@dataclass(frozen=True)
class Estimate:
    """A predicted cache size. Attributes: arrays: bytes on disk per array name; total_bytes:
    all of them with metadata and commit rows; examples: N."""

    arrays: dict[str, int]
    total_bytes: int
    examples: int

    @property
    def bytes_per_example(self) -> float:
        """total_bytes / N."""
        return self.total_bytes / max(self.examples, 1)


def estimate(
    specs: list[ArraySpec],
    examples: Examples,
    plan: Plan,
    chunks: dict[str, int],
    shard: int,
    sample: dict[str, np.ndarray] | None = None,
) -> Estimate:
    """Predicted bytes of every array (metadata included; the tokenizer copy excluded, as in
    ``CacheReader.stored_bytes``).

    Args:
        specs: the cache's arrays (``store.layout.arrays``); each ``ArraySpec.role`` (declared by
            its knowledge kind) says how its compressed bytes scale.
        examples: the tokenized examples. plan: the resolved ``Plan``. chunks / shard: the layout.
        sample: encoded knowledge rows of a few examples, from which compressed float arrays
            take their compression ratio.
    Returns: an ``Estimate`` in bytes.
    """
    n, tokens = len(examples), plan.spec.tokens
    kept = _kept_counts(examples, plan.kept_tokens, tokens)
    ordered = tokens.kind in ("all", "cls", "left")  # index positions ascending, else scattered
    shards = math.ceil(n / shard)
    sizes = {}
    for spec in specs:
        if not spec.per_example:
            sizes[spec.name] = spec.nbytes() + CHUNK_CHECKSUM_BYTES + ARRAY_METADATA_BYTES
            continue
        chunk = chunks[spec.name]
        chunks_per_shard = shard // chunk
        index_bytes = shards * (chunks_per_shard * (SHARD_INDEX_BYTES_PER_CHUNK + CHUNK_CHECKSUM_BYTES) + 4)
        if sample is not None and spec.codec != "none" and spec.name in sample:
            rows = sample[spec.name]
            ratio = rows.nbytes / max(1, _compressed(rows, chunk, spec.codec))
            data = int(spec.nbytes() / ratio)
        else:
            data = _data_bytes(spec, examples, n, plan, kept, chunk, ordered)
        sizes[spec.name] = data + index_bytes + ARRAY_METADATA_BYTES
    per_example = sum(spec.per_example for spec in specs)  # commit rows: (bytes, crc32c) uint64 per array
    commit = shards * (per_example * 16 + CHUNK_CHECKSUM_BYTES) + ARRAY_METADATA_BYTES
    total = sum(sizes.values()) + commit + GROUP_METADATA_BYTES
    return Estimate(sizes, total, n)


def _data_bytes(spec: ArraySpec, examples: Examples, n: int, plan, kept: np.ndarray, chunk: int, ordered: bool) -> int:
    if spec.codec == "none":  # Zarr stores the edge chunk at full size
        return spec.nbytes() // max(n, 1) * math.ceil(n / chunk) * chunk
    if spec.role == "example":
        return _compressed(getattr(examples, spec.name), chunk)
    if spec.role == "index":
        return _compressed(_synthetic_index(spec.shape, kept, ordered), chunk)
    # float knowledge: the rows of kept tokens are incompressible, padding rows vanish
    if spec.role == "real_tokens":
        return int(spec.nbytes() * float(np.mean(examples.lengths)) / plan.max_length / FLOAT_RATIO)
    fraction = kept.sum() / max(n * plan.kept_tokens, 1)
    if spec.role == "key_rows":  # rows over all T keys: only the real ones hold values
        fraction *= float(np.mean(examples.lengths)) / plan.max_length
    return int(spec.nbytes() * fraction / FLOAT_RATIO)


def _kept_counts(examples: Examples, k: int, tokens) -> np.ndarray:
    """[N] tokens each example keeps (padding and, unless +sep, one [SEP] never kept)."""
    lengths = examples.lengths.astype(np.int64)
    if tokens.kind == "all":
        return np.minimum(lengths, k)
    if tokens.kind == "cls":
        return np.ones_like(lengths)
    per = (
        np.full_like(lengths, tokens.k)
        if tokens.k is not None
        else np.maximum(1, np.ceil(lengths * tokens.percent / 100))
    )
    eligible = lengths - (0 if tokens.with_sep else 1)
    return np.minimum(per, eligible).astype(np.int64)


def _synthetic_index(shape: tuple[int, ...], kept: np.ndarray, ordered: bool) -> np.ndarray:
    """Positions with the real −1 padding; ascending for all/cls/left, scattered for topk/random."""
    n, k = shape[0], shape[-1]
    positions = (
        np.arange(k)[None, :]
        if ordered
        else np.random.default_rng(0).permuted(np.tile(np.arange(4 * k), (n, 1)), axis=1)[:, :k]
    )
    index = np.where(np.arange(k)[None, :] < kept[:, None], positions, -1).astype(np.int16)
    middle = shape[1:-1]
    return np.broadcast_to(index.reshape(n, *([1] * len(middle)), k), shape)


def _compressed(values: np.ndarray, chunk: int, codec_name: str = "zstd") -> int:
    """Bytes of ``values`` compressed chunk by chunk as the writer does (writer.compressors)."""
    codec = Blosc(cname="zstd", clevel=3, shuffle=Blosc.SHUFFLE) if codec_name == "blosc" else Zstd(level=3)
    return sum(len(codec.encode(np.ascontiguousarray(values[i : i + chunk]))) for i in range(0, len(values), chunk))
