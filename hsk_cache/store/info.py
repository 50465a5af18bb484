"""``hsk info``: what a cache holds and what it costs on disk."""

from __future__ import annotations

from hsk_cache.store.layout import full_hidden_bytes
from hsk_cache.store.reader import CacheReader


def cache_info(path: str, storage_options: dict | None = None) -> dict:
    """Manifest, stored bytes, bytes per example, and the ratio to the full float32 hidden states
    ([L+1, T, D] per example, T = max length) of the same teacher.

    ``path``: a directory or fsspec URL (opened with ``storage_options``).
    Raises: CacheError if ``path`` is no cache or has an unknown format version.
    """
    reader = CacheReader(path, storage_options)
    m = reader.manifest
    n = m.num_examples
    stored = reader.stored_bytes()
    full = full_hidden_bytes(m.teacher.num_layers, m.max_length, m.teacher.hidden_size)
    per_example = stored / max(n, 1)
    return {
        "manifest": m.to_dict(),
        "stored_bytes": stored,
        "bytes_per_example": per_example,
        "full_hidden_bytes_per_example": full,
        "ratio_to_full": full / per_example if per_example else float("inf"),
        "complete": reader.complete,
        "committed_shards": reader.committed_shards(),
    }
