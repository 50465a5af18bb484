"""Extraction with each shard batched longest first (``--sort-by-length``) vs in stored order.

    python -m benchmarks.sort_by_length [--data DIR] [--examples 4096] [--repeats 3] [--quick] [--out DIR]

Both competitors are the whole ``hsk extract`` path (``extract.run``: start-up, the teacher,
selection, shard writes) over the same examples, interleaved round by round in one process, with
the bundled MiniLM-L6 teacher, 128 tokens, batch 32, shards sized as ``hsk`` sizes them, spec
"last layer, all tokens" (the stored bytes grow with the tokens kept, not with the padding).
Data: SST-2's training sentences (``../shared/data/glue/SST-2``, the first ``--examples`` rows
in file order; lengths 3-66 tokens, mean 13). Reported: examples/s (median, min-max over the
rounds), the median per-round ratio sorted / stored, the tokens the teacher forwards per real
token under each order (from the stored lengths and the batches each order makes), and the
largest difference between the two caches' stored floats (the sorted order moves rows within a
batch's matrix products, which can change the last bits).

``--quick``: a random 6 x 64 teacher, 128 toy sentences of 2-40 words, 1 round (the test
suite's smoke run). Results: ``<out>/sort_by_length.{json,md}`` (default ``benchmarks/results``).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import random
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import zarr

from benchmarks.common import RESULTS, interleave, machine, ratios, spread, summarize, write_run
from benchmarks.extract_throughput import tiny_teacher
from hsk_cache.allocator import retain_freed_memory
from hsk_cache.cli.progress import quiet_libraries
from hsk_cache.config.run import DataConfig
from hsk_cache.extraction import extract
from hsk_cache.knowledge.batch import batches_of, length_sorted
from hsk_cache.knowledge.spec import ExtractSpec
from hsk_cache.models import hub as models
from hsk_cache.store import layout

SST2 = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "glue" / "SST-2"
ORDERS = {"stored order": False, "sorted by length": True}
WORDS = "the film is a good bad long short story of love and war that never quite works".split()


def padded_tokens(lengths: np.ndarray, shard: int, batch_size: int, sort: bool) -> int:
    """Tokens the teacher forwards: each batch padded to its longest example ([N] lengths)."""
    total = 0
    for s in range(layout.num_shards(len(lengths), shard)):
        start, stop = layout.shard_range(s, len(lengths), shard)
        rows = length_sorted(lengths, start, stop) if sort else np.arange(start, stop)
        total += sum(len(b) * int(lengths[b].max()) for b in batches_of(rows, batch_size))
    return total


def toy_data(path: Path, n: int) -> None:
    """``n`` sentences of 2-40 words with labels a-e, as a CSV."""
    rng = random.Random(0)
    rows = [f"{' '.join(rng.choice(WORDS) for _ in range(rng.randint(2, 40)))},{'abcde'[i % 5]}" for i in range(n)]
    path.write_text("sentence,label\n" + "\n".join(rows) + "\n")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help=f"a GLUE task directory (default: {SST2})")
    parser.add_argument("--examples", type=int, default=None, help="default 4096 (quick 128)")
    parser.add_argument("--repeats", type=int, default=None, help="default 3 (quick 1)")
    parser.add_argument("--quick", action="store_true", help="a tiny random teacher on toy sentences, 1 round")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where the .md/.json go (default: %(default)s)")
    args = parser.parse_args(argv)
    n = args.examples or (128 if args.quick else 4096)
    repeats = args.repeats or (1 if args.quick else 3)
    began, load = time.perf_counter(), os.getloadavg()[0]
    quiet_libraries()
    retain_freed_memory()  # as the hsk command does
    work = Path(tempfile.mkdtemp(prefix="hsk-bench-"))
    try:
        if args.quick:
            teacher, source = str(work / "teacher"), work / "toy.csv"
            tiny_teacher(teacher)
            toy_data(source, n)
            data = DataConfig(source=str(source), text_columns=("sentence",), max_length=128, limit=n)
        else:
            teacher = str(work / "teacher")
            labels = ("negative", "positive")
            models.save(
                models.load_classifier(models.BUNDLED_TEACHER, label_names=labels),
                models.load_tokenizer(models.BUNDLED_TEACHER),
                teacher,
            )
            data = DataConfig(source=args.data or str(SST2), split="train", max_length=128, limit=n)
        spec = ExtractSpec.parse("last", "all")

        def run(sort: bool, out: str, limit: int | None = None) -> None:
            shutil.rmtree(out, ignore_errors=True)
            config = data if limit is None else dataclasses.replace(data, limit=limit)
            extract.run(extract.ExtractConfig(teacher=teacher, data=config, out=out, spec=spec, sort_by_length=sort))

        caches = {name: str(work / f"cache-{i}") for i, name in enumerate(ORDERS)}
        competitors = {name: (lambda s=sort, o=caches[name]: run(s, o)) for name, sort in ORDERS.items()}
        warmup = {name: (lambda s=sort, o=caches[name]: run(s, o, limit=64)) for name, sort in ORDERS.items()}
        times = interleave(competitors, repeats, warmup)
        stored, sorted_ = (zarr.open_group(caches[name], mode="r") for name in ORDERS)
        lengths = stored["lengths"][...]
        shard = int(stored["lengths"].shards[0]) if stored["lengths"].shards else len(lengths)
        floats = [k for k in stored.array_keys() if stored[k].dtype.kind == "f"]
        difference = max(float(np.abs(stored[k][...].astype(np.float64) - sorted_[k][...]).max()) for k in floats)
        same_ints = all(np.array_equal(stored[k][...], sorted_[k][...]) for k in stored.array_keys() if k not in floats)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rows = {name: summarize(t, n) for name, t in times.items()}
    for name, sort in ORDERS.items():
        rows[name]["teacher tokens / real token"] = padded_tokens(lengths, shard, 32, sort) / int(lengths.sum())
    ratio = ratios(times["stored order"], times["sorted by length"])
    head = "| order | extract ex/s | teacher tokens / real token |\n|---|---|---|\n"
    table = head + "".join(
        f"| {name} | {spread(r, 1)} | {r['teacher tokens / real token']:.2f} |\n" for name, r in rows.items()
    )
    text = (
        f"{table}\nsorted / stored, per-round ratio of examples/s: {spread(ratio)}\n\n"
        f"largest |difference| between the two caches' stored floats: {difference:.3g}; "
        f"integer arrays equal: {same_ints}"
    )
    what = "toy sentences, a random 6 x 64 teacher" if args.quick else "SST-2 train, MiniLM-L6"
    payload = {
        "benchmark": "sort_by_length",
        "command": " ".join(
            shlex.quote(a)
            for a in ["python", "-m", "benchmarks.sort_by_length", *(sys.argv[1:] if argv is None else argv)]
        ),
        "machine": machine(),
        "load_average_1min": {"start": load, "end": os.getloadavg()[0]},
        "elapsed_s": time.perf_counter() - began,
        "description": f"{n} examples ({what}), "
        f"128 tokens, batch 32, shards of {shard}, last layer / all tokens, {repeats} round(s), interleaved",
        "quick": args.quick,
        "examples": n,
        "shard_examples": shard,
        "repeats": repeats,
        "rows": rows,
        "sorted / stored": ratio,
        "max_abs_difference": difference,
        "integers_equal": same_ints,
    }
    write_run(args.out, "sort_by_length", payload, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
