"""One writer per cache: a lease file that a second ``hsk extract`` on the same ``--out`` respects.

Two independent extractions into one cache are refused rather than made to share the work:
sharing needs per-shard claims that every store honours atomically, while a refusal needs one
file and keeps the rule simple (one job writes a cache; inside a job, torchrun's ranks split the
shards among themselves). The second run is told who holds the cache and until when.

``<cache>.hsk-writer.json``, a file beside the cache (outside the Zarr hierarchy), records the
holder (host, pid, a random owner id) and an expiry that a background thread pushes forward every
``HEARTBEAT_S`` seconds. The lease is free when the file is missing, expired (the holder stopped
heart-beating ``TTL_S`` seconds ago: killed, or its machine lost), or held by a process of this
host that no longer exists, so a crashed run never leaves the cache locked for more than
``TTL_S``, and on the same machine not at all.

On a local disk the lease is taken under a ``filelock`` lock (``<cache>.hsk-writer.lock``).
Object stores offer no compare-and-swap through fsspec, so there taking a lease writes it, waits
``SETTLE_S`` and reads it back: of two runs starting together, the last writer wins and the
other is refused. The holder's heartbeat also reads the file first; if another run took it
over, the holder stops before its next shard (``check``). Clocks of different machines are
trusted to agree to well within ``TTL_S``.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid

from filelock import FileLock

from hsk_cache.errors import CacheError
from hsk_cache.store import layout
from hsk_cache.store.location import Location

log = logging.getLogger(__name__)

LOCK_SUFFIX = ".hsk-writer.lock"  # local disks only: guards taking the lease (filelock)
TTL_S = 120.0
HEARTBEAT_S = 30.0
SETTLE_S = 1.0


class WriterLease:
    """The writer's hold on one cache. Create with ``acquire``; ``release`` when done."""

    def __init__(self, location: Location, record: dict, ttl_s: float) -> None:
        self.location, self.record, self.ttl_s = location, record, ttl_s
        self.lost: dict | None = None  # the record of whoever took the lease over
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._heartbeat, daemon=True, name="hsk-lease")

    @classmethod
    def acquire(cls, location: Location, *, ttl_s: float = TTL_S, settle_s: float = SETTLE_S) -> WriterLease:
        """Take the lease of the cache at ``location``.

        Raises: CacheError naming the holder when another live writer holds it.
        """
        if location.local:  # a local disk has real locks: read-check-write under one
            location.fs.makedirs(location.fs._parent(location.root), exist_ok=True)
            with FileLock(location.sidecar(LOCK_SUFFIX)):
                return cls._take(location, ttl_s, 0.0)
        return cls._take(location, ttl_s, settle_s)

    @classmethod
    def _take(cls, location: Location, ttl_s: float, settle_s: float) -> WriterLease:
        held = read(location)
        if held is not None and alive(held):
            raise busy(location, held)
        record = {
            "owner": uuid.uuid4().hex,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": time.time(),
            "expires": time.time() + ttl_s,
        }
        _write(location, record)
        if settle_s:
            time.sleep(settle_s)
        now = read(location)
        if now is None or now.get("owner") != record["owner"]:
            raise busy(location, now or held or record)
        lease = cls(location, record, ttl_s)
        lease._thread.start()
        return lease

    def check(self) -> None:
        """Raises: CacheError if another writer took the lease over (this one must stop writing)."""
        if self.lost is not None:
            raise CacheError(
                f"another hsk extract (host {self.lost.get('host')}, pid {self.lost.get('pid')}) took over "
                f"{self.location.url!r}: this run stops; committed shards are kept"
            )

    def release(self) -> None:
        """Stop the heartbeat and remove the lease file if it is still ours."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        held = read(self.location)
        if held is not None and held.get("owner") == self.record["owner"]:
            with self.location.reaching():
                self.location.fs.rm_file(self.location.sidecar(layout.LEASE_SUFFIX))

    def _heartbeat(self) -> None:
        while not self._stop.wait(min(HEARTBEAT_S, self.ttl_s / 4)):
            try:
                held = read(self.location)
                if held is not None and held.get("owner") != self.record["owner"]:
                    self.lost = held
                    return
                self.record = {**self.record, "expires": time.time() + self.ttl_s}
                _write(self.location, self.record)
            except (OSError, CacheError) as err:  # storage hiccup: try again next beat
                log.warning("could not renew the writer lease of %s: %s", self.location.url, err)


def read(location: Location) -> dict | None:
    """The lease record at ``location`` (None if none, or unreadable: a torn write counts as free)."""
    raw = location.read_bytes(location.sidecar(layout.LEASE_SUFFIX))
    if raw is None:
        return None
    try:
        record = json.loads(raw)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def alive(record: dict) -> bool:
    """Whether the holder of ``record`` may still be writing: not expired, and (on this host) its
    process exists."""
    if float(record.get("expires", 0)) < time.time():
        return False
    if record.get("host") == socket.gethostname():
        try:
            os.kill(int(record.get("pid", -1)), 0)
        except ProcessLookupError:
            return False
        except (PermissionError, ValueError, OverflowError):
            return True
    return True


def busy(location: Location, held: dict) -> CacheError:
    """The CacheError refusing a second writer of ``location``, naming the holder of lease
    record ``held`` (host, pid) and the seconds until its lease expires."""
    wait = max(0, round(float(held.get("expires", 0)) - time.time()))
    return CacheError(
        f"another hsk extract (host {held.get('host')}, pid {held.get('pid')}) is writing {location.url!r}: "
        f"wait for it to finish, or use torchrun to share the work; if it died, its lease expires in {wait} s"
    )


def _write(location: Location, record: dict) -> None:
    payload = json.dumps(record).encode()
    key = location.sidecar(layout.LEASE_SUFFIX)
    if location.local:  # atomic on a local disk: never a torn file
        tmp = f"{key}.{record['owner']}.tmp"
        location.fs.pipe_file(tmp, payload)
        os.replace(tmp, key)
    else:  # an object PUT is atomic
        with location.reaching():  # a store lost mid-run: StoreAccessError, an OSError the heartbeat retries
            location.fs.pipe_file(key, payload)
