"""Scale-out: extraction on 1 vs 2 ranks, DDP training steps, and a cache read from S3 vs local disk.

    python -m benchmarks.scale_out [--quick] [--repeats 3] [--extract-examples 1024]
        [--train-examples 512] [--s3-examples 1024] [--parts extract,train,s3] [--out DIR]

Teacher: the bundled MiniLM-L6 re-saved with a 5-class head; data: BBC News train, max length 128;
spec: layers 2,4,6, tokens topk:10%, batch 32. Every cache has ``--shard-examples`` N/8 (a power of
two; 8 shards), so that two ranks have shards to share and shard windows have windows to visit (the
default ~32 MiB shard would hold all of these examples in one). Three measurements, each run
interleaved, ``--repeats`` rounds (``--quick``: N = 128, 64, 128 and 1 round unless given, a smoke
run; results go to ``<out>/scale_out.{json,md}``, ``--out`` default ``benchmarks/results``):

1. extraction: wall time of the whole process (start-up, tokenizing, teacher, writes: what a user
   pays), examples/s = N / wall, of ``python -m hsk_cache.cli extract`` (one process, default
   threads), ``python -m torch.distributed.run --standalone --nproc-per-node 2 -m hsk_cache.cli
   extract`` (OMP_NUM_THREADS=1 per rank) and a bare teacher forward loop in a subprocess over the
   same batches at the same precision (``python -m benchmarks.scale_out --bare``). After each
   round the 1-rank and 2-rank caches are compared array by array (tokenizer and shard commits
   included) with ``tobytes``, and their stored bytes recorded.
2. DDP training: ``hsk train --from-cache`` (TinyBERT4 student 4×312, one hidden-state epoch,
   global batch 32) as one process vs ``torchrun --nproc-per-node 2`` (16 per rank); examples/s
   of the stage as the run reports it in ``hsk_train.json`` (``result.stages``), and process wall.
3. S3 vs disk: one cache extracted to a local directory and to ``s3://hsk/bench/cache`` on a
   local moto S3 server; time ``open_cache`` + one epoch of ``cache.loader(32, seed=0,
   prefetch=1)`` in memory (default budget: the open reads everything) and in shard windows
   (``memory_budget_bytes=1``: one shard read at a time, on demand). Its code is in
   ``benchmarks/scale_out_s3.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import RESULTS, interleave, machine, ratios, spread, summarize

ROOT = Path(__file__).resolve().parents[1]
SPEC = ["--data", "bbc-news", "--split", "train", "--max-length", "128", "--layers", "2,4,6", "--tokens", "topk:10%"]
BATCH = 32
STUDENT = ["--student-layers", "4", "--student-hidden", "312", "--student-heads", "12", "--student-ffn", "1200"]
TRAIN = ["--hidden-epochs", "1", "--pred-epochs", "0", "--hidden-batch-size", str(BATCH), "--num-workers", "1"]
TRAIN += ["--save-every", "0", "--overwrite"]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
QUICK = {"extract_examples": 128, "train_examples": 64, "s3_examples": 128, "repeats": 1}
FULL = {"extract_examples": 1024, "train_examples": 512, "s3_examples": 1024, "repeats": 3}


# -- subprocesses ----------------------------------------------------------------------------------


def environment(threads: int | None) -> dict:
    """This environment with the repository importable; OMP_NUM_THREADS set, or unset (torch's default)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("OMP_NUM_THREADS", None)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def timed(command: list[str], threads: int | None) -> tuple[float, str]:
    """Run ``command`` to completion: (wall seconds, stdout). Raises with the stderr tail on failure."""
    start = time.perf_counter()
    run = subprocess.run(command, capture_output=True, text=True, env=environment(threads), cwd=ROOT)
    wall = time.perf_counter() - start
    if run.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited {run.returncode}:\n{run.stderr[-3000:]}")
    return wall, run.stdout


def hsk(*args: str, ranks: int = 1) -> list[str]:
    """``python -m hsk_cache.cli ARGS``, or under ``torchrun --nproc-per-node 2``."""
    return [*(TORCHRUN if ranks == 2 else [sys.executable]), "-m", "hsk_cache.cli", *args]


def extract_args(teacher: str, n: int, out: str, shard: int, *extra: str) -> list[str]:
    sizes = ["--limit", str(n), "--batch-size", str(BATCH), "--shard-examples", str(shard)]
    return ["extract", "--teacher", teacher, "--out", out, *SPEC, *sizes, *extra]


def reported_elapsed(stdout: str) -> float | None:
    """The elapsed seconds ``hsk extract`` prints on its summary line (rank 0's), if found."""
    found = re.search(r"^extract: .* ([0-9.]+) s → ", stdout, re.MULTILINE)
    return float(found.group(1)) if found else None


def bare(teacher: str, n: int) -> None:
    """The teacher's forward passes over extraction's batches (``--bare``), nothing else."""
    import torch

    from hsk_cache.cli.progress import quiet_libraries
    from hsk_cache.config.run import DataConfig
    from hsk_cache.data import splits as data
    from hsk_cache.knowledge.batch import Examples, collate, sequential_batches
    from hsk_cache.knowledge.spec import ExtractSpec
    from hsk_cache.models import hub as models
    from hsk_cache.models.inputs import model_inputs
    from hsk_cache.models.teacher import autocast

    quiet_libraries()
    spec = ExtractSpec.parse("2,4,6", "topk:10%")
    config = DataConfig(source="bbc-news", split="train", max_length=128, limit=n)
    tokenizer = models.load_tokenizer(teacher)
    examples = Examples.from_dataset(
        data.tokenize(data.load_split(config), tokenizer, 128), 128, tokenizer.pad_token_id
    )
    model = models.load_classifier(teacher, attention=spec.needs_attention)
    with torch.no_grad(), autocast("fp32"):
        for index in sequential_batches(len(examples), BATCH):
            model(**model_inputs(collate(examples, index).as_dict(), model))


# -- caches ----------------------------------------------------------------------------------------


def arrays(group, prefix: str = "") -> dict:
    """Every array under a zarr group, subgroups included, by path."""
    found = {f"{prefix}{name}": array for name, array in group.arrays()}
    for name, sub in group.groups():
        found.update(arrays(sub, f"{prefix}{name}/"))
    return found


def compare(a, b) -> dict:
    """Two zarr groups: identical (every array's dtype, shape and bytes, and the manifest), the
    names that differ."""
    left, right = arrays(a), arrays(b)
    differing = sorted(set(left) ^ set(right))
    for name in sorted(set(left) & set(right)):
        x, y = left[name][...], right[name][...]
        if x.dtype != y.dtype or x.shape != y.shape or x.tobytes() != y.tobytes():
            differing.append(name)
    if a.attrs.get("hsk_cache") != b.attrs.get("hsk_cache"):
        differing.append("manifest (attrs)")
    return {"identical": not differing, "arrays": len(left), "differing": differing}


def local_group(path: str):
    import zarr

    return zarr.open_group(path, mode="r")


def disk_bytes(path: str) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def shard_examples(n: int) -> int:
    """The largest power of two ≤ N/8 (8 shards)."""
    return 1 << max(0, (max(1, n // 8)).bit_length() - 1)


def make_teacher(work: str) -> str:
    from hsk_cache.models import hub as models

    teacher = f"{work}/teacher"
    source = models.BUNDLED_TEACHER
    models.save(models.load_classifier(source, label_names=tuple("abcde")), models.load_tokenizer(source), teacher)
    return teacher


# -- 1. extraction, 1 vs 2 ranks -------------------------------------------------------------------


def extraction(teacher: str, work: str, n: int, repeats: int) -> dict:
    shard = shard_examples(n)
    rounds = {"checks": [], "reported": {"1 rank": [], "2 ranks": []}, "round": 0}

    def one(ranks: int):
        def run() -> float:
            out = f"{work}/extract/{rounds['round']}/{ranks}"
            shutil.rmtree(out, ignore_errors=True)
            threads = 1 if ranks == 2 else None
            wall, stdout = timed(hsk(*extract_args(teacher, n, out, shard), ranks=ranks), threads)
            rounds["reported"][f"{ranks} rank{'s' if ranks > 1 else ''}"].append(reported_elapsed(stdout))
            print(f"  extract, {ranks} rank(s): {wall:.1f} s", flush=True)
            if ranks == 2:  # the round's pair is complete: compare, then free the disk
                one_dir = f"{work}/extract/{rounds['round']}/1"
                check = compare(local_group(one_dir), local_group(out))
                check.update(bytes_1_rank=disk_bytes(one_dir), bytes_2_ranks=disk_bytes(out))
                rounds["checks"].append(check)
                print(f"  1 rank vs 2 ranks identical: {check['identical']}", flush=True)
                shutil.rmtree(f"{work}/extract/{rounds['round']}", ignore_errors=True)
                rounds["round"] += 1
            return wall

        return run

    def forward() -> float:
        wall, _ = timed([sys.executable, "-m", "benchmarks.scale_out", "--bare", teacher, "--limit", str(n)], None)
        print(f"  bare forward: {wall:.1f} s", flush=True)
        return wall

    times = interleave({"1 rank": one(1), "2 ranks": one(2), "bare forward": forward}, repeats)
    result = {name: summarize(t, n) for name, t in times.items()}
    result["2 ranks / 1 rank"] = ratios(times["1 rank"], times["2 ranks"])
    result["1 rank / bare"] = ratios(times["bare forward"], times["1 rank"])
    result["2 ranks / bare"] = ratios(times["bare forward"], times["2 ranks"])
    reported = rounds["reported"]
    result["reported_elapsed_s"] = reported
    if all(x is not None for x in reported["1 rank"] + reported["2 ranks"]):
        result["1 rank, own elapsed"] = summarize(reported["1 rank"], n)
        result["2 ranks, own elapsed"] = summarize(reported["2 ranks"], n)
        result["2 ranks / 1 rank, own elapsed"] = ratios(reported["1 rank"], reported["2 ranks"])
    result["checks"] = rounds["checks"]
    result["identical"] = all(c["identical"] for c in rounds["checks"])
    return {"examples": n, "shard_examples": shard, **result}


def extraction_table(r: dict) -> str:
    check = r["checks"][-1]
    ratio = lambda key: spread(r[key], 2, "×")
    lines = [
        "| timing | 1 rank ex/s | 2 ranks ex/s | bare forward ex/s | 2 ranks / 1 rank | 1 rank / bare | "
        "2 ranks / bare |",
        "|---|---|---|---|---|---|---|",
        f"| process wall | {spread(r['1 rank'], 1)} | {spread(r['2 ranks'], 1)} | {spread(r['bare forward'], 1)} | "
        f"{ratio('2 ranks / 1 rank')} | {ratio('1 rank / bare')} | {ratio('2 ranks / bare')} |",
    ]
    if "1 rank, own elapsed" in r:
        lines.append(
            f"| extract's own elapsed (rank 0) | {spread(r['1 rank, own elapsed'], 1)} | "
            f"{spread(r['2 ranks, own elapsed'], 1)} | — | {ratio('2 ranks / 1 rank, own elapsed')} | — | — |"
        )
    lines += [
        "",
        f"Caches identical (1 rank vs 2 ranks): {'yes' if r['identical'] else 'NO'}, "
        f"{sum(c['identical'] for c in r['checks'])}/{len(r['checks'])} rounds; {check['arrays']} arrays; "
        f"stored bytes {check['bytes_1_rank']:,} (1 rank), {check['bytes_2_ranks']:,} (2 ranks).",
    ]
    notes = (
        f"Extraction of {r['examples']} BBC News train examples ({r['shard_examples']} per shard), wall time of "
        "the whole process, start-up included (examples/s = N / wall). 1 rank: `python -m hsk_cache.cli extract` "
        "with torch's default threads; 2 ranks: `torchrun --standalone --nproc-per-node 2` with OMP_NUM_THREADS=1 "
        "per rank (rank 0 tokenizes and prepares, shards dealt round-robin); bare forward: `model(**inputs)` "
        "under `torch.no_grad` over the same batches in a subprocess (start-up, tokenizing and model load "
        "included, no selection or writes). Extract's own elapsed: the seconds `hsk extract` reports (rank 0's, from "
        "the start of `extract.run`: imports and interpreter start-up excluded). Identical: every array of the two "
        "caches (tokenizer files and shard commits included) and the manifest compared with `tobytes` after each "
        "round."
    )
    if not r["identical"]:
        notes += (
            " The 1-rank process ran with the default thread count and each rank with one thread, so the "
            f"kernels may sum in another order: differing: {', '.join(check['differing'])}."
        )
    return "\n".join(lines) + "\n\n" + notes


# -- 2. DDP training, 2 ranks vs 1 process ---------------------------------------------------------


def training(teacher: str, work: str, n: int, repeats: int) -> dict:
    cache = f"{work}/train_cache"
    timed(hsk(*extract_args(teacher, n, cache, shard_examples(n))), None)
    stages = {"1 process": [], "2 ranks": []}

    def one(ranks: int):
        name = "2 ranks" if ranks == 2 else "1 process"

        def run() -> float:
            out = f"{work}/train_out_{ranks}"
            command = hsk("train", "--from-cache", cache, "--out", out, *STUDENT, *TRAIN, ranks=ranks)
            wall, _ = timed(command, 1 if ranks == 2 else None)
            summary = json.loads(Path(out, "hsk_train.json").read_text())["result"]
            stage = next(s for s in summary["stages"] if s["kind"] == "hidden")
            stages[name].append({**stage, "wall_s": wall, "checkpoint_s": summary.get("checkpoint_s")})
            shutil.rmtree(out, ignore_errors=True)
            print(f"  train, {name}: stage {stage['examples_per_s']:.1f} ex/s, wall {wall:.1f} s", flush=True)
            return stage["elapsed_s"]

        return run

    times = interleave({"1 process": one(1), "2 ranks": one(2)}, repeats)
    walls = {name: [s["wall_s"] for s in runs] for name, runs in stages.items()}
    shutil.rmtree(cache, ignore_errors=True)
    return {
        "examples": n,
        "steps": stages["1 process"][0]["steps"],
        **{name: summarize(t, n) for name, t in times.items()},
        **{f"{name}, wall": summarize(t, n) for name, t in walls.items()},
        "2 ranks / 1 process": ratios(times["1 process"], times["2 ranks"]),
        "2 ranks / 1 process, wall": ratios(walls["1 process"], walls["2 ranks"]),
        "stages": stages,
    }


def training_table(r: dict) -> str:
    lines = [
        "| 1 process stage ex/s | 2 ranks stage ex/s | 2 ranks / 1 process | 1 process wall ex/s | "
        "2 ranks wall ex/s | 2 ranks / 1 process (wall) |",
        "|---|---|---|---|---|---|",
        f"| {spread(r['1 process'], 1)} | {spread(r['2 ranks'], 1)} | {spread(r['2 ranks / 1 process'], 2, '×')} | "
        f"{spread(r['1 process, wall'], 1)} | {spread(r['2 ranks, wall'], 1)} | "
        f"{spread(r['2 ranks / 1 process, wall'], 2, '×')} |",
    ]
    notes = (
        f"`hsk train --from-cache` on a cache of {r['examples']} examples (layers 2,4,6, topk:10%): TinyBERT4 "
        f"student (4×312, 12 heads, FFN 1200), one hidden-state epoch ({r['steps']} steps of global batch "
        f"{BATCH}), `--num-workers 1`, no mid-stage checkpoints. 1 process (default threads) vs `torchrun "
        "--standalone --nproc-per-node 2` (DDP over gloo, 16 examples per rank, OMP_NUM_THREADS=1 each). Stage "
        "examples/s as the run reports it in `hsk_train.json` (`result.stages`: first step to the end-of-stage "
        "checkpoint); wall: the whole process, start-up included. On this 2-core CPU machine the two ranks share "
        "the same two cores (one thread each) that the one process uses with two threads, so this measures DDP's "
        "overhead (gradient all-reduce over gloo, smaller per-rank matmuls) rather than a speedup: a speedup "
        "needs more cores or GPUs."
    )
    return "\n".join(lines) + "\n\n" + notes


# -- main ------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    """Run the benchmark (module docstring); returns 0."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small N and 1 round each, unless given (a smoke run)")
    parser.add_argument("--repeats", type=int, help="interleaved rounds (default: 3; quick 1)")
    parser.add_argument("--extract-examples", type=int, help="part 1's N (default: 1024; quick 128)")
    parser.add_argument("--train-examples", type=int, help="part 2's N (default: 512; quick 64)")
    parser.add_argument("--s3-examples", type=int, help="part 3's N (default: 1024; quick 128)")
    parser.add_argument("--parts", default="extract,train,s3", help="which parts to run (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where scale_out.md/.json go (default: %(default)s)")
    parser.add_argument("--bare", metavar="TEACHER", help=argparse.SUPPRESS)  # internal: the bare forward loop
    parser.add_argument("--limit", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.bare:
        bare(args.bare, args.limit)
        return 0
    for key, value in (QUICK if args.quick else FULL).items():  # a value given on the command line wins
        if getattr(args, key) is None:
            setattr(args, key, value)
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = set(parts) - {"extract", "train", "s3"}
    if unknown:
        parser.error(f"--parts: unknown {', '.join(sorted(unknown))}")
    from hsk_cache.cli.progress import quiet_libraries

    quiet_libraries()
    started, load = time.perf_counter(), os.getloadavg()[0]
    work = tempfile.mkdtemp(prefix="hsk-scale-out-")
    payload, tables = {"repeats": args.repeats, "quick": args.quick, "batch": BATCH, "spec": " ".join(SPEC)}, []
    try:
        teacher = make_teacher(work)
        if "extract" in parts:
            print(f"1. extraction, {args.extract_examples} examples", flush=True)
            payload["extraction"] = r = extraction(teacher, work, args.extract_examples, args.repeats)
            tables.append("## Extraction: 1 rank vs 2 ranks (torchrun)\n\n" + extraction_table(r))
        if "train" in parts:
            print(f"2. DDP training, {args.train_examples} examples", flush=True)
            payload["training"] = r = training(teacher, work, args.train_examples, args.repeats)
            tables.append("## Training (hidden-state stage): 2 DDP ranks vs 1 process\n\n" + training_table(r))
        if "s3" in parts:
            print(f"3. S3 vs disk, {args.s3_examples} examples", flush=True)
            from benchmarks.scale_out_s3 import object_store, object_store_table

            payload["object_store"] = r = object_store(teacher, work, args.s3_examples, args.repeats)
            tables.append("## Reading a cache: S3 (local moto server) vs local disk\n\n" + object_store_table(r))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    payload["total_s"] = time.perf_counter() - started
    payload["load_average_1min"] = {"start": load, "end": os.getloadavg()[0]}
    footer = (
        f"Total benchmark time: {payload['total_s']:.0f} s; 1-minute load average {load:.2f} at the start, "
        f"{payload['load_average_1min']['end']:.2f} at the end (above ~0.5 on 2 cores, something else was running)."
    )
    write(args.out, payload, "\n\n".join(tables) + "\n\n" + footer, sys.argv[1:] if argv is None else argv)
    return 0


def write(out: Path, payload: dict, text: str, argv: list[str]) -> None:
    """``<out>/scale_out.json`` (the payload with the command and the machine) and ``.md`` (header + tables)."""
    out.mkdir(parents=True, exist_ok=True)
    command = " ".join(shlex.quote(a) for a in ["python", "-m", "benchmarks.scale_out", *argv])
    payload = {"benchmark": "scale_out", "command": command, "machine": machine(), **payload}
    (out / "scale_out.json").write_text(json.dumps(payload, indent=2))
    m = payload["machine"]
    header = f"# scale_out\n\nCommand: `{command}`\n\nMachine: {m['cpu']}, {m['cores']} cores, torch {m['torch']}\n\n"
    (out / "scale_out.md").write_text(header + text + "\n")
    print(text)


if __name__ == "__main__":
    raise SystemExit(main())
