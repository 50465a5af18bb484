"""Two independent ``hsk extract`` runs on one --out: the second is refused while the first's lease
lives; a lease left by a dead process (this host) or expired (any host) is taken over."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from hsk_cache.cli import main
from hsk_cache.errors import CacheError
from hsk_cache.store import lease
from hsk_cache.store.location import Location
from tests.conftest import fails


def args(teacher, data, out):
    return [
        "extract",
        "--teacher",
        teacher,
        "--data",
        data,
        "--out",
        out,
        "--max-length",
        "32",
        "--shard-examples",
        "16",
    ]


def test_a_second_writer_is_refused_while_the_first_holds_the_cache(tiny_teacher, toy_dir, tmp_path, capsys):
    out = tmp_path / "cache"
    held = lease.WriterLease.acquire(Location.of(out))  # this process: alive
    try:
        err = fails(capsys, args(tiny_teacher, toy_dir, str(out)), "another hsk extract", "is writing", "torchrun")
        assert f"pid {__import__('os').getpid()}" in err
        assert not out.exists()  # nothing written
        with pytest.raises(CacheError, match="is writing"):
            lease.WriterLease.acquire(Location.of(out))
    finally:
        held.release()
    assert not Path(f"{out}.hsk-writer.json").exists()
    assert main(args(tiny_teacher, toy_dir, str(out))) == 0


@pytest.mark.parametrize(
    "record",
    [
        {"host": __import__("socket").gethostname(), "pid": 2**22 + 7, "expires": time.time() + 3600},  # dead pid
        {"host": "elsewhere", "pid": 1, "expires": time.time() - 1},  # another machine, expired
    ],
    ids=["dead-process", "expired"],
)
def test_a_stale_lease_is_taken_over(tiny_teacher, toy_dir, tmp_path, record):
    out = tmp_path / "cache"
    Path(f"{out}.hsk-writer.json").write_text(json.dumps({"owner": "crashed", **record}))
    assert main(args(tiny_teacher, toy_dir, str(out))) == 0
    assert not Path(f"{out}.hsk-writer.json").exists()


def test_a_live_lease_of_another_host_is_respected(tmp_path):
    out = tmp_path / "cache"
    Path(f"{out}.hsk-writer.json").write_text(
        json.dumps({"owner": "x", "host": "elsewhere", "pid": 1, "expires": time.time() + 60})
    )
    with pytest.raises(CacheError, match=r"host elsewhere.*expires in \d+ s"):
        lease.WriterLease.acquire(Location.of(out))


def test_a_writer_whose_lease_was_taken_over_stops(tmp_path):
    location = Location.of(tmp_path / "cache")
    held = lease.WriterLease(location, {"owner": "me"}, ttl_s=60)
    held.lost = {"host": "elsewhere", "pid": 9}
    with pytest.raises(CacheError, match="took over"):
        held.check()
