"""Cache layout: array names, shapes, dtypes and chunking, and the manifest's identity. Pure.

Every array is chunked along N (examples). A shard holds ``shard_examples`` rows and is the unit
of writing (written whole, then committed in ``shard_committed``); a chunk holds
``chunk_examples`` rows and is the unit of reading.

| array            | shape            | dtype             | content                                  |
|------------------|------------------|-------------------|------------------------------------------|
| input_ids        | [N, T]           | int32             | token ids, pad id after ``lengths``       |
| token_type_ids   | [N, T]           | int8              | segment ids (if the tokenizer makes them) |
| lengths          | [N]              | int32             | real tokens per example                   |
| labels           | [N]              | int64             | gold label ids                            |
| example_ids      | [N]              | int64             | row in the source split                   |
| token_index      | [N, L_k, K]      | int16             | kept positions, −1 = none                 |
| hidden_states    | [N, L_k, K, D]   | float32/float16   | teacher states at kept positions          |
| logits           | [N, C]           | float32           | teacher logits                            |
| shard_committed  | [S]              | uint8             | 1 once shard s is fully written           |
| tokenizer/<file> | [bytes]          | uint8             | the teacher tokenizer's files             |

The group attribute ``hsk_cache`` holds the JSON manifest; its ``complete`` is set last.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

FORMAT_NAME = "hsk-cache"
FORMAT_VERSION = 1
COMMIT_ARRAY = "shard_committed"
TARGET_CHUNK_BYTES = 1 << 20  # 1 MiB of the widest array per chunk: cheap contiguous reads
TARGET_SHARD_BYTES = 32 << 20  # 32 MiB per shard: one write, a bounded amount of work lost on a kill
MAX_CHUNK_EXAMPLES = 1024
IDENTITY_KEYS = (
    "format_version", "teacher.weights_sha256", "data.fingerprint", "max_length", "spec", "precision", "layout",
)


@dataclass(frozen=True)
class ArraySpec:
    name: str
    shape: tuple[int, ...]
    dtype: str
    compress: bool  # zstd for ids (mostly padding); raw for float knowledge (compresses ~1.08×)

    def row_bytes(self) -> int:
        itemsize = {"int8": 1, "uint8": 1, "int16": 2, "float16": 2, "int32": 4, "float32": 4, "int64": 8}[self.dtype]
        return itemsize * math.prod(self.shape[1:])


@dataclass(frozen=True)
class Dims:
    """Sizes fixed at extraction: N examples, T max length, L_k layers, K tokens, D width, C classes."""

    n: int
    t: int
    layers: int
    k: int
    d: int
    c: int
    token_types: bool
    knowledge: tuple[str, ...]
    dtype: str


def arrays(dims: Dims) -> list[ArraySpec]:
    """The arrays a cache of these sizes holds (without shard_committed)."""
    out = [
        ArraySpec("input_ids", (dims.n, dims.t), "int32", True),
        ArraySpec("lengths", (dims.n,), "int32", True),
        ArraySpec("labels", (dims.n,), "int64", True),
        ArraySpec("example_ids", (dims.n,), "int64", True),
    ]
    if dims.token_types:
        out.append(ArraySpec("token_type_ids", (dims.n, dims.t), "int8", True))
    if "hidden_states" in dims.knowledge:
        out.append(ArraySpec("token_index", (dims.n, dims.layers, dims.k), "int16", True))
        out.append(ArraySpec("hidden_states", (dims.n, dims.layers, dims.k, dims.d), dims.dtype, False))
    if "logits" in dims.knowledge:
        out.append(ArraySpec("logits", (dims.n, dims.c), "float32", False))
    return out


def chunking(specs: list[ArraySpec], n: int, shard_examples: int | None = None) -> tuple[int, int]:
    """(chunk_examples, shard_examples): powers of two sized by the widest row, shard a multiple of chunk.

    An explicit ``shard_examples`` (a power of two) is honoured, its chunk at most that size.
    """
    widest = max(spec.row_bytes() for spec in specs)
    chunk = _pow2_floor(max(1, TARGET_CHUNK_BYTES // widest))
    chunk = min(chunk, MAX_CHUNK_EXAMPLES, _pow2_ceil(n))
    if shard_examples is None:
        shard_examples = max(chunk, _pow2_floor(max(1, TARGET_SHARD_BYTES // widest)))
        shard_examples = min(shard_examples, max(chunk, _pow2_ceil(n)))
    return min(chunk, shard_examples), shard_examples


def shard_range(shard: int, n: int, shard_examples: int) -> tuple[int, int]:
    start = shard * shard_examples
    return start, min(n, start + shard_examples)


def num_shards(n: int, shard_examples: int) -> int:
    return math.ceil(n / shard_examples)


def identity(manifest: dict) -> dict:
    """The manifest fields that must match for a writer to resume into an existing cache."""
    out = {}
    for key in IDENTITY_KEYS:
        value = manifest
        for part in key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        out[key] = value
    return out


def full_hidden_bytes(num_layers: int, max_length: int, hidden_size: int) -> int:
    """Bytes per example of all float32 hidden states: [L+1, T, D] × 4, T = max length."""
    return (num_layers + 1) * max_length * hidden_size * 4


def _pow2_floor(x: int) -> int:
    return 1 << (max(1, int(x)).bit_length() - 1)


def _pow2_ceil(x: int) -> int:
    return 1 << max(0, (max(1, int(x)) - 1).bit_length())
