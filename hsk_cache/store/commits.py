"""Shard files and their commit records: what each committed shard wrote (bytes and crc32c per
array), read back through zarr's store layer so the same code serves any zarr store.

A shard of an N-chunked array is one file (one store key) holding its chunks and index. After a
writer has written shard s of every array, it reads each file back, and the commit row
``shard_commits[s]`` records ``(nbytes, crc32c)`` per array, in the order of the array's
``arrays`` attribute. A row of zeros means "not committed". The checksum is crc32c
(``google_crc32c``, the library zarr's own ``crc32c`` codec uses): fast, and what the chunks
already carry.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import google_crc32c
import numpy as np
import zarr
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

from hsk_cache.store import layout

COMMIT_ARRAYS_ATTR = "arrays"  # commit-array attribute: the array names, in column order


@dataclass(frozen=True)
class FileRecord:
    """What one shard file held when it was committed: size in bytes and crc32c of its bytes."""

    nbytes: int
    crc32c: int


def shard_key(array: zarr.Array, shard: int) -> str:
    """The store key of shard ``shard`` (along N) of an N-chunked array."""
    coords = (shard,) + (0,) * (array.ndim - 1)
    return f"{array.store_path.path}/{array.metadata.encode_chunk_key(coords)}"


def gather(coroutines) -> list:
    """Run ``coroutines`` concurrently in one round trip to zarr's event loop; their results in order."""

    async def every() -> list:
        return list(await asyncio.gather(*coroutines))

    return sync(every())


def records(group: zarr.Group, keys: list[str]) -> list[FileRecord | None]:
    """The (size, crc32c) of the files at ``keys`` (None where a file is missing), read
    concurrently through the group's store in one round trip to zarr's event loop."""

    async def one(key: str) -> FileRecord | None:
        buffer = await group.store.get(key, prototype=default_buffer_prototype())
        if buffer is None:
            return None
        data = buffer.as_numpy_array()  # no copy
        return FileRecord(int(data.nbytes), google_crc32c.value(data))

    return gather(one(key) for key in keys)


def sizes(group: zarr.Group, keys: list[str]) -> list[int | None]:
    """Bytes of the files at ``keys`` (None where missing), in one round trip to zarr's event loop."""

    async def one(key: str) -> int | None:
        return int(await group.store.getsize(key)) if await group.store.exists(key) else None

    return gather(one(key) for key in keys)


def delete(group: zarr.Group, keys: list[str]) -> None:
    """Remove the files at ``keys`` (missing ones are fine), in one round trip to zarr's event loop."""
    gather(group.store.delete(key) for key in keys)


def commit_names(group: zarr.Group) -> list[str]:
    """The arrays a commit row covers, in column order."""
    return list(group[layout.COMMIT_ARRAY].attrs[COMMIT_ARRAYS_ATTR])


def read_commits(group: zarr.Group) -> tuple[np.ndarray, list[int]]:
    """Commit rows ``[S, A, 2]`` uint64 and the shards whose commit row itself is unreadable
    (damaged chunk: treated as uncommitted, their rows are zeros here)."""
    commits = group[layout.COMMIT_ARRAY]
    try:
        return commits[:], []
    except ValueError:  # a damaged commit chunk fails its crc32c: read row by row to find it
        rows, damaged = np.zeros(commits.shape, dtype=np.uint64), []
        for s in range(commits.shape[0]):
            try:
                rows[s] = commits[s]
            except ValueError:
                damaged.append(s)
        return rows, damaged


def committed_mask(rows: np.ndarray) -> np.ndarray:
    """[S] bool: shards whose commit row records every array."""
    return (rows[:, :, 0] > 0).all(axis=1)
