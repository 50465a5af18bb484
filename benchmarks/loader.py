"""Opening a cache, steady-state batches and the first batch: the cache loader against bare reads.

    python -m benchmarks.loader [--examples 50000] [--repeats 3] [--epochs 3] [--quick] [--out DIR]

A synthetic cache of N examples × 1 layer × top-16 kept tokens × 768 dims float16 (N = 50,000:
1.2 GB of hidden states; 128-token ids, int8 token types, float32 logits), written with the real
writer under the manifest ``hsk extract`` makes (``extract._manifest`` of a ``Prepared`` holding
the synthetic examples, so the benchmark cannot drift from the typed manifest again). Competitors,
interleaved in every repeat (the order rotates), medians of ``--repeats`` with min–max:

(a) open and read, GB/s of the cache's bytes on disk: ``open_cache`` (manifest, commit records,
    tokenizer, every array read with every chunk's crc32c checked) against a plain sequential
    read of the same files (``open(f, 'rb').read()`` of every file under the cache directory);
    warm (right after a previous pass) and cold (every file's pages dropped first with
    ``posix_fadvise(DONTNEED)``; ``cold_evicts`` says whether that made the plain read slower).
    The plain read drops each file's bytes at once, so it reuses one buffer; for reference, the
    same read into new memory kept until the pass ends (``readinto`` a fresh array per file, as
    any reader holding the cache must), and the rate of a first write into as much fresh memory
    (the page faults such a reader pays), and ``open_cache`` with every shard read by zarr
    instead of ``store.shards``' direct read (``store.shards.ENABLED`` off);
(b) steady state, examples/s over ``--epochs`` epochs once the cache is in memory:
    ``cache.loader(32, seed)`` (collate, gather, decode to float32 tensors, prefetch 1) against a
    bare numpy gather of the same arrays (a random permutation; per batch of 32,
    ``arr[idx].astype(np.float32)`` of every array the loader reads), and the same gather
    converting with torch (``torch.from_numpy(arr[idx]).float()``, as the loader's decode does:
    numpy's float16 cast is the slow part of the numpy one);
(c) time to the first batch: ``open_cache`` + the first batch of ``cache.loader(32, seed)``,
    warm page cache, once per repeat right after the steady-state runs (no warm-up open, unlike
    (a): its arrays land in memory new to the process, as at the start of training), and the
    first batch's own part.

Targets: (a) open_cache ≥ 0.5× the plain read, (b) the loader ≥ 0.8× the bare gather. Results
go to ``<out>/loader.md`` and ``.json`` (default ``benchmarks/results``), with the machine.
``--quick`` (2,000 examples, 2 epochs) is the test suite's smoke run.
"""

from __future__ import annotations

import argparse
import gc
import os
import shlex
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import RESULTS, machine, ratios, write_run
from hsk_cache.cli.progress import quiet_libraries
from hsk_cache.data.cache import open_cache
from hsk_cache.store import shards

D, K, T, BATCH = 768, 16, 128, 32
TARGETS = {"open_cache / plain read, warm": 0.5, "open_cache / plain read, cold": 0.5, "loader / bare gather": 0.8}


def build(path: str, n: int) -> None:
    """Write the synthetic cache of ``n`` examples at ``path`` (module docstring)."""
    import datasets
    from transformers import BertConfig

    from hsk_cache.config.run import DataConfig
    from hsk_cache.extraction import extract
    from hsk_cache.knowledge.batch import Examples
    from hsk_cache.knowledge.plan import Plan
    from hsk_cache.knowledge.spec import ExtractSpec
    from hsk_cache.models import hub
    from hsk_cache.store import layout
    from hsk_cache.store.writer import CacheWriter, tokenizer_files

    spec = ExtractSpec.parse("last", f"topk:{K}", dtype="float16")
    data = DataConfig(source="synthetic", max_length=T)
    config = extract.ExtractConfig(teacher=hub.BUNDLED_TEACHER, data=data, out=path, spec=spec)
    teacher = BertConfig(num_hidden_layers=12, hidden_size=D, num_attention_heads=12, num_labels=2)
    tokenizer = hub.load_tokenizer(hub.BUNDLED_TEACHER)
    plan = Plan.make(spec, teacher, tokenizer, T)
    rng = np.random.default_rng(0)
    lengths = rng.integers(K + 2, T + 1, n).astype(np.int32)
    ids = rng.integers(1000, 30000, (n, T)).astype(np.int32)
    ids[np.arange(T)[None, :] >= lengths[:, None]] = tokenizer.pad_token_id
    examples = Examples(ids, np.zeros((n, T), np.int8), lengths, rng.integers(0, 2, n), np.arange(n))
    tokenized = datasets.Dataset.from_dict(  # what the manifest's fingerprint hashes
        {"input_ids": [row[:length].tolist() for row, length in zip(ids, lengths)], "label": examples.labels}
    )
    specs = layout.arrays(plan, n, token_types=True)
    chunk, shard = layout.chunking(specs, n)
    prepared = extract.Prepared(tokenizer, None, teacher, None, tokenized, examples, plan, specs, chunk, shard)
    stored_tokenizer = tokenizer_files(tokenizer)
    weights = hub.weights_sha256(hub.resolve(config.teacher))
    writer = CacheWriter.open(path, extract._manifest(config, prepared, stored_tokenizer, weights), specs)
    try:
        writer.write_tokenizer(stored_tokenizer)
        for s in range(layout.num_shards(n, shard)):
            a, b = layout.shard_range(s, n, shard)
            block = {
                "input_ids": ids[a:b],
                "lengths": lengths[a:b],
                "token_type_ids": examples.token_type_ids[a:b],
                "labels": examples.labels[a:b],
                "example_ids": examples.example_ids[a:b],
                "token_index": np.tile(np.arange(K, dtype=np.int16), (b - a, 1, 1)),
                "hidden_states": rng.standard_normal((b - a, 1, K, D), dtype=np.float32).astype(np.float16),
                "logits": rng.standard_normal((b - a, 2), dtype=np.float32),
            }
            writer.write_shard(s, a, block)
        writer.finish({"examples": n})
    finally:
        writer.close()


def files_of(path: str) -> list[Path]:
    """Every file under the cache directory, in a fixed order."""
    return sorted(f for f in Path(path).rglob("*") if f.is_file())


def evict(path: str) -> None:
    """Drop the cache files' pages from the page cache (``posix_fadvise(DONTNEED)``)."""
    for file in files_of(path):
        fd = os.open(file, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def plain_read(path: str) -> float:
    """Seconds to read every file of the cache once, sequentially."""
    start = time.perf_counter()
    for file in files_of(path):
        with open(file, "rb") as handle:
            handle.read()
    return time.perf_counter() - start


def plain_read_kept(path: str) -> float:
    """Seconds to read every file of the cache once, sequentially, each into new memory kept
    until the pass ends (``readinto`` a fresh array per file), as any reader holding them must."""
    start, kept = time.perf_counter(), []
    for file in files_of(path):
        with open(file, "rb", buffering=0) as handle:
            buffer = np.empty(os.fstat(handle.fileno()).st_size, np.uint8)
            handle.readinto(buffer)
            kept.append(buffer)
    seconds = time.perf_counter() - start
    del kept
    return seconds


def open_and_read(path: str) -> float:
    """Seconds of ``open_cache``: every array read into memory, every chunk checked."""
    start = time.perf_counter()
    cache = open_cache(path)
    seconds = time.perf_counter() - start
    del cache
    gc.collect()
    return seconds


def open_and_read_zarr(path: str) -> float:
    """``open_and_read`` with every shard read by zarr (``store.shards.ENABLED`` off)."""
    shards.ENABLED = False
    try:
        return open_and_read(path)
    finally:
        shards.ENABLED = True


def loader_epochs(cache, epochs: int) -> float:
    """Examples/s of ``cache.loader(32)`` over ``epochs`` epochs (every tensor of every batch made)."""
    loader, examples = cache.loader(BATCH, seed=0), 0
    start = time.perf_counter()
    for _ in range(epochs):
        for batch in loader:
            examples += len(batch["example_ids"])
    return examples / (time.perf_counter() - start)


def bare_gather(cache, epochs: int, convert=lambda rows: rows.astype(np.float32)) -> float:
    """Examples/s of the bare gather of the loader's arrays (module docstring): per batch of 32
    of a random permutation, ``convert(arr[idx])`` of every array."""
    e = cache.examples
    arrays = [e.input_ids, e.token_type_ids, e.lengths, e.labels, e.example_ids, *cache.arrays.values()]
    n, examples = len(cache), 0
    start = time.perf_counter()
    for epoch in range(epochs):
        order = np.random.default_rng([0, epoch]).permutation(n)
        for i in range(0, n, BATCH):
            idx = order[i : i + BATCH]
            for values in arrays:
                convert(values[idx])
            examples += len(idx)
    return examples / (time.perf_counter() - start)


def bare_gather_torch(cache, epochs: int) -> float:
    """``bare_gather`` converting with torch (``torch.from_numpy(arr[idx]).float()``), as the loader does."""
    return bare_gather(cache, epochs, lambda rows: torch.from_numpy(rows).float())


def first_touch(total_bytes: int) -> float:
    """Seconds to write once into as many bytes of fresh memory as the cache holds (the page
    faults any reader into new arrays pays, and a read into one reused buffer does not)."""
    start = time.perf_counter()
    np.ones(total_bytes, np.uint8)
    return time.perf_counter() - start


def first_batch(path: str) -> tuple[float, float]:
    """(seconds of ``open_cache`` + the first loader batch, seconds of that first batch alone)."""
    start = time.perf_counter()
    cache = open_cache(path)
    opened = time.perf_counter()
    loader = iter(cache.loader(BATCH, seed=0))
    next(loader)
    end = time.perf_counter()
    loader.close()
    del cache, loader
    gc.collect()
    return end - start, end - opened


def summary(values: list[float], unit: str) -> dict:
    """Median, min, max (and every value) of one competitor's repeats."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "unit": unit, "values": values}


def run(path: str, repeats: int, epochs: int, total_bytes: int) -> dict:
    """Every competitor ``repeats`` times, interleaved (the order rotates each repeat)."""
    names = (
        "plain read, warm",
        "plain read into kept memory, warm",
        "open_cache, warm",
        "open_cache, zarr read, warm",
        "plain read, cold",
        "plain read into kept memory, cold",
        "open_cache, cold",
        "open_cache, zarr read, cold",
        "fresh memory, first touch",
    )
    seconds = {name: [] for name in names}
    rates = {"loader": [], "bare gather": [], "bare gather, torch conversion": []}
    first = {"open_cache + first batch": [], "first batch after open": []}
    cache = open_cache(path)  # steady state: one cache in memory, every repeat
    for repeat in range(repeats):
        reads = [("plain read", plain_read), ("plain read into kept memory", plain_read_kept)]
        reads += [("open_cache", open_and_read), ("open_cache, zarr read", open_and_read_zarr)]
        steady = [("loader", loader_epochs), ("bare gather", bare_gather)]
        steady.append(("bare gather, torch conversion", bare_gather_torch))
        if repeat % 2:
            reads, steady = reads[::-1], steady[::-1]
        for name, fn in reads:
            fn(path)  # warm the page cache with this very reader
            seconds[f"{name}, warm"].append(fn(path))
        for name, fn in reads:
            evict(path)
            seconds[f"{name}, cold"].append(fn(path))
        seconds["fresh memory, first touch"].append(first_touch(total_bytes))
        for name, fn in steady:
            rates[name].append(fn(cache, epochs))
        total, alone = first_batch(path)
        first["open_cache + first batch"].append(total)
        first["first batch after open"].append(alone)
    gb = total_bytes / 1e9
    competitors = {f"{name} (GB/s)": summary([gb / s for s in values], "GB/s") for name, values in seconds.items()}
    competitors |= {f"{name} (examples/s)": summary(values, "examples/s") for name, values in rates.items()}
    competitors |= {f"{name} (s)": summary(values, "s") for name, values in first.items()}
    ratio = {
        "open_cache / plain read, warm": ratios(seconds["plain read, warm"], seconds["open_cache, warm"]),
        "open_cache / plain read, cold": ratios(seconds["plain read, cold"], seconds["open_cache, cold"]),
        "open_cache / plain read into kept memory, warm": ratios(
            seconds["plain read into kept memory, warm"], seconds["open_cache, warm"]
        ),
        "open_cache / plain read into kept memory, cold": ratios(
            seconds["plain read into kept memory, cold"], seconds["open_cache, cold"]
        ),
        "open_cache / open_cache with zarr's read, warm": ratios(
            seconds["open_cache, zarr read, warm"], seconds["open_cache, warm"]
        ),
        "open_cache / open_cache with zarr's read, cold": ratios(
            seconds["open_cache, zarr read, cold"], seconds["open_cache, cold"]
        ),
        "loader / bare gather": ratios(rates["loader"], rates["bare gather"]),
        "loader / bare gather, torch conversion": ratios(rates["loader"], rates["bare gather, torch conversion"]),
    }
    for name, target in TARGETS.items():
        ratio[name]["target"] = target
    cold_evicts = statistics.median(seconds["plain read, cold"]) > 1.5 * statistics.median(seconds["plain read, warm"])
    return {"competitors": competitors, "ratios": ratio, "cold_evicts": cold_evicts}


def table(results: dict) -> str:
    """The Markdown tables of ``results``."""
    digits = {"GB/s": 2, "examples/s": 0, "s": 3}
    lines = ["| competitor | median (min–max) |", "|---|---|"]
    for name, s in results["competitors"].items():
        d = digits[s["unit"]]
        lines.append(f"| {name} | {s['median']:,.{d}f} ({s['min']:,.{d}f}–{s['max']:,.{d}f}) |")
    lines += ["", "| ratio (per repeat) | median (min–max) | target |", "|---|---|---|"]
    for name, r in results["ratios"].items():
        target = f"≥ {r['target']}×" if "target" in r else "–"
        lines.append(f"| {name} | {r['median']:.2f}× ({r['min']:.2f}–{r['max']:.2f}) | {target} |")
    touch = results["competitors"]["fresh memory, first touch (GB/s)"]
    if touch["max"] > 3 * touch["min"]:
        lines += [
            "",
            f"A first write into fresh memory ran at {touch['min']:.2f}–{touch['max']:.2f} GB/s in this run: page "
            "faults (transparent huge pages, the host's memory) varied that much, and every reader that keeps what it "
            "reads (open_cache, the read into kept memory) varies with them; the plain read reuses one buffer.",
        ]
    if not results["cold_evicts"]:
        lines += ["", "posix_fadvise(DONTNEED) did not slow the plain read down here: the cold rows are warm reads."]
    return "\n".join(lines)


def write(out: Path, payload: dict, text: str) -> None:
    """``<out>/loader.json`` (the payload with the machine) and ``.md`` (header + tables)."""
    extra = (
        f"This run: {payload['examples']:,} examples ({payload['cache_bytes'] / 1e9:.2f} GB on disk), "
        f"{payload['repeats']} repeats, {payload['epochs']} epochs per steady-state run, batch {BATCH}.\n\n"
    )
    write_run(out, "loader", payload, text, extra)


def main(argv=None) -> int:
    """Run the benchmark (module docstring); returns 0."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=None, help="cache size (default 50,000; quick 2,000)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=None, help="epochs per steady-state run (default 3; quick 2)")
    parser.add_argument("--quick", action="store_true", help="2,000 examples, 2 epochs: a smoke run")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where loader.md/.json go")
    args = parser.parse_args(argv)
    quiet_libraries()
    examples = args.examples or (2_000 if args.quick else 50_000)
    epochs = args.epochs or (2 if args.quick else 3)
    started, load_start = time.perf_counter(), os.getloadavg()[0]
    work = tempfile.mkdtemp(prefix="hsk-loader-")
    try:
        path = f"{work}/cache"
        build(path, examples)
        cache_bytes = sum(f.stat().st_size for f in files_of(path))
        results = run(path, args.repeats, epochs, cache_bytes)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    command = ["python", "-m", "benchmarks.loader", *(argv if argv is not None else [])]
    payload = {
        "benchmark": "loader",
        "command": " ".join(shlex.quote(a) for a in command),
        "machine": machine(),
        "description": __doc__.split("\n\n", 2)[2].split("\n\nTargets")[0].strip(),
        "examples": examples,
        "cache_bytes": cache_bytes,
        "tokens": K,
        "dims": D,
        "dtype": "float16",
        "batch": BATCH,
        "repeats": args.repeats,
        "epochs": epochs,
        "quick": args.quick,
        "elapsed_s": time.perf_counter() - started,
        "load_average_1min": {"start": load_start, "end": os.getloadavg()[0]},
        "results": results,
    }
    write(args.out, payload, table(results))
    return 0


if __name__ == "__main__":
    import sys

    raise SystemExit(main(sys.argv[1:]))
