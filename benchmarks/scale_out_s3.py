"""Part 3 of ``benchmarks.scale_out`` (its module docstring): one cache read from a local moto S3
server vs from local disk, in memory and in shard windows."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request

from benchmarks.common import interleave, ratios, spread, summarize
from benchmarks.scale_out import BATCH, compare, disk_bytes, extract_args, hsk, local_group, shard_examples, timed


def moto_server() -> tuple[subprocess.Popen, dict]:
    """A moto S3 server on a free 127.0.0.1 port with bucket ``hsk``: (process, storage options)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1)
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("moto server did not start") from None
                time.sleep(0.2)
        options = {
            "key": "testing",
            "secret": "testing",
            "client_kwargs": {"endpoint_url": endpoint, "region_name": "us-east-1"},
        }
        import fsspec

        fsspec.filesystem("s3", **options).call_s3("create_bucket", Bucket="hsk")
    except BaseException:
        stop(server)
        raise
    return server, options


def stop(server: subprocess.Popen) -> None:
    server.terminate()
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


def object_store(teacher: str, work: str, n: int, repeats: int) -> dict:
    import zarr

    from hsk_cache import open_cache
    from hsk_cache.store.location import Location

    server, options = moto_server()
    try:
        local, url = f"{work}/s3_local_cache", "s3://hsk/bench/cache"
        shard = shard_examples(n)
        timed(hsk(*extract_args(teacher, n, local, shard)), None)
        timed(hsk(*extract_args(teacher, n, url, shard, "--storage-options", json.dumps(options))), None)
        remote = Location.of(url, options)
        check = compare(local_group(local), zarr.open_group(store=remote.store(read_only=True), mode="r"))
        check.update(bytes_disk=disk_bytes(local), bytes_s3=remote.stored_bytes())
        print(f"  disk vs S3 caches identical: {check['identical']}", flush=True)

        def epoch(path: str, opts: dict | None, budget: int | None):
            def run() -> None:
                sizes = {} if budget is None else {"memory_budget_bytes": budget}
                cache = open_cache(path, storage_options=opts, **sizes)
                for _ in cache.loader(BATCH, seed=0, prefetch=1):
                    pass

            return run

        competitors = {
            "in memory, disk": epoch(local, None, None),
            "in memory, S3": epoch(url, options, None),
            "shard windows, disk": epoch(local, None, 1),
            "shard windows, S3": epoch(url, options, 1),
        }
        times = interleave(competitors, repeats)
        for name, t in times.items():
            print(f"  {name}: {n / t[-1]:,.0f} ex/s", flush=True)
        remote.remove()
    finally:
        stop(server)
    result = {name: summarize(t, n) for name, t in times.items()}
    for mode in ("in memory", "shard windows"):
        result[f"{mode}, S3 / disk"] = ratios(times[f"{mode}, disk"], times[f"{mode}, S3"])
    return {"examples": n, "shard_examples": shard, "shards": -(-n // shard), "check": check, **result}


def object_store_table(r: dict) -> str:
    lines = ["| mode | disk ex/s | S3 (moto) ex/s | S3 / disk |", "|---|---|---|---|"]
    for mode in ("in memory", "shard windows"):
        lines.append(
            f"| {mode} | {spread(r[f'{mode}, disk'], 0)} | {spread(r[f'{mode}, S3'], 0)} | "
            f"{spread(r[f'{mode}, S3 / disk'], 2, '×')} |"
        )
    c = r["check"]
    notes = (
        f"One cache of {r['examples']} examples ({r['shards']} shards of {r['shard_examples']}; "
        f"{c['bytes_disk']:,} bytes on disk, {c['bytes_s3']:,} on S3; the two "
        f"{'bitwise identical' if c['identical'] else 'DIFFERENT: ' + ', '.join(c['differing'])}), "
        "read by `open_cache` + one epoch of `cache.loader(32, seed=0, prefetch=1)`, both timed, from a local "
        "directory (warm page cache) and from `s3://hsk/bench/cache` on a moto S3 server on 127.0.0.1 "
        "(zarr's FsspecStore over s3fs). In memory: the default budget, the open reads every array once; shard "
        "windows: `memory_budget_bytes=1`, every shard's files checked (crc32c) at open, then one shard read at a "
        "time as the epoch reaches it. The server is local and shares the machine's cores, so this measures "
        "the HTTP/S3 protocol and request overhead, not a real network's latency or bandwidth."
    )
    return "\n".join(lines) + "\n\n" + notes
