"""Write a cache: create or resume the Zarr v3 group, write whole shards, commit, finish.

Crash safety: a shard's arrays are written first, then its ``shard_committed`` entry; the
manifest's ``complete`` flag is set last. A rerun resumes at the first uncommitted shard.
Writers of disjoint shard sets never touch the same file (each commit entry is its own chunk).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

import numpy as np
import zarr
from zarr.codecs import BloscCodec, ZstdCodec

from hsk_cache.errors import CacheError
from hsk_cache.store import layout
from hsk_cache.store.reader import MANIFEST_KEY, TOKENIZER_GROUP, read_manifest

log = logging.getLogger(__name__)


class CacheWriter:
    """Owns one cache group while extraction runs."""

    def __init__(self, group: zarr.Group, manifest: dict) -> None:
        self.group = group
        self.manifest = manifest

    @classmethod
    def open(cls, path: str | Path, manifest: dict, specs: list[layout.ArraySpec], overwrite: bool = False) -> "CacheWriter":
        """Create the cache, or reopen it to resume when its identity matches ``manifest``.

        Raises: CacheError if ``path`` holds something else (another spec, teacher or data, or
        not a cache) and ``overwrite`` is False; nothing is written then.
        """
        path = Path(path)
        existing = _existing_manifest(path)
        if existing is not None and not overwrite:
            _check_same(path, existing, manifest)
            group = zarr.open_group(str(path), mode="r+")
            log.info("resuming %s", path)
        else:
            if path.exists():
                if existing is None and not overwrite:
                    raise CacheError(f"{str(path)!r} exists and is not an hsk cache: choose another --out or remove it")
                if existing is None and any(path.iterdir()):
                    raise CacheError(f"{str(path)!r} is not an hsk cache; refusing to delete it with --overwrite: choose another --out")
                shutil.rmtree(path)
            group = zarr.open_group(str(path), mode="w")
            group.attrs[MANIFEST_KEY] = manifest
        writer = cls(group, manifest)
        writer._ensure_arrays(specs)
        return writer

    def _ensure_arrays(self, specs: list[layout.ArraySpec]) -> None:
        lay = self.manifest["layout"]
        chunk, shard = lay["chunk_examples"], lay["shard_examples"]
        present = set(self.group.array_keys())
        for spec in specs:
            if spec.name in present:
                continue
            if spec.per_example:
                chunks, shards = (chunk[spec.name], *spec.shape[1:]), (shard, *spec.shape[1:])
            else:
                chunks, shards = spec.shape, None
            self.group.create_array(
                spec.name, shape=spec.shape, dtype=spec.dtype, chunks=chunks, shards=shards,
                compressors=compressors(spec.codec), fill_value=-1 if spec.name.endswith("_index") else 0,
            )
        if layout.COMMIT_ARRAY not in present:
            self.group.create_array(
                layout.COMMIT_ARRAY, shape=(lay["num_shards"],), dtype="uint8", chunks=(1,), compressors=None, fill_value=0
            )

    def write_global(self, name: str, values: np.ndarray) -> None:
        """Write a small array that is not chunked along N (dim_index), whole."""
        self.group[name][...] = values

    def write_tokenizer(self, tokenizer) -> None:
        """Store the tokenizer's files as 1-D uint8 arrays in the ``tokenizer`` subgroup, so the
        cache alone is enough to train (and save) a student."""
        with tempfile.TemporaryDirectory() as tmp:
            tokenizer.save_pretrained(tmp)
            group = self.group.require_group(TOKENIZER_GROUP)
            for file in sorted(Path(tmp).iterdir()):
                payload = np.frombuffer(file.read_bytes(), dtype=np.uint8)
                array = group.create_array(file.name, shape=payload.shape, dtype="uint8", chunks=(max(1, len(payload)),),
                                           compressors=ZstdCodec(level=3), overwrite=True)
                array[:] = payload

    def committed(self) -> np.ndarray:
        """[S] bool: which shards are fully written."""
        return self.group[layout.COMMIT_ARRAY][:].astype(bool)

    def write_shard(self, shard: int, start: int, block: dict[str, np.ndarray]) -> None:
        """Write one whole shard (rows start..start+len) of every array, then commit it."""
        for name, values in block.items():
            self.group[name][start : start + len(values)] = values
        self.group[layout.COMMIT_ARRAY][shard] = 1

    def finish(self, counts: dict) -> dict:
        """Mark the cache complete (last write of an extraction). Returns the final manifest."""
        if not self.committed().all():
            raise CacheError("cannot finish a cache with uncommitted shards")
        self.manifest = {**self.manifest, "counts": counts, "complete": True}
        self.group.attrs[MANIFEST_KEY] = self.manifest
        return self.manifest


def compressors(codec: str):
    """Zarr v3 compressors for a codec name: none, zstd (level 3), or blosc (zstd, byte shuffle)."""
    if codec == "zstd":
        return ZstdCodec(level=3)
    if codec == "blosc":
        return BloscCodec(cname="zstd", clevel=3, shuffle="shuffle")
    return None


def _existing_manifest(path: Path) -> dict | None:
    if not (path / "zarr.json").is_file():
        return None
    try:
        return read_manifest(path)
    except CacheError:
        return None


def _check_same(path: Path, existing: dict, manifest: dict) -> None:
    old, new = layout.identity(existing), layout.identity(manifest)
    differing = [key for key in new if old.get(key) != new[key]]
    if differing:
        key = differing[0]
        raise CacheError(
            f"{str(path)!r} holds a cache with a different {key} ({old.get(key)!r} vs {new[key]!r}): "
            "pass --overwrite to replace it, or choose another --out"
        )
