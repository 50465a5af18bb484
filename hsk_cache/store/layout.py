"""Cache layout: array names, shapes, dtypes and chunking, and the manifest's identity. Pure.

Every array is chunked along N (examples). A shard holds ``shard_examples`` rows and is the unit
of writing (written whole, then committed in ``shard_commits``); each array's chunk (about
1 MiB of its rows) is the unit of reading. Every chunk ends in a crc32c (zarr's ``crc32c`` codec),
so no Zarr reader can decode a damaged chunk as data; each shard's commit row records the size
and crc32c of every file the shard wrote, so ``hsk verify`` finds missing, truncated or damaged
shard files without decoding them.

| array            | shape            | dtype             | content                                  |
|------------------|------------------|-------------------|------------------------------------------|
| input_ids        | [N, T]           | int32             | token ids, pad id after ``lengths``       |
| token_type_ids   | [N, T]           | int8              | segment ids (if the tokenizer makes them) |
| lengths          | [N]              | int32             | real tokens per example                   |
| labels           | [N]              | int64             | gold label ids                            |
| example_ids      | [N]              | int64             | row in the source split                   |
| token_index      | [N, L_k, K]      | int16             | kept positions, −1 = none                 |
| hidden_states    | [N, L_k, K, D']  | stored dtype (q)  | states at kept tokens (D' = D or kept dims)|
| dim_index        | [D']             | int16             | kept dimensions (uniform/random width)    |
| hidden_values    | [N, L_k, M]      | q                 | magnitude width: kept values, row-major   |
| hidden_mask      | [N, L_k, K, D/8] | uint8             | magnitude width: packed bit mask          |
| attention_index  | [N, L_a, K]      | int16             | kept query positions per attention layer  |
| attention_probs  | [N, L_a, H, K, T]| q                 | attention rows of kept queries, all keys  |
| value_index      | [N, K]           | int16             | kept query positions (value relation)     |
| value_relation   | [N, H, K, T]     | q                 | softmax(V·Vᵀ/√d_head) rows (MiniLM)       |
| logits           | [N, C]           | float32           | teacher logits                            |
| *_scale          | leading axes     | float32           | int8 only: per-row absmax / 127           |
| shard_commits    | [S, A, 2]        | uint64            | per array: shard file bytes, crc32c; 0 = uncommitted |
| tokenizer/<file> | [bytes]          | uint8             | the teacher tokenizer's files             |

The group attribute ``hsk_cache`` holds the JSON manifest; its ``complete`` is set last.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from hsk_cache.knowledge import quantize

FORMAT_NAME = "hsk-cache"
FORMAT_VERSION = 2  # 2: crc32c per chunk, commit rows with per-file sizes and checksums
COMMIT_ARRAY = "shard_commits"
LEASE_SUFFIX = ".hsk-writer.json"  # the writer lease (store.lease) sits beside the cache: <cache>.hsk-writer.json
TARGET_CHUNK_BYTES = 1 << 20  # 1 MiB of the widest array per chunk: cheap contiguous reads
TARGET_SHARD_BYTES = 32 << 20  # 32 MiB per shard: one write, a bounded amount of work lost on a kill
IDENTITY_KEYS = (
    "format_version",
    "selection_version",
    "teacher.weights_sha256",
    "data.fingerprint",
    "max_length",
    "spec",
    "precision",
    "layout",
)


ITEMSIZE = {"int8": 1, "uint8": 1, "int16": 2, "uint16": 2, "float16": 2, "int32": 4, "float32": 4, "int64": 8}


@dataclass(frozen=True)
class ArraySpec:
    """One stored array. ``codec``: none, zstd or blosc. ``per_example``: chunked along N (False
    for small global arrays such as dim_index, stored as one chunk)."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    codec: str
    per_example: bool = True

    def row_bytes(self) -> int:
        return ITEMSIZE[self.dtype] * math.prod(self.shape[1:])

    def nbytes(self) -> int:
        return ITEMSIZE[self.dtype] * math.prod(self.shape)


@dataclass(frozen=True)
class Dims:
    """Sizes fixed at extraction. n examples, t max length, layers L_k, k kept tokens, d hidden
    width, kept_dims D' (uniform/random width), slots M (magnitude values per example-layer),
    attention_layers L_a, heads H, c classes."""

    n: int
    t: int
    layers: int
    k: int
    d: int
    c: int
    token_types: bool
    knowledge: tuple[str, ...]
    dtype: str
    codec: str = "none"
    width: str = "all"
    kept_dims: int = 0
    slots: int = 0
    attention_layers: int = 0
    heads: int = 0


def arrays(dims: Dims) -> list[ArraySpec]:
    """The arrays a cache of these sizes holds (without shard_committed and the tokenizer)."""
    n, q = dims.n, quantize.STORAGE_DTYPE[dims.dtype]
    int8 = quantize.needs_scale(dims.dtype)
    out = [
        ArraySpec("input_ids", (n, dims.t), "int32", "zstd"),
        ArraySpec("lengths", (n,), "int32", "zstd"),
        ArraySpec("labels", (n,), "int64", "zstd"),
        ArraySpec("example_ids", (n,), "int64", "zstd"),
    ]
    if dims.token_types:
        out.append(ArraySpec("token_type_ids", (n, dims.t), "int8", "zstd"))
    if "hidden_states" in dims.knowledge:
        out.append(ArraySpec("token_index", (n, dims.layers, dims.k), "int16", "zstd"))
        if dims.width == "magnitude":
            out.append(ArraySpec("hidden_values", (n, dims.layers, dims.slots), q, dims.codec))
            out.append(ArraySpec("hidden_mask", (n, dims.layers, dims.k, math.ceil(dims.d / 8)), "uint8", dims.codec))
            if int8:
                out.append(ArraySpec("hidden_values_scale", (n, dims.layers), "float32", dims.codec))
        else:
            width = dims.kept_dims if dims.width in ("uniform", "random") else dims.d
            out.append(ArraySpec("hidden_states", (n, dims.layers, dims.k, width), q, dims.codec))
            if int8:
                out.append(ArraySpec("hidden_states_scale", (n, dims.layers, dims.k), "float32", dims.codec))
            if dims.width in ("uniform", "random"):
                out.append(ArraySpec("dim_index", (width,), "int16", "zstd", per_example=False))
    if "attention_probs" in dims.knowledge:
        out.append(ArraySpec("attention_index", (n, dims.attention_layers, dims.k), "int16", "zstd"))
        out.append(ArraySpec("attention_probs", (n, dims.attention_layers, dims.heads, dims.k, dims.t), q, dims.codec))
        if int8:
            out.append(
                ArraySpec(
                    "attention_probs_scale", (n, dims.attention_layers, dims.heads, dims.k), "float32", dims.codec
                )
            )
    if "value_relation" in dims.knowledge:
        out.append(ArraySpec("value_index", (n, dims.k), "int16", "zstd"))
        out.append(ArraySpec("value_relation", (n, dims.heads, dims.k, dims.t), q, dims.codec))
        if int8:
            out.append(ArraySpec("value_relation_scale", (n, dims.heads, dims.k), "float32", dims.codec))
    if "logits" in dims.knowledge:
        out.append(ArraySpec("logits", (n, dims.c), "float32", dims.codec))
    return out


def dims_from_manifest(manifest) -> Dims:
    """The Dims an extraction recorded in its ``store.manifest.Manifest``."""
    d, spec = manifest.dims, manifest.spec
    return Dims(
        n=manifest.num_examples,
        t=manifest.max_length,
        layers=len(manifest.layers),
        k=d.kept_tokens,
        d=d.hidden_size,
        c=d.classes,
        token_types=d.token_types,
        knowledge=tuple(spec.knowledge),
        dtype=spec.dtype,
        codec=spec.codec,
        width=spec.dims.split(":")[0],
        kept_dims=d.kept_dims,
        slots=d.slots,
        attention_layers=len(manifest.attention_layers),
        heads=d.heads,
    )


def chunking(specs: list[ArraySpec], n: int, shard_examples: int | None = None) -> tuple[dict[str, int], int]:
    """({array: chunk_examples}, shard_examples), powers of two.

    The shard (the unit of writing, shared by all arrays) is sized by the widest row to about
    TARGET_SHARD_BYTES; each array's chunk (the unit of reading) to about TARGET_CHUNK_BYTES of
    its own rows, at most the shard and at most N/8 (Zarr stores the edge chunk at full size, so
    this bounds the waste to ~12%). An explicit ``shard_examples`` is honoured.
    """
    per_example = [spec for spec in specs if spec.per_example]
    widest = max(spec.row_bytes() for spec in per_example)
    if shard_examples is None:
        shard_examples = _pow2_floor(max(1, TARGET_SHARD_BYTES // widest))
        shard_examples = min(shard_examples, _pow2_ceil(n))
    edge = _pow2_floor(max(1, n // 8))
    chunks = {
        spec.name: min(shard_examples, edge, _pow2_floor(max(1, TARGET_CHUNK_BYTES // spec.row_bytes())))
        for spec in per_example
    }
    return chunks, shard_examples


def shard_range(shard: int, n: int, shard_examples: int) -> tuple[int, int]:
    start = shard * shard_examples
    return start, min(n, start + shard_examples)


def num_shards(n: int, shard_examples: int) -> int:
    return math.ceil(n / shard_examples)


def identity(manifest) -> dict:
    """The manifest fields (JSON form, or a ``Manifest``) that must match for a writer to resume
    into an existing cache."""
    manifest = manifest.to_dict() if hasattr(manifest, "to_dict") else manifest
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


def extract_command(manifest, path: str) -> str:
    """The ``hsk extract`` command line that re-creates (or repairs) the cache at ``path``: the
    options its ``Manifest`` records, so a rerun matches the cache's identity."""
    import shlex

    data, spec = manifest.data, manifest.spec
    options = {
        "--teacher": manifest.teacher.path,
        "--data": data.resolved_source or data.source,
        "--split": data.split,
        "--text-columns": ",".join(data.text_columns) if data.text_columns else None,
        "--label-column": data.label_column,
        "--max-length": manifest.max_length,
        "--limit": data.limit,
        "--layers": spec.layers,
        "--tokens": spec.tokens,
        "--dims": spec.dims,
        "--knowledge": ",".join(spec.knowledge),
        "--attention-layers": spec.attention_layers,
        "--value-relation-layer": spec.value_relation_layer,
        "--importance-layer": spec.importance_layer,
        "--dtype": spec.dtype,
        "--codec": spec.codec,
        "--selection-seed": spec.seed,
        "--precision": manifest.precision,
        "--shard-examples": manifest.layout.shard_examples,
        "--out": path,
    }
    words = ["hsk", "extract"]
    for option, value in options.items():
        if value is not None:
            words += [option, str(value)]
    return shlex.join(words)
