"""Read an uncompressed local shard file straight into its rows of the output array, and write
one straight from the rows.

Zarr's read of a shard file (zarr 3.1) reads the whole file into a new buffer, checks each
chunk's crc32c, wraps the chunk in an array and copies it into the output: two passes over new
memory per shard, each paying its page faults. A cache written with ``--codec none`` (the
default) stores each chunk as its raw little-endian rows followed by a crc32c, and the shard's
index (one ``(offset, nbytes)`` uint64 pair per chunk, then the index's own crc32c) at the end of
the file: the format of the Zarr v3 sharding codec, fixed by its specification
(https://zarr-specs.readthedocs.io/en/latest/v3/codecs/sharding-indexed/). For such a shard on a
local disk this module reads each chunk's bytes with one ``readinto`` straight into the output's
rows and checks the same crc32c (``google_crc32c``, as zarr's codec does) over them in place:
one pass over new memory. Everything else (compressed chunks, another codec chain, object
stores) is read by zarr; ``direct_layout`` says which.

Writing is the mirror: zarr's write of a whole shard encodes each chunk into a new buffer,
combines them into another and hands that to the store (three passes over new memory);
``write_shard`` writes each chunk's rows and crc32c, then the index, to the file from the rows
themselves: the same bytes as zarr's (every chunk stored, ``write_empty_chunks``; an edge chunk
padded with the fill value; chunks past the array's end absent from the index), tested against
zarr's own files and by the golden caches.

Measured by ``python -m benchmarks.loader`` (the "open_cache" rows against zarr's read, ``zarr
read``), on the same cache in the same run.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import google_crc32c
import numpy as np
from zarr.codecs import BytesCodec, Crc32cCodec, ShardingCodec
from zarr.codecs.sharding import MAX_UINT_64, ShardingCodecIndexLocation

CRC_BYTES = 4
ENABLED = True  # False: every shard is read by zarr (benchmarks.loader compares the two; tests too)


class ShardDamage(Exception):
    """A shard file whose index or chunk bytes do not check out (message: what is wrong)."""


@dataclass(frozen=True)
class DirectLayout:
    """How the shards of one array sit on disk: ``shard_rows`` rows per shard file in chunks of
    ``chunk_rows`` rows (every chunk spans the array's other dimensions whole), ``row_bytes``
    bytes per row."""

    shard_rows: int
    chunk_rows: int
    row_bytes: int

    @property
    def chunks_per_shard(self) -> int:
        """Inner chunks in one shard file."""
        return self.shard_rows // self.chunk_rows

    @property
    def index_bytes(self) -> int:
        """Bytes of the shard index at the file's end: an (offset, nbytes) uint64 pair per chunk and its crc32c."""
        return 16 * self.chunks_per_shard + CRC_BYTES


def _plain(codecs) -> bool:
    """``codecs`` is ``bytes`` (little-endian, or no endianness for 1-byte types) then ``crc32c``."""
    return (
        len(codecs) == 2
        and isinstance(codecs[0], BytesCodec)
        and (codecs[0].endian is None or codecs[0].endian.value == "little")
        and isinstance(codecs[1], Crc32cCodec)
    )


def direct_layout(array) -> DirectLayout | None:
    """The ``DirectLayout`` of a zarr v3 array whose shards this module can read, else None:
    one sharding codec with its index at the end, ``bytes`` + ``crc32c`` inside and for the
    index, inner chunks split only along the first dimension, a fixed-size little-endian dtype
    on a little-endian host, the array on a local ``LocalStore``."""
    codecs = getattr(array.metadata, "codecs", ())
    if not ENABLED or len(codecs) != 1 or not isinstance(codecs[0], ShardingCodec) or sys.byteorder != "little":
        return None
    sharding = codecs[0]
    dtype = np.dtype(array.dtype)
    shards = array.shards
    if (
        sharding.index_location != ShardingCodecIndexLocation.end
        or not _plain(sharding.codecs)
        or not _plain(sharding.index_codecs)
        or shards is None
        or tuple(sharding.chunk_shape[1:]) != tuple(shards[1:])
        or tuple(shards[1:]) != tuple(array.shape[1:])
        or shards[0] % sharding.chunk_shape[0]
        or dtype.kind not in "biuf"
        or dtype.byteorder == ">"
        or type(array.store).__name__ != "LocalStore"
    ):
        return None
    row_bytes = int(np.prod(array.shape[1:], dtype=np.int64)) * dtype.itemsize
    return DirectLayout(int(shards[0]), int(sharding.chunk_shape[0]), row_bytes)


def _readinto(f, target: memoryview, what: str) -> None:
    got = f.readinto(target)
    if got != len(target):
        raise ShardDamage(f"{what} ends after {got} of {len(target)} bytes")


def _crc32c(data: np.ndarray) -> bytes:
    """The 4-byte little-endian crc32c of ``data``'s bytes, as zarr's ``crc32c`` codec stores it."""
    return np.uint32(google_crc32c.value(data)).tobytes()


def _check(data: np.ndarray, stored: bytes, what: str) -> None:
    computed = _crc32c(data)
    if computed != stored:
        raise ShardDamage(f"{what} fails its crc32c (stored {stored.hex()}, computed {computed.hex()})")


def read_shard(path: str, layout: DirectLayout, shard: int, a: int, b: int, out: np.ndarray) -> None:
    """Rows ``a..b`` (array rows, inside shard ``shard``) of the shard file at ``path`` into
    ``out`` (C-contiguous, ``b - a`` rows of the array's row shape and dtype), each chunk's
    crc32c checked over the bytes read.

    Raises: ShardDamage for a file too short for its index, an index that fails its crc32c or
    points outside the file, a missing (never written) chunk, or a chunk whose bytes fail their
    crc32c; OSError from the file system.
    """
    flat = out.reshape(-1).view(np.uint8)
    first = shard * layout.shard_rows
    with open(path, "rb", buffering=0) as f:
        size = os.fstat(f.fileno()).st_size
        if size < layout.index_bytes:
            raise ShardDamage(f"the file has {size} bytes, less than its {layout.index_bytes}-byte index")
        f.seek(size - layout.index_bytes)
        raw = f.read(layout.index_bytes)
        _check(np.frombuffer(raw[:-CRC_BYTES], np.uint8), raw[-CRC_BYTES:], "the shard index")
        index = np.frombuffer(raw[:-CRC_BYTES], "<u8").reshape(-1, 2)
        chunk_bytes = layout.chunk_rows * layout.row_bytes
        for c in range((a - first) // layout.chunk_rows, -(-(b - first) // layout.chunk_rows)):
            offset, nbytes = (int(v) for v in index[c])
            what = f"chunk {c}"
            if offset == MAX_UINT_64:
                raise ShardDamage(f"{what} was never written")
            if nbytes != chunk_bytes + CRC_BYTES or offset + nbytes > size - layout.index_bytes:
                raise ShardDamage(f"{what}'s index entry ({offset}, {nbytes}) does not fit the file")
            lo = first + c * layout.chunk_rows  # the chunk's first array row
            keep_a, keep_b = max(a, lo), min(b, lo + layout.chunk_rows)
            f.seek(offset)
            if (keep_a, keep_b) == (lo, lo + layout.chunk_rows):  # the whole chunk: read it in place
                target = flat[(lo - a) * layout.row_bytes : (lo - a + layout.chunk_rows) * layout.row_bytes]
                _readinto(f, memoryview(target), what)
                _check(target, f.read(CRC_BYTES), what)
            else:  # part of the chunk (a range's ends, the last shard's padding): via a buffer
                buffer = np.empty(chunk_bytes, np.uint8)
                _readinto(f, memoryview(buffer), what)
                _check(buffer, f.read(CRC_BYTES), what)
                rows = slice((keep_a - lo) * layout.row_bytes, (keep_b - lo) * layout.row_bytes)
                flat[(keep_a - a) * layout.row_bytes : (keep_b - a) * layout.row_bytes] = buffer[rows]


def write_shard(path: str, layout: DirectLayout, rows: np.ndarray, fill_value) -> None:
    """Write shard file ``path`` holding ``rows`` (the shard's rows from its first: all
    ``layout.shard_rows`` of them, or fewer for the array's last shard), as zarr's sharding
    codec with ``write_empty_chunks`` does: chunk after chunk, each its raw little-endian rows
    (the last one padded to ``chunk_rows`` with ``fill_value``) and their crc32c, then the
    index ((offset, nbytes) per chunk, absent chunks ``MAX_UINT_64``) and its crc32c.

    Raises: OSError from the file system.
    """
    rows = np.ascontiguousarray(rows)
    chunk = layout.chunk_rows
    index = np.full((layout.chunks_per_shard, 2), MAX_UINT_64, dtype="<u8")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        offset = 0
        for c in range(-(-len(rows) // chunk)):
            data = rows[c * chunk : (c + 1) * chunk]
            if len(data) < chunk:  # the array's last rows: the chunk is padded with the fill value
                padded = np.full((chunk, *rows.shape[1:]), fill_value, dtype=rows.dtype)
                padded[: len(data)] = data
                data = padded
            raw = data.reshape(-1).view(np.uint8)
            f.write(raw)
            f.write(_crc32c(raw))
            index[c] = (offset, raw.nbytes + CRC_BYTES)
            offset += raw.nbytes + CRC_BYTES
        raw = index.reshape(-1).view(np.uint8)
        f.write(raw)
        f.write(_crc32c(raw))
