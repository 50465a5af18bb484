"""The ``hsk`` subcommands that inspect a cache without changing it: ``info`` and ``verify``."""

from __future__ import annotations

import json

from hsk_cache.cli.progress import bar
from hsk_cache.config.run import check_device, parse_storage_options


def info(a) -> int:
    """``hsk info``: the manifest, the stored size against full float32 hidden states, completeness."""
    from hsk_cache.store.info import cache_info

    found = cache_info(a.cache, parse_storage_options(a.storage_options))
    if a.json:
        print(json.dumps(found, indent=2))
        return 0
    m = found["manifest"]
    print(json.dumps(m, indent=2, default=str))
    print(
        f"stored: {size(found['stored_bytes'])} ({size(found['bytes_per_example'])}/example) for "
        f"{m['data']['num_examples']} examples; full float32 hidden states would be "
        f"{size(found['full_hidden_bytes_per_example'])}/example: {found['ratio_to_full']:.1f}× smaller"
    )
    print(
        f"complete: {'yes' if found['complete'] else 'no'} "
        f"({found['committed_shards']}/{m['layout']['num_shards']} shards)"
    )
    return 0


def verify(a) -> int:
    """``hsk verify``: the cache's problems as a table, and with ``--against-teacher`` the
    recompute's; exit status 0 when all is well, 1 otherwise."""
    from dataclasses import asdict

    from hsk_cache.store import verify as checks

    options = parse_storage_options(a.storage_options)
    r = checks.verify(
        a.cache, lambda description, total, initial: bar(description, total, initial, unit="shard"), options
    )
    recheck = None
    if a.against_teacher is not None and r.ok:  # a damaged cache is repaired first
        from hsk_cache.extraction import against_teacher

        recheck = against_teacher.against_teacher(
            a.cache, a.against_teacher, a.sample, a.seed, a.batch_size, check_device(a.device), options
        )
    ok = r.ok and (recheck is None or recheck.ok)
    if a.json:
        extra = {} if recheck is None else {"against_teacher": recheck.to_dict()}
        print(json.dumps({**asdict(r), "bad_shards": r.bad_shards, "ok": ok, **extra}))
        return 0 if ok else 1
    if recheck is not None:
        print(against_teacher.table(recheck))
        for line in recheck.notes:
            print(f"note: {line}")
        weights = "the same weights as" if recheck.same_weights else "other weights than"
        verdict = "matches" if recheck.ok else "MISMATCH"
        print(
            f"against teacher: {verdict}; {recheck.sample} examples recomputed with {weights} the cache's teacher, "
            f"{recheck.elapsed_s:.1f} s"
        )
        for line in recheck.mismatches:
            print(f"mismatch: {line}")
    if r.problems:
        print(checks.table(r))
    state = "complete" if r.complete else f"incomplete ({r.committed}/{r.num_shards} shards extracted)"
    others = sum(p.shard is None for p in r.problems)
    verdict = "ok" if not r.problems else f"{len(r.bad_shards)} bad shards, {others} other problems"
    print(f"verify: {verdict}; {r.committed} shards checked ({size(r.checked_bytes)}), {state}, {r.elapsed_s:.1f} s")
    if r.problems:
        from hsk_cache.store.reader import SEAL_FIX, CacheReader

        if any(p.array == checks.MANIFEST for p in r.problems):
            print(f"repair: {SEAL_FIX}")
        else:
            print(f"repair: {CacheReader(a.cache, options, check_seal=False).repair_command}")
    return 0 if ok else 1


def size(n: float) -> str:
    """``n`` bytes as text: ``512 B``, ``3.2 MB`` (powers of 1000)."""
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n:.0f} B"
        n /= 1000
    return f"{n:.1f} GB"
