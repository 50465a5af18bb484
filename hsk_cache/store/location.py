"""Where a cache lives: a local path or an fsspec URL (``s3://``, ``gs://``, ``memory://``,
``file://``), opened through zarr's store layer.

A local path (or ``file://`` URL) gets zarr's ``LocalStore`` (atomic writes); any other URL gets
``FsspecStore`` over the fsspec filesystem its protocol names (s3fs for ``s3://``, gcsfs for
``gs://``), built with ``storage_options`` (endpoint, credentials, region; see each filesystem's
documentation, e.g. ``{"client_kwargs": {"endpoint_url": "http://127.0.0.1:9000"}}`` for s3fs).
Credentials can also come from the filesystem's usual environment variables
(``AWS_ACCESS_KEY_ID`` …), which keeps them off the command line.

An ``s3://`` location's client gets bounded timeouts and retries unless its ``storage_options``
say otherwise (``S3_CLIENT_DEFAULTS``, botocore ``Config`` options passed through s3fs's
``config_kwargs``; each key the user gives wins), so an endpoint that accepts connections and
never answers fails in about 17 s instead of hanging for minutes. A store that cannot be reached
(nothing listening, no answer in time, no credentials) is a one-line ``StoreAccessError`` naming
the cache, the endpoint and the fix, not the client library's traceback.

Everything else in ``store/`` reads and writes through ``zarr.Group.store``, so the same code
serves every location; this module adds what zarr has no API for: whether anything is there,
removing a whole cache, and its size.
"""

from __future__ import annotations

import copy
import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import fsspec
import zarr
from fsspec.implementations.local import LocalFileSystem

from hsk_cache.errors import CacheError, ConfigError, StoreAccessError, first_line

_BUCKETED = {"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss"}  # object stores: the top level is a bucket
# botocore ``Config`` options an s3:// client gets unless ``storage_options["config_kwargs"]`` names
# them. s3fs itself retries a read timeout or a dropped connection 5 times (with backoff, not
# configurable), so botocore makes one attempt per s3fs try: a silent endpoint fails after about
# 5 x read_timeout + 2 s, a refused connection at once. s3fs's own defaults are 5 s, 15 s and
# botocore's 5 attempts, which multiply to minutes.
S3_CLIENT_DEFAULTS = {"connect_timeout": 5, "read_timeout": 3, "retries": {"total_max_attempts": 1}}
_S3 = {"s3", "s3a"}


def with_client_defaults(url: str, storage_options: dict) -> dict:
    """``storage_options`` for ``url`` with ``S3_CLIENT_DEFAULTS`` under ``config_kwargs`` for an
    ``s3://`` URL (the user's own keys win); other URLs' options unchanged."""
    protocol = url.split("://", 1)[0].lower() if is_url(url) else ""
    config = storage_options.get("config_kwargs", {})
    if protocol not in _S3 or not isinstance(config, dict):
        return storage_options
    return {**storage_options, "config_kwargs": {**copy.deepcopy(S3_CLIENT_DEFAULTS), **config}}


def access_errors() -> tuple[type[BaseException], ...]:
    """The exception types an object store's client raises when it cannot reach its endpoint or
    has no credentials: botocore's connection errors (refused, unknown host, connect timeout,
    proxy, TLS), read timeouts, dropped connections and missing credentials, which s3fs re-raises
    unwrapped. Empty while botocore was never imported (then none of them can have been raised)."""
    if "botocore.exceptions" not in sys.modules:
        return ()
    from botocore import exceptions as boto

    return (boto.ConnectionError, boto.ReadTimeoutError, boto.ConnectionClosedError, boto.NoCredentialsError)


def access_error(err: BaseException, url: str | None = None, storage_options: dict | None = None) -> StoreAccessError:
    """The one-line ``StoreAccessError`` for ``err`` (one of ``access_errors()``) met while using
    the cache at ``url`` opened with ``storage_options`` (None: not known; the endpoint the request
    went to is named all the same)."""
    from botocore import exceptions as boto

    parts = urlsplit(str(getattr(err, "kwargs", {}).get("endpoint_url") or ""))
    endpoint = f"{parts.scheme}://{parts.netloc}" if parts.netloc else ""
    where = " at ".join(x for x in (url, endpoint) if x) or "the object store"
    if isinstance(err, boto.NoCredentialsError):
        return StoreAccessError(
            f"no credentials for {where}: give key and secret in {{storage_options}}, or set "
            "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)",
            field="storage_options",
        )
    config = (storage_options or {}).get("config_kwargs")
    config = config if isinstance(config, dict) else {}
    fix = ""
    for kind, option in ((boto.ReadTimeoutError, "read_timeout"), (boto.ConnectTimeoutError, "connect_timeout")):
        if isinstance(err, kind):
            within = f" within {config[option]} s" if option in config else ""
            reason = f"no answer{within}" if option == "read_timeout" else f"no connection{within}"
            fix = f"; for a slow store raise config_kwargs.{option} there"
            break
    else:
        reason = _connect_failure(err)
    return StoreAccessError(
        f"cannot reach {where} ({reason}): check that the endpoint is up and right "
        f"(client_kwargs.endpoint_url in {{storage_options}}) and the credentials{fix}",
        field="storage_options",
    )


def is_url(path: str | Path) -> bool:
    """True for ``protocol://...`` (``file://`` included), False for a plain path."""
    return "://" in str(path)


def _connect_failure(err: BaseException) -> str:
    """Why a connection failed, in the OS's words (``connection refused``, ``name or service not
    known``) where the HTTP client kept the OS error, else the error's first line."""
    cause = getattr(err, "kwargs", {}).get("error")
    os_error = getattr(cause, "os_error", None)  # aiohttp's ClientConnectorError keeps it
    code = getattr(os_error, "errno", None)
    if isinstance(code, int) and code > 0:
        return f"could not connect: {os.strerror(code).lower()}"
    if isinstance(os_error, OSError) and os_error.strerror:
        return f"could not connect: {os_error.strerror.lower()}"
    return first_line(cause or err)


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
        """The location of ``path``; an ``s3://`` URL's options get ``S3_CLIENT_DEFAULTS`` where
        they do not say otherwise. Connects to nothing.

        Raises: ConfigError for an unknown protocol or a filesystem that cannot be built
        (a missing package such as s3fs, bad storage options)."""
        text = str(path)
        if not is_url(text):
            text = str(Path(text).expanduser())
        options = with_client_defaults(text, dict(storage_options or {}))
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

    @contextmanager
    def reaching(self):
        """Run the body, turning the client's "cannot reach the store" errors (``access_errors``)
        into ``StoreAccessError`` naming this cache and its endpoint."""
        try:
            yield
        except access_errors() as err:
            raise access_error(err, self.url, self.storage_options) from None

    def store(self, read_only: bool = False):
        """The zarr store rooted at the cache."""
        if self.local:
            return zarr.storage.LocalStore(self.root, read_only=read_only)
        return zarr.storage.FsspecStore.from_url(self.url, storage_options=self.storage_options, read_only=read_only)

    def open_group(self, mode: str) -> zarr.Group:
        """The cache's root Zarr group, opened with zarr's ``mode`` (``r`` read-only, ``r+``, ``a``,
        ``w``...).

        Raises: StoreAccessError when the store cannot be reached."""
        with self.reaching():
            return zarr.open_group(store=self.store(read_only=mode == "r"), mode=mode)

    def exists(self) -> bool:
        """Something is at the cache's root (a file, a directory or a prefix).

        Raises: StoreAccessError when the store cannot be reached."""
        with self.reaching():
            return bool(self.fs.exists(self.root))

    def is_empty(self) -> bool:
        """Nothing is there (or an empty directory).

        Raises: StoreAccessError when the store cannot be reached."""
        if not self.exists():
            return True
        with self.reaching():
            return not self.fs.ls(self.root, detail=False)

    def sidecar(self, suffix: str) -> str:
        """The path of a file beside the cache: its root with ``suffix`` appended (``cache.lock``).

        Raises: ConfigError for a cache at a bucket's top level, which has no place beside it.
        """
        protocols = {self.fs.protocol} if isinstance(self.fs.protocol, str) else set(self.fs.protocol)
        if protocols & _BUCKETED and "/" not in self.root.strip("/"):
            raise ConfigError(f"{self.url!r} is a whole bucket: put the cache under a prefix such as {self.url}/cache")
        return f"{self.root}{suffix}"

    def read_bytes(self, name: str) -> bytes | None:
        """The file ``name`` under the cache (a path from ``sidecar`` too), or None if it is missing.

        Raises: StoreAccessError when the store cannot be reached; CacheError when the file
        cannot be read."""
        path = name if name.startswith(self.root) else self.key(name)
        try:
            with self.reaching():  # before OSError: botocore's timeouts are OSErrors too
                return self.fs.cat_file(path)
        except FileNotFoundError:
            return None
        except StoreAccessError:
            raise
        except OSError as err:
            raise CacheError(f"cannot read {self.url}/{name}: {err}") from None

    def remove(self) -> None:
        """Delete the whole cache. Raises: StoreAccessError when the store cannot be reached."""
        if self.exists():
            with self.reaching():
                self.fs.rm(self.root, recursive=True)

    def stored_bytes(self, exclude: tuple[str, ...] = ()) -> int:
        """Bytes of every file under the cache, except those under the top-level entries named in ``exclude``.

        Raises: StoreAccessError when the store cannot be reached."""
        root = self.root.strip("/")
        with self.reaching():
            sizes = self.fs.du(self.root, total=False)
        return sum(
            int(size)
            for path, size in sizes.items()
            if path.strip("/")[len(root) :].strip("/").split("/")[0] not in exclude
        )
