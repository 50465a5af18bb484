"""Where a cache lives: a local path or an fsspec URL (``s3://``, ``gs://``, ``memory://``,
``file://``), opened through zarr's store layer.

A local path (or ``file://`` URL) gets zarr's ``LocalStore`` (atomic writes); any other URL gets
``FsspecStore`` over the fsspec filesystem its protocol names (s3fs for ``s3://``, gcsfs for
``gs://``), built with ``storage_options`` (endpoint, credentials, region; see each filesystem's
documentation, e.g. ``{"client_kwargs": {"endpoint_url": "http://127.0.0.1:9000"}}`` for s3fs).
Credentials can also come from the filesystem's usual environment variables
(``AWS_ACCESS_KEY_ID`` …), which keeps them off the command line.

Everything else in ``store/`` reads and writes through ``zarr.Group.store``, so the same code
serves every location; this module adds what zarr has no API for: whether anything is there,
removing a whole cache, and its size.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import fsspec
import zarr
from fsspec.implementations.local import LocalFileSystem

from hsk_cache.errors import CacheError, ConfigError

_BUCKETED = {"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss"}  # object stores: the top level is a bucket


def is_url(path: str | Path) -> bool:
    """True for ``protocol://...`` (``file://`` included), False for a plain path."""
    return "://" in str(path)


@dataclass(frozen=True)
class Location:
    """One cache's place. ``url``: as given (a plain path is resolved); ``fs`` and ``root``: the
    fsspec filesystem and the cache's path on it."""

    url: str
    fs: fsspec.AbstractFileSystem = field(repr=False)
    root: str
    storage_options: dict = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def of(cls, path: str | Path, storage_options: dict | None = None) -> Location:
        """Raises: ConfigError for an unknown protocol or a filesystem that cannot be built
        (a missing package such as s3fs, bad storage options)."""
        options = dict(storage_options or {})
        text = str(path)
        if not is_url(text):
            text = str(Path(text).expanduser())
        try:
            fs, root = fsspec.core.url_to_fs(text, **options)
        except (ImportError, ValueError, TypeError) as err:
            raise ConfigError(
                f"cannot open {text!r} ({err}): check the URL and {{storage_options}}", field="storage_options"
            ) from None
        return cls(text, fs, root.rstrip("/") or root, options)

    @property
    def local(self) -> bool:
        """On the local filesystem (a plain path or ``file://``)."""
        return isinstance(self.fs, LocalFileSystem)

    def key(self, name: str) -> str:
        """The fsspec path of ``name`` (a key such as ``zarr.json``) under the cache."""
        return f"{self.root}/{name}"

    def store(self, read_only: bool = False):
        """The zarr store rooted at the cache."""
        if self.local:
            return zarr.storage.LocalStore(self.root, read_only=read_only)
        return zarr.storage.FsspecStore.from_url(self.url, storage_options=self.storage_options, read_only=read_only)

    def open_group(self, mode: str) -> zarr.Group:
        """The cache's root Zarr group, opened with zarr's ``mode`` (``r`` read-only, ``r+``, ``a``,
        ``w``...)."""
        return zarr.open_group(store=self.store(read_only=mode == "r"), mode=mode)

    def exists(self) -> bool:
        """Something is at the cache's root (a file, a directory or a prefix)."""
        return bool(self.fs.exists(self.root))

    def is_empty(self) -> bool:
        """Nothing is there (or an empty directory)."""
        return not self.exists() or not self.fs.ls(self.root, detail=False)

    def sidecar(self, suffix: str) -> str:
        """The path of a file beside the cache: its root with ``suffix`` appended (``cache.lock``).

        Raises: ConfigError for a cache at a bucket's top level, which has no place beside it.
        """
        protocols = {self.fs.protocol} if isinstance(self.fs.protocol, str) else set(self.fs.protocol)
        if protocols & _BUCKETED and "/" not in self.root.strip("/"):
            raise ConfigError(f"{self.url!r} is a whole bucket: put the cache under a prefix such as {self.url}/cache")
        return f"{self.root}{suffix}"

    def read_bytes(self, name: str) -> bytes | None:
        """The file ``name`` under the cache (a path from ``sidecar`` too), or None if it is missing."""
        path = name if name.startswith(self.root) else self.key(name)
        try:
            return self.fs.cat_file(path)
        except FileNotFoundError:
            return None
        except OSError as err:
            raise CacheError(f"cannot read {self.url}/{name}: {err}") from None

    def remove(self) -> None:
        """Delete the whole cache."""
        if self.exists():
            self.fs.rm(self.root, recursive=True)

    def stored_bytes(self, exclude: tuple[str, ...] = ()) -> int:
        """Bytes of every file under the cache, except those under the top-level entries named in ``exclude``."""
        root = self.root.strip("/")
        sizes = self.fs.du(self.root, total=False)
        return sum(
            int(size)
            for path, size in sizes.items()
            if path.strip("/")[len(root) :].strip("/").split("/")[0] not in exclude
        )
