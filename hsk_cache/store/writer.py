"""Write a cache: create or resume the Zarr v3 group, write whole shards, commit, finish.

Crash safety: a shard's arrays are written first, then its ``shard_commits`` row (the size and
crc32c of every file the shard wrote, read back from the store); the manifest's ``complete`` flag
is set last. A rerun resumes at the uncommitted shards; ``uncommit`` marks damaged shards for
re-extraction. Writers of disjoint shard sets never touch the same file (each commit row is its
own chunk). Every chunk carries a crc32c, and chunks of fill values are written too, so a
missing file is always damage, never "all fill values".
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import google_crc32c
import numpy as np
import zarr
from zarr.codecs import BloscCodec, Crc32cCodec, ZstdCodec

from hsk_cache import outputs
from hsk_cache.errors import CacheError
from hsk_cache.knowledge.kind import ArraySpec
from hsk_cache.store import commits, layout
from hsk_cache.store import shards as shard_files
from hsk_cache.store.lease import WriterLease
from hsk_cache.store.location import Location
from hsk_cache.store.manifest import Manifest
from hsk_cache.store.reader import MANIFEST_KEY, TOKENIZER_GROUP, read_manifest

log = logging.getLogger(__name__)


class CacheWriter:
    """Owns one cache group while extraction runs."""

    def __init__(
        self, group: zarr.Group, manifest: Manifest, resumed: bool = False, lease: WriterLease | None = None
    ) -> None:
        """``manifest``: the typed manifest the group attribute holds (as ``manifest.to_dict()``)."""
        self.group = group
        self.manifest = manifest
        self.resumed = resumed  # reopened an existing cache of the same identity
        self.lease = lease
        self._arrays: dict[str, zarr.Array] = {}  # opened once: each open reads its zarr.json (~2 ms)
        self._commit_names: list[str] | None = None

    @classmethod
    def join(cls, path: str | Path, storage_options: dict | None = None) -> CacheWriter:
        """Open a cache another process (torchrun's rank 0) created, to write shards of it."""
        location = Location.of(path, storage_options)
        return cls(location.open_group("r+"), Manifest.from_dict(read_manifest(location, check_version=False)))

    def close(self) -> None:
        """Give the lease back (a no-op for a writer that holds none)."""
        if self.lease is not None:
            self.lease.release()
            self.lease = None

    @classmethod
    def open(
        cls,
        path: str | Path,
        manifest: Manifest,
        specs: list[ArraySpec],
        overwrite: bool = False,
        storage_options: dict | None = None,
        lease: bool = True,
    ) -> CacheWriter:
        """Create the cache at a path or fsspec URL, or reopen it to resume when its identity
        matches ``manifest``.

        The writer holds the cache's ``lease.WriterLease`` (``lease=False``: the caller holds it,
        as rank 0 does for a torchrun job) until ``close``.

        Raises: CacheError if ``path`` holds something else (another spec, teacher or data, or
        not a cache) and ``overwrite`` is False, or another ``hsk extract`` is writing it;
        nothing is written then.
        """
        location = path if isinstance(path, Location) else Location.of(path, storage_options)
        location.sidecar(layout.LEASE_SUFFIX)  # the lease needs a place beside the cache: not a bucket's root
        existing = _existing_manifest(location)
        outputs.check_output(
            repr(location.url),
            CACHE_OUTPUT,
            identity=layout.identity(manifest),
            held=None if existing is None else layout.identity(existing),
            empty=existing is None and location.is_empty(),
            overwrite=overwrite,
        )
        held = WriterLease.acquire(location) if lease else None
        try:
            return cls._open(location, existing, manifest, specs, overwrite, held)
        except BaseException:
            if held is not None:
                held.release()
            raise

    @classmethod
    def _open(cls, location, existing, manifest, specs, overwrite, held) -> CacheWriter:
        if existing is not None and not overwrite:
            group = location.open_group("r+")
            manifest = manifest.with_state(complete=existing.get("complete", False), counts=existing.get("counts", {}))
            log.info("resuming %s", location.url)
        else:
            location.remove()
            group = location.open_group("w")
            group.attrs[MANIFEST_KEY] = manifest.sealed().to_dict()
        writer = cls(group, manifest, resumed=existing is not None and not overwrite, lease=held)
        writer._ensure_arrays(specs)
        return writer

    def _ensure_arrays(self, specs: list[ArraySpec]) -> None:
        chunk, shard = self.manifest.layout.chunk_examples, self.manifest.layout.shard_examples
        present = set(self.group.array_keys())
        for spec in specs:
            if spec.name in present:
                continue
            if spec.per_example:
                chunks, shards = (chunk[spec.name], *spec.shape[1:]), (shard, *spec.shape[1:])
            else:
                chunks, shards = spec.shape, None
            self.group.create_array(
                spec.name,
                shape=spec.shape,
                dtype=spec.dtype,
                chunks=chunks,
                shards=shards,
                compressors=compressors(spec.codec),
                fill_value=-1 if spec.name.endswith("_index") else 0,
                config=ARRAY_CONFIG,
            )
        if layout.COMMIT_ARRAY not in present:
            names = [spec.name for spec in specs if spec.per_example]
            array = self.group.create_array(
                layout.COMMIT_ARRAY,
                shape=(self.manifest.layout.num_shards, len(names), 2),
                dtype="uint64",
                chunks=(1, len(names), 2),
                compressors=compressors("none"),
                fill_value=0,
                config=ARRAY_CONFIG,
            )
            array.attrs[commits.COMMIT_ARRAYS_ATTR] = names

    def _array(self, name: str) -> zarr.Array:
        """An array opened for writing (the write config is not stored in the metadata), opened
        once per writer: an extraction never changes an array's metadata after creating it."""
        if name not in self._arrays:
            self._arrays[name] = self.group[name].with_config(ARRAY_CONFIG)
        return self._arrays[name]

    def _names(self) -> list[str]:
        """The arrays a commit row covers (``commits.commit_names``), read once per writer."""
        if self._commit_names is None:
            self._commit_names = commits.commit_names(self.group)
        return self._commit_names

    def write_global(self, name: str, values: np.ndarray) -> None:
        """Write a small array that is not chunked along N (dim_index), whole."""
        self._array(name)[...] = values

    def write_tokenizer(self, files: dict[str, bytes]) -> None:
        """Store the tokenizer's files (``tokenizer_files``) as 1-D uint8 arrays in the
        ``tokenizer`` subgroup, so the cache alone is enough to train (and save) a student; the
        manifest records their sizes and checksums (``file_records``)."""
        group = self.group.require_group(TOKENIZER_GROUP)
        for name, data in files.items():
            payload = np.frombuffer(data, dtype=np.uint8)
            array = group.create_array(
                name,
                shape=payload.shape,
                dtype="uint8",
                chunks=(max(1, len(payload)),),
                compressors=compressors("zstd"),
                overwrite=True,
                config=ARRAY_CONFIG,
            )
            array[:] = payload

    def committed(self) -> np.ndarray:
        """[S] bool: which shards are fully written (a damaged commit row counts as not)."""
        rows, _ = commits.read_commits(self.group)
        return commits.committed_mask(rows)

    def write_shard(self, shard: int, start: int, block: dict[str, np.ndarray]) -> None:
        """Write one whole shard (rows start..start+len) of every array, then commit it with the
        size and crc32c of each file it wrote, read back from the store.

        Raises: CacheError if ``block`` misses an array of the commit row.
        """
        if self.lease is not None:
            self.lease.check()
        names = self._names()
        missing = set(names) - set(block)
        if missing:
            raise CacheError(f"shard {shard} lacks arrays {sorted(missing)}")
        # whatever an earlier attempt left goes first: zarr reads an existing shard's index to
        # update a partial (edge) shard, and a damaged one must never be read
        keys = [commits.shard_key(self._array(name), shard) for name in names]
        commits.delete(self.group, keys)
        through_zarr = [name for name in names if not self._write_direct(name, shard, start, block[name])]
        if through_zarr:  # every other array's rows, concurrently in one round trip to zarr's event loop
            stop = start + len(block[names[0]])
            commits.gather(self._array(n).async_array.setitem(slice(start, stop), block[n]) for n in through_zarr)
        written = commits.records(self.group, keys)
        row = np.zeros((len(names), 2), dtype=np.uint64)
        for i, (name, record) in enumerate(zip(names, written)):
            if record is None:
                raise CacheError(f"shard {shard} of {name} vanished right after it was written: check the storage")
            row[i] = (record.nbytes, record.crc32c)
        self._array(layout.COMMIT_ARRAY)[shard] = row

    def _write_direct(self, name: str, shard: int, start: int, values: np.ndarray) -> bool:
        """Write rows ``start..`` of array ``name``, one whole shard, with ``store.shards.write_shard``
        (the same bytes as zarr's) where it can write the file itself; returns whether it did (if
        not, the caller writes them through zarr)."""
        array = self._array(name)
        direct = shard_files.direct_layout(array)
        if (
            direct is not None
            and start == shard * direct.shard_rows
            and len(values) == min(direct.shard_rows, array.shape[0] - start)
            and values.dtype == np.dtype(array.dtype)
            and values.shape[1:] == array.shape[1:]
        ):
            key = commits.shard_key(array, shard)
            shard_files.write_shard(f"{array.store.root}/{key}", direct, values, array.metadata.fill_value)
            return True
        return False

    def uncommit(self, shards: list[int]) -> None:
        """Mark ``shards`` for re-extraction (damaged): the cache is incomplete until they are
        rewritten and ``finish`` runs again."""
        if not shards:
            return
        self.set_complete(False)
        for shard in shards:
            self._array(layout.COMMIT_ARRAY)[shard] = 0

    def set_complete(self, complete: bool) -> None:
        """Record ``complete`` in the stored manifest (True only once every shard is committed)."""
        self.manifest = self.manifest.with_state(complete=complete)
        self.group.attrs[MANIFEST_KEY] = self.manifest.sealed().to_dict()

    def finish(self, counts: dict) -> Manifest:
        """Mark the cache complete (last write of an extraction). Returns the final manifest.

        Raises: CacheError when a shard is not committed."""
        if not self.committed().all():
            raise CacheError("cannot finish a cache with uncommitted shards")
        self.manifest = self.manifest.with_state(counts=counts)
        self.set_complete(True)
        return self.manifest


ARRAY_CONFIG = {"write_empty_chunks": True}  # every chunk is stored: a missing file is damage, not fill values
CACHE_OUTPUT = outputs.OutputKind(
    run="a cache",
    error=CacheError,
    foreign="exists and is not an hsk cache: choose another {out} or remove it",
    foreign_overwrite="is not an hsk cache; refusing to delete it with {overwrite}: choose another {out}",
)


def tokenizer_files(tokenizer) -> dict[str, bytes]:
    """{file name: bytes} of what ``tokenizer.save_pretrained`` writes, in name order."""
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        return {file.name: file.read_bytes() for file in sorted(Path(tmp).iterdir()) if file.is_file()}


def file_records(files: dict[str, bytes]) -> dict[str, dict]:
    """{name: {"bytes": size, "crc32c": 8 hex digits}} of ``files`` (the manifest's tokenizer records)."""
    return {name: {"bytes": len(data), "crc32c": f"{google_crc32c.value(data):08x}"} for name, data in files.items()}


def compressors(codec: str) -> list:
    """Zarr v3 bytes-to-bytes codecs for a codec name — none, zstd (level 3), or blosc (zstd, byte
    shuffle) — followed by crc32c, so every chunk is checksummed and verified on read."""
    if codec == "zstd":
        return [ZstdCodec(level=3), Crc32cCodec()]
    if codec == "blosc":
        return [BloscCodec(cname="zstd", clevel=3, shuffle="shuffle"), Crc32cCodec()]
    return [Crc32cCodec()]


def _existing_manifest(location: Location) -> dict | None:
    try:
        return read_manifest(location, check_version=False)
    except CacheError:
        return None
