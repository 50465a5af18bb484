"""The main job on the embedded defaults: BBC News and the bundled MiniLM-L6 teacher.

1. fine-tune the teacher on BBC News train (bf16 autocast),
2. extract its knowledge once into a Zarr cache (fp32 teacher, layers 2,4,6, top-10% tokens, float16),
3. train a 3-layer student (initialized from teacher layers 2,4,6) from the cache alone, with
   checkpoints at the default interval (the report says what they cost),
4. evaluate teacher and student on BBC News dev, and print a table.

    python -m pipelines.quickstart [--workdir runs/quickstart] [--fresh]

Steps whose output exists are reused (the teacher, a complete cache); --fresh redoes them all.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from hsk_cache.cli.progress import bar, quiet_libraries
from hsk_cache.config.run import DataConfig, StageConfig
from hsk_cache.errors import HskError
from hsk_cache.extraction import extract
from hsk_cache.knowledge.spec import ExtractSpec
from hsk_cache.models import students
from hsk_cache.models.hub import BUNDLED_TEACHER
from hsk_cache.store.reader import CacheReader
from hsk_cache.training import configs, evaluate, finetune, train

MAX_LENGTH = 128
SPEC = ExtractSpec.parse(layers="2,4,6", tokens="topk:10%", dtype="float16")
STUDENT_LAYERS = (2, 4, 6)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--workdir", default="runs/quickstart", help="where models and the cache go (default: %(default)s)"
    )
    parser.add_argument("--fresh", action="store_true", help="redo every step even if its output exists")
    parser.add_argument(
        "--teacher-epochs", type=float, default=3.0, help="teacher fine-tuning epochs (default: %(default)s)"
    )
    parser.add_argument(
        "--student-epochs", type=float, default=2.0, help="epochs of each student stage (default: %(default)s)"
    )
    args = parser.parse_args(argv)
    quiet_libraries()
    work = Path(args.workdir)
    if args.fresh and work.exists():
        shutil.rmtree(work)
    try:
        rows = run(work, args.teacher_epochs, args.student_epochs)
    except HskError as err:
        print(f"quickstart: error: {err}", file=sys.stderr)
        return 2
    print(table(rows))
    (work / "summary.json").write_text(json.dumps(rows, indent=2))
    return 0


def run(work: Path, teacher_epochs: float, student_epochs: float) -> dict:
    train_data, dev_data = (
        DataConfig(source="bbc-news", split="train", max_length=MAX_LENGTH),
        DataConfig(source="bbc-news", split="dev", max_length=MAX_LENGTH),
    )
    teacher, cache, student = work / "teacher", work / "cache", work / "student"
    times = {}
    start = time.perf_counter()
    if not (teacher / "model.safetensors").exists():
        finetune.run(
            finetune.FinetuneConfig(
                model=BUNDLED_TEACHER,
                data=train_data,
                out=str(teacher),
                epochs=teacher_epochs,
                lr=1e-4,
                batch_size=32,
                precision="bf16",
            ),
            bar,
        )
    times["finetune teacher"] = _lap(start, "finetune teacher")
    start = time.perf_counter()
    result = extract.run(
        extract.ExtractConfig(teacher=str(teacher), data=train_data, out=str(cache), spec=SPEC, batch_size=32), bar
    )
    times["extract"] = _lap(start, f"extract ({result.shards_written} shards written, {result.shards_skipped} reused)")
    start = time.perf_counter()
    stages = (
        StageConfig(kind="hidden", epochs=student_epochs, lr=1e-4, batch_size=32),
        StageConfig(kind="prediction", epochs=student_epochs, lr=5e-5, batch_size=32),
    )
    config = configs.TrainConfig(
        out=str(student),
        student=students.StudentConfig(
            kind="teacher-layers", path=str(teacher), layers=len(STUDENT_LAYERS), init_layers=STUDENT_LAYERS
        ),
        cache=str(cache),
        stages=stages,
        precision="bf16",
        overwrite=True,
    )  # checkpoints at the default --save-every, and at stage ends
    trained = train.run(config, bar)
    times["train student from cache"] = _lap(start, "train student from cache")
    checkpoints = {
        "written": trained.checkpoints,
        "seconds": round(trained.checkpoint_s, 2),
        "fraction_of_training": trained.checkpoint_s / times["train student from cache"],
        "interval": config.save_every,
    }
    print(
        f"quickstart: {checkpoints['written']} checkpoints (every {config.save_every} and at stage ends) took "
        f"{checkpoints['seconds']:.2f} s, {100 * checkpoints['fraction_of_training']:.1f}% of training",
        flush=True,
    )
    start = time.perf_counter()
    teacher_eval = evaluate.run(str(teacher), dev_data, progress=bar)
    student_eval = evaluate.run(str(student), dev_data, progress=bar)
    times["evaluate both"] = _lap(start, "evaluate both")
    reader = CacheReader(cache)
    n = reader.manifest.num_examples
    return {
        "teacher": {"path": str(teacher), "dev_accuracy": teacher_eval.accuracy, "layers": 6},
        "student": {"path": str(student), "dev_accuracy": student_eval.accuracy, "layers": len(STUDENT_LAYERS)},
        "dev_examples": teacher_eval.examples,
        "cache": {
            "path": str(cache),
            "spec": SPEC.describe(),
            "stored_bytes": reader.stored_bytes(),
            "bytes_per_example": reader.stored_bytes() / n,
            "examples": n,
        },
        "seconds": times,
        "checkpoints": checkpoints,
    }


def _lap(start: float, what: str) -> float:
    elapsed = time.perf_counter() - start
    print(f"quickstart: {what}: {elapsed:.1f} s", flush=True)
    return round(elapsed, 1)


def table(rows: dict) -> str:
    c = rows["cache"]
    lines = [
        "",
        f"| model   | layers | BBC News dev accuracy ({rows['dev_examples']} examples) |",
        "|---------|--------|--------------------------------------|",
        f"| teacher | {rows['teacher']['layers']:>6} | {rows['teacher']['dev_accuracy']:>36.4f} |",
        f"| student | {rows['student']['layers']:>6} | {rows['student']['dev_accuracy']:>36.4f} |",
        "",
        f"cache: {c['examples']} examples, {c['stored_bytes'] / 1e6:.1f} MB, "
        f"{c['bytes_per_example'] / 1e3:.1f} KB/example "
        f"(layers {c['spec']['layers']}, tokens {c['spec']['tokens']}, {c['spec']['dtype']})",
        "",
        "| stage                    | seconds |",
        "|--------------------------|---------|",
        *(f"| {name:<24} | {secs:>7.1f} |" for name, secs in rows["seconds"].items()),
        f"| {'total':<24} | {sum(rows['seconds'].values()):>7.1f} |",
        "",
        f"checkpoints: {rows['checkpoints']['written']} written in {rows['checkpoints']['seconds']:.2f} s, "
        f"{100 * rows['checkpoints']['fraction_of_training']:.1f}% of the student's training time "
        f"(--save-every {rows['checkpoints']['interval']} and every stage end)",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
