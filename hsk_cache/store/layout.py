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
| (each kind's)    | see the kind     | stored dtype (q)  | ``knowledge/<kind>.py`` lists its arrays  |
| shard_commits    | [S, A, 2]        | uint64            | per array: shard file bytes, crc32c; 0 = uncommitted |
| tokenizer/<file> | [bytes]          | uint8             | the teacher tokenizer's files             |

The group attribute ``hsk_cache`` holds the JSON manifest; its ``complete`` is set last.
"""

from __future__ import annotations

import math

from hsk_cache.knowledge.kind import ArraySpec
from hsk_cache.knowledge.plan import Plan
from hsk_cache.tasks import types

FORMAT_NAME = "hsk-cache"
FORMAT_VERSION = 2  # 2: crc32c per chunk, commit rows with per-file sizes and checksums
COMMIT_ARRAY = "shard_commits"
LEASE_SUFFIX = ".hsk-writer.json"  # the writer lease (store.lease) sits beside the cache: <cache>.hsk-writer.json
TARGET_SHARD_BYTES = 32 << 20  # 32 MiB per shard: one write, a bounded amount of work lost on a kill
# Every read of a cache here is of whole shards (open, shard windows, dataset items), so an
# array's chunk (the unit of checksumming and decoding) is as large as its shard allows: one
# crc32c and one decode per shard file; measured 1.4x faster to open than 1 MiB chunks.
TARGET_CHUNK_BYTES = TARGET_SHARD_BYTES
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


EXAMPLE_ARRAYS = ("input_ids", "lengths", "labels", "example_ids", "token_type_ids")


def arrays(plan, n: int, token_types: bool) -> list[ArraySpec]:
    """The arrays a cache of ``n`` examples extracted with ``plan`` holds (without shard_commits
    and the tokenizer): the examples' arrays, then each kind's (``KnowledgeKind.arrays``).

    Args:
        plan: the resolved ``knowledge.plan.Plan``. n: N examples. token_types: whether the
            tokenizer makes token_type_ids (stored then).
    """
    t = plan.max_length
    out = [
        ArraySpec("input_ids", (n, t), "int32", "zstd", role="example"),
        ArraySpec("lengths", (n,), "int32", "zstd", role="example"),
        ArraySpec("labels", _label_shape(plan, n), _label_dtype(plan), "zstd", role="example"),
        ArraySpec("example_ids", (n,), "int64", "zstd", role="example"),
    ]
    if token_types:
        out.append(ArraySpec("token_type_ids", (n, t), "int8", "zstd", role="example"))
    return out + plan.arrays(n)


def _label_shape(plan, n: int) -> tuple[int, ...]:
    """[N] class ids or scores; token classification: [N, T] tag ids (−100 where no word starts);
    multi-label: [N, C] multi-hot; question answering: [N, 2] start and end token."""
    return {"tags": (n, plan.max_length), "set": (n, plan.classes), "span": (n, 2)}.get(
        types.get(plan.task_type).labels, (n,)
    )


def _label_dtype(plan) -> str:
    return types.get(plan.task_type).label_dtype


def manifest_arrays(manifest) -> list[ArraySpec]:
    """The arrays a cache's ``store.manifest.Manifest`` says it holds."""
    return arrays(Plan.of_manifest(manifest), manifest.num_examples, manifest.dims.token_types)


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
    """The examples of shard ``shard`` of a cache of ``n`` examples: ``(start, stop)``, stop
    exclusive; the last shard may be shorter than ``shard_examples``."""
    start = shard * shard_examples
    return start, min(n, start + shard_examples)


def num_shards(n: int, shard_examples: int) -> int:
    """Shards of ``shard_examples`` examples needed for ``n`` examples (the last one partial)."""
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
