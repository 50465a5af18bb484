"""Shuffled examples/s delivered by the cache loader, cold and warm page cache.

    python -m benchmarks.loader [--examples 50000] [--repeats 3]

A synthetic cache of 50,000 examples × 1 layer × top-16 tokens × 768 dims float16 (1.2 GB of
hidden states, 128-token ids), written with the real writer. Competitors, interleaved:

- loader (in memory): ``Cache`` (``open_cache``) reads the knowledge once as contiguous chunks, then serves
  a full shuffle; timed: open + read + one epoch of batches of 32, decoded to float32 tensors;
- loader (shard windows): the same cache under a 256 MB memory budget (shard-window shuffle);
- random zarr reads: batches of 32 random rows read straight from Zarr (the naive way).

"cold" evicts the cache files from the page cache first (posix_fadvise DONTNEED), "warm" reads
them right after a previous pass.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import zarr

from benchmarks.common import write
from hsk_cache.cli.progress import quiet_libraries
from hsk_cache.data.cache import open_cache
from hsk_cache.knowledge.plan import Plan
from hsk_cache.knowledge.spec import ExtractSpec
from hsk_cache.models import hub as models
from hsk_cache.store import layout
from hsk_cache.store.writer import CacheWriter

D, K, T, BATCH = 768, 16, 128, 32


def build(path: str, n: int) -> None:
    spec = ExtractSpec.parse("last", f"topk:{K}", dtype="float16")
    plan = Plan(
        spec=spec, max_length=T, kept_tokens=K, teacher_layers=12, hidden_size=D, heads=12, classes=2, layers=(12,)
    )
    specs = layout.arrays(plan, n, token_types=True)
    chunk, shard = layout.chunking(specs, n)
    config = {"num_hidden_layers": 12, "hidden_size": D, "num_attention_heads": 12, "vocab_size": 30522}
    manifest = {
        "format": layout.FORMAT_NAME,
        "format_version": layout.FORMAT_VERSION,
        "teacher": {
            "path": "synthetic",
            "weights_sha256": "0",
            "num_layers": 12,
            "hidden_size": D,
            "num_heads": 12,
            "config": config,
        },
        "data": {"num_examples": n, "label_names": ["a", "b"], "fingerprint": "synthetic"},
        "max_length": T,
        "spec": spec.describe(),
        "layers": [12],
        "attention_layers": [],
        "value_relation_layer": None,
        "dims": {
            "kept_tokens": K,
            "hidden_size": D,
            "kept_dims": D,
            "slots": 0,
            "heads": 12,
            "classes": 2,
            "token_types": True,
        },
        "precision": "fp32",
        "layout": {"chunk_examples": chunk, "shard_examples": shard, "num_shards": layout.num_shards(n, shard)},
        "counts": {},
        "complete": False,
    }
    writer = CacheWriter.open(path, manifest, specs)
    writer.write_tokenizer(models.load_tokenizer(models.BUNDLED_TEACHER))
    rng = np.random.default_rng(0)
    for s in range(layout.num_shards(n, shard)):
        a, b = layout.shard_range(s, n, shard)
        m = b - a
        lengths = rng.integers(K + 2, T + 1, m).astype(np.int32)
        writer.write_shard(
            s,
            a,
            {
                "input_ids": rng.integers(1000, 30000, (m, T)).astype(np.int32),
                "lengths": lengths,
                "token_type_ids": np.zeros((m, T), np.int8),
                "labels": rng.integers(0, 2, m),
                "example_ids": np.arange(a, b),
                "token_index": np.tile(np.arange(K, dtype=np.int16), (m, 1, 1)),
                "hidden_states": rng.standard_normal((m, 1, K, D), dtype=np.float32).astype(np.float16),
                "logits": rng.standard_normal((m, 2), dtype=np.float32),
            },
        )
    writer.finish({"examples": n})


def evict(path: str) -> None:
    for file in Path(path).rglob("*"):
        if file.is_file():
            fd = os.open(file, os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def epoch_with_loader(path: str, budget: int) -> float:
    start = time.perf_counter()
    source = open_cache(path, memory_budget_bytes=budget)
    for item in source.sampler(BATCH, seed=0):
        source.fetch(item)
    return time.perf_counter() - start


def random_zarr_reads(path: str, batches: int) -> float:
    """Seconds per example of reading random batches straight from Zarr."""
    group = zarr.open_group(path, mode="r")
    hidden, n = group["hidden_states"], group["hidden_states"].shape[0]
    rng = np.random.default_rng(1)
    start = time.perf_counter()
    for _ in range(batches):
        hidden.get_orthogonal_selection((np.sort(rng.choice(n, BATCH, replace=False)),))
    return (time.perf_counter() - start) / (batches * BATCH)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=50_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    quiet_libraries()
    work = tempfile.mkdtemp(prefix="hsk-loader-")
    path = f"{work}/cache"
    build(path, args.examples)
    competitors = {"loader (in memory)": 8 << 30, "loader (shard windows, 256 MB budget)": 256 << 20}
    rates = {f"{name}, {state}": [] for name in competitors for state in ("cold", "warm")}
    random_rates = []
    for _ in range(args.repeats):
        for name, budget in competitors.items():
            evict(path)
            rates[f"{name}, cold"].append(args.examples / epoch_with_loader(path, budget))
            rates[f"{name}, warm"].append(args.examples / epoch_with_loader(path, budget))
        random_rates.append(1 / random_zarr_reads(path, 30))
    rates["random zarr batch reads, warm"] = random_rates
    shutil.rmtree(work, ignore_errors=True)
    summary = {
        name: {"median": statistics.median(r), "min": min(r), "max": max(r), "examples_per_s": r}
        for name, r in rates.items()
    }
    lines = ["| competitor | shuffled examples/s, median (min–max) |", "|---|---|"]
    lines += [f"| {name} | {s['median']:,.0f} ({s['min']:,.0f}–{s['max']:,.0f}) |" for name, s in summary.items()]
    write(
        "loader",
        {"examples": args.examples, "tokens": K, "dims": D, "dtype": "float16", "batch": BATCH, "results": summary},
        "\n".join(lines),
    )


if __name__ == "__main__":
    main()
