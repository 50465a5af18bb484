"""Ablation sweeps over extraction strategies (Liu et al. 2021, §4–5): for each point, extract (or
reuse a cache made for the same spec), train a student from the cache, evaluate on dev, record a row.

    python -m pipelines.ablate SWEEP --data ../shared/data/glue/SST-2 --teacher runs/sst2_teacher \\
        [--out docs/ablations] [--seeds 0,1] [--train-limit 4000] [--max-length 64] [--student small3]

Sweeps: depth, length, width, joint, baselines, beyond, float8 (see ``SWEEPS``). Rows go to
``<out>/results.parquet`` (and ``results.md``); a point already there for the same seed, student,
epochs and learning rates is skipped, so a sweep resumes where it stopped.
Plots: ``python -m pipelines.ablation_report``.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hsk_cache.cli.progress import quiet_libraries
from hsk_cache.config.run import DataConfig, StageConfig
from hsk_cache.errors import HskError
from hsk_cache.extraction import extract
from hsk_cache.knowledge.spec import ExtractSpec
from hsk_cache.models import hub as models
from hsk_cache.models import students
from hsk_cache.select.depth import uniform_layer_map
from hsk_cache.store.reader import CacheReader
from hsk_cache.training import configs, evaluate, train
from pipelines import ablation_report

STUDENTS = {  # name → (StudentConfig factory given the teacher path, description)
    "small3": lambda teacher: students.StudentConfig(kind="teacher-layers", path=teacher, layers=3),
    "tiny4": lambda teacher: students.StudentConfig(kind="config", layers=4, hidden=312, heads=12, ffn=1200),
}


@dataclass(frozen=True)
class Point:
    """One experiment: ``spec`` None trains on labels only (the no-distillation baseline)."""

    sweep: str
    name: str
    strategy: str
    param: str
    spec: ExtractSpec | None
    options: dict = field(default_factory=dict)  # TrainConfig overrides (layer_map, width_target, …)
    hidden: bool = True  # run the hidden-state stage


@dataclass(frozen=True)
class Context:
    teacher: str
    depth: int
    student_layers: int
    train_data: DataConfig
    dev_data: DataConfig
    workdir: Path
    values: tuple[str, ...] | None  # override a sweep's K / P list (quick runs, tests)


def _mapped(ctx: Context, top: int | None = None) -> str:
    return ",".join(str(t) for t in sorted(set(uniform_layer_map(ctx.student_layers, top or ctx.depth).values())))


def depth(ctx: Context) -> list[Point]:
    """Keep the top k pairs of the map g(l, L_top), for several L_top (tokens and width all)."""
    points = []
    for top in sorted({ctx.depth, max(ctx.student_layers, ctx.depth * 2 // 3)}, reverse=True):
        mapping = uniform_layer_map(ctx.student_layers, top)
        for k in (int(v) for v in ctx.values or range(1, ctx.student_layers + 1)):
            layers = ",".join(str(mapping[s]) for s in sorted(mapping)[-k:])
            points.append(
                Point(
                    "depth",
                    f"L_top={top} top-{k}",
                    f"g(l, {top})",
                    str(k),
                    ExtractSpec.parse(layers, "all", dtype="float16"),
                    {"layer_map": f"uniform:{top}", "keep_top_pairs": k},
                )
            )
    return points


def length(ctx: Context) -> list[Point]:
    strategies = {"left": "left", "random": "random", "attention": "topk+sep", "attention w/o [SEP]": "topk"}
    points = []
    for label, token in strategies.items():
        for k in ctx.values or ("1", "2", "5", "10", "20"):
            points.append(Point("length", f"{token}:{k}", label, k, ExtractSpec.parse(_mapped(ctx), f"{token}:{k}")))
    points.append(Point("length", "all", "all tokens", "all", ExtractSpec.parse(_mapped(ctx), "all")))
    return points


def width(ctx: Context) -> list[Point]:
    points = []
    for strategy in ("random", "uniform", "magnitude"):
        for p in ctx.values or ("0.01", "0.05", "0.1", "0.2", "0.5"):
            points.append(
                Point(
                    "width", f"{strategy}:{p}", strategy, p, ExtractSpec.parse(_mapped(ctx), "all", f"{strategy}:{p}")
                )
            )
    points.append(Point("width", "all", "all dims", "1", ExtractSpec.parse(_mapped(ctx), "all")))
    return points


def joint(ctx: Context) -> list[Point]:
    grid = [("last", "topk:10", "magnitude:0.1")] + [
        ("last", "topk:5", "magnitude:0.1"),
        ("last", "topk:20", "magnitude:0.1"),
        ("last", "topk:10", "magnitude:0.05"),
        ("last", "topk:10", "magnitude:0.2"),
        ("top:2", "topk:10", "magnitude:0.1"),
    ]
    return [
        Point("joint", f"{l} {t} {d}", "joint", f"{l} {t} {d}", ExtractSpec.parse(l, t, d), {"layer_map": "uniform"})
        for l, t, d in grid
    ]


def baselines(ctx: Context) -> list[Point]:
    return [
        Point("baselines", "no distillation", "no distillation", "-", None, hidden=False),
        Point(
            "baselines", "prediction only", "prediction only", "-", ExtractSpec.parse(knowledge="logits"), hidden=False
        ),
        Point("baselines", "full HSK", "full HSK", "-", ExtractSpec.parse("all", "all", "all", dtype="float16")),
    ]


def beyond(ctx: Context) -> list[Point]:
    """Past the study: zero vs ignore targets for dropped width (compare with the width sweep's zero
    rows); int8 vs float16 at equal spec (compare with the joint and width sweeps' float16 rows);
    attention probabilities and the value relation vs hidden states at equal stored bytes: K query
    rows × H heads × T keys of the last layer take as many bytes as 2K tokens × d of its hidden
    states when H·T = 2d (12·64 = 2·384 for the MiniLM at max length 64)."""
    mapped, joint_spec = _mapped(ctx), ("last", "topk:10", "magnitude:0.1")
    points = [
        Point(
            "beyond",
            f"{s}:0.1 ignore",
            f"{s} width, target ignore",
            "0.1",
            ExtractSpec.parse(mapped, "all", f"{s}:0.1"),
            {"width_target": "ignore"},
        )
        for s in ("magnitude", "uniform", "random")
    ]
    points += [
        Point(
            "beyond",
            "joint int8",
            "int8",
            "joint",
            ExtractSpec.parse(*joint_spec, dtype="int8"),
            {"layer_map": "uniform"},
        ),
        Point("beyond", "mapped all int8", "int8", "mapped all", ExtractSpec.parse(mapped, "all", dtype="int8")),
    ]
    for k in (1, 10):
        points += [
            Point(
                "beyond",
                f"attention last topk:{k}",
                "attention (KL)",
                f"topk:{k}",
                ExtractSpec.parse(tokens=f"topk:{k}", knowledge="attention_probs,logits"),
                {"attention_map": "uniform"},
            ),
            Point(
                "beyond",
                f"value relation last topk:{k}",
                "value relation (KL)",
                f"topk:{k}",
                ExtractSpec.parse(tokens=f"topk:{k}", knowledge="value_relation,logits"),
                {"head_map": "relation"},
            ),
            Point(
                "beyond",
                f"hidden last topk:{2 * k}",
                "hidden states (MSE)",
                f"topk:{2 * k}",
                ExtractSpec.parse("last", f"topk:{2 * k}"),
                {"layer_map": "uniform"},
            ),
        ]
    return points


def float8(ctx: Context) -> list[Point]:
    """float8_e4m3 (per-row scale, half of float16's bytes) at the specs the int8 points use: the
    joint point and the mapped layers at all tokens (compare with their float16 rows in the joint,
    length and width sweeps, and with the beyond sweep's int8 rows)."""
    mapped, joint_spec = _mapped(ctx), ("last", "topk:10", "magnitude:0.1")
    return [
        Point(
            "float8",
            "joint float8_e4m3",
            "float8_e4m3",
            "joint",
            ExtractSpec.parse(*joint_spec, dtype="float8_e4m3"),
            {"layer_map": "uniform"},
        ),
        Point(
            "float8",
            "mapped all float8_e4m3",
            "float8_e4m3",
            "mapped all",
            ExtractSpec.parse(mapped, "all", dtype="float8_e4m3"),
        ),
    ]


SWEEPS = {
    "depth": depth,
    "length": length,
    "width": width,
    "joint": joint,
    "baselines": baselines,
    "beyond": beyond,
    "float8": float8,
}


def kept_fraction(cache: CacheReader) -> float:
    """Kept hidden-state elements / all hidden-state elements of the real tokens of every layer."""
    m = cache.manifest
    if "token_index" not in cache.group:
        return 0.0
    tokens = int((cache.read("token_index") >= 0).sum())
    d, kept_dims = m.dims.hidden_size, m.dims.kept_dims
    if "hidden_mask" in cache.group:
        elements = int(np.unpackbits(cache.read("hidden_mask"), axis=-1, count=d).sum())
    else:
        elements = tokens * (kept_dims if m.spec.dims != "all" else d)
    total = int(cache.read("lengths").sum()) * (m.teacher.num_layers + 1) * d
    return elements / total


def run_point(point: Point, seed: int, student: str, ctx: Context, schedule: tuple[float, float, float, float]) -> dict:
    """Extract (or reuse), train, evaluate one point; returns its results row."""
    times = {}
    spec = point.spec or ExtractSpec.parse(knowledge="logits")  # labels-only still reads ids/labels from a cache
    cache = ctx.workdir / "caches" / _slug(spec)
    start = time.perf_counter()
    extract.run(
        extract.ExtractConfig(
            teacher=ctx.teacher, data=ctx.train_data, out=str(cache), spec=spec, batch_size=64, precision="bf16"
        )
    )
    times["extract_s"] = time.perf_counter() - start
    hidden_epochs, pred_epochs, hidden_lr, pred_lr = _schedule(point, schedule)
    if point.spec is None:
        stages = (StageConfig(kind="labels", epochs=pred_epochs, lr=pred_lr, batch_size=32),)
    else:
        # the 0-epoch hidden stage of prediction-only points is kept on purpose: train seeds stage i with
        # seed + i, so dropping it would reseed the prediction stage and change the committed rows
        stages = (
            StageConfig(kind="hidden", epochs=hidden_epochs, lr=hidden_lr or 1e-4, batch_size=32),
            StageConfig(kind="prediction", epochs=pred_epochs, lr=pred_lr, batch_size=32),
        )
    out = (
        ctx.workdir
        / "students"
        / (
            f"{point.sweep}-{_slug_text(point.name)}-{student}-"
            f"e{hidden_epochs:g}+{pred_epochs:g}-lr{hidden_lr:g}+{pred_lr:g}-{seed}"
        )
    )
    start = time.perf_counter()
    train.run(
        configs.TrainConfig(
            out=str(out),
            student=STUDENTS[student](ctx.teacher),
            cache=str(cache),
            stages=stages,
            seed=seed,
            precision="bf16",
            **point.options,
        )
    )
    times["train_s"] = time.perf_counter() - start
    start = time.perf_counter()
    result = evaluate.run(str(out), ctx.dev_data)
    times["eval_s"] = time.perf_counter() - start
    reader = CacheReader(cache)
    distilled = point.spec is not None
    return {
        "sweep": point.sweep,
        "point": point.name,
        "strategy": point.strategy,
        "param": point.param,
        "spec": "labels only" if point.spec is None else " ".join(f"{k}={v}" for k, v in point.spec.describe().items()),
        "options": " ".join(f"{k}={v}" for k, v in point.options.items()),
        "student": student,
        "seed": seed,
        "hidden_epochs": hidden_epochs,
        "pred_epochs": pred_epochs,
        "hidden_lr": hidden_lr,
        "pred_lr": pred_lr,
        "bytes_per_example": reader.stored_bytes() / reader.manifest.num_examples if distilled else 0.0,
        "fraction_kept": kept_fraction(reader),
        "accuracy": result.accuracy,
        "mcc": result.mcc,
        "dev_examples": result.examples,
        "teacher_sha256": reader.manifest.teacher.weights_sha256,
        "train_examples": len(reader.read("lengths")),
        **times,
    }


def _schedule(point: Point, schedule: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
    """(hidden epochs, prediction or label epochs, hidden lr, prediction or label lr) a point trains
    with; the hidden stage's epochs and lr are 0 for points without one."""
    hidden_epochs, pred_epochs, hidden_lr, pred_lr = (float(v) for v in schedule)
    hidden = point.spec is not None and point.hidden
    return (hidden_epochs if hidden else 0.0), pred_epochs, (hidden_lr if hidden else 0.0), pred_lr


def _slug(spec: ExtractSpec) -> str:
    return _slug_text("_".join(str(v) for v in spec.describe().values()))


def _slug_text(text: str) -> str:
    return "".join(c if c.isalnum() or c in ".-" else "_" for c in text)[:120]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep", choices=sorted(SWEEPS), help="which sweep to run")
    parser.add_argument(
        "--data", required=True, help="a GLUE task directory (train.tsv, dev.tsv) or another hsk data source"
    )
    parser.add_argument(
        "--teacher",
        required=True,
        help="a fine-tuned teacher directory; if it holds no model yet, the "
        "bundled MiniLM is fine-tuned on --data's train split and saved there, once",
    )
    parser.add_argument(
        "--teacher-epochs", type=float, default=1.0, help="epochs of that fine-tuning (default: %(default)s)"
    )
    parser.add_argument("--out", default="docs/ablations", help="results table and plots (default: %(default)s)")
    parser.add_argument("--workdir", default="runs/ablate", help="caches and students (default: %(default)s)")
    parser.add_argument("--seeds", default="0,1", help="comma list of seeds (default: %(default)s)")
    parser.add_argument("--student", default="small3", choices=sorted(STUDENTS), help="student (default: %(default)s)")
    parser.add_argument("--train-limit", type=int, default=None, help="first N training examples (default: all)")
    parser.add_argument(
        "--max-length", type=int, default=64, help="tokens per example (default: %(default)s, as the study)"
    )
    parser.add_argument(
        "--hidden-epochs", type=float, default=1.0, help="hidden-state stage epochs (default: %(default)s)"
    )
    parser.add_argument("--pred-epochs", type=float, default=1.0, help="prediction stage epochs (default: %(default)s)")
    parser.add_argument(
        "--hidden-lr", type=float, default=1e-4, help="hidden-state stage learning rate (default: %(default)s)"
    )
    parser.add_argument(
        "--pred-lr", type=float, default=5e-5, help="prediction (or label) stage learning rate (default: %(default)s)"
    )
    parser.add_argument(
        "--values", default=None, help="override the sweep's K or P list, comma-separated (default: the sweep's)"
    )
    args = parser.parse_args(argv)
    quiet_libraries()
    try:
        ensure_teacher(args.teacher, args.data, args.max_length, args.teacher_epochs)
        depth_ = models.read_config(args.teacher)["num_hidden_layers"]
        student_layers = STUDENTS[args.student](args.teacher).layers
        ctx = Context(
            args.teacher,
            depth_,
            student_layers,
            DataConfig(source=args.data, split="train", max_length=args.max_length, limit=args.train_limit),
            DataConfig(source=args.data, split="dev", max_length=args.max_length),
            Path(args.workdir),
            tuple(v.strip() for v in args.values.split(",")) if args.values else None,
        )
        seeds = [int(s) for s in args.seeds.split(",")]
        schedule = (args.hidden_epochs, args.pred_epochs, args.hidden_lr, args.pred_lr)
        run_sweep(SWEEPS[args.sweep](ctx), seeds, args.student, ctx, schedule, Path(args.out))
    except HskError as err:
        print(f"ablate: error: {err}", file=sys.stderr)
        return 2
    return 0


def ensure_teacher(path: str, data: str, max_length: int, epochs: float) -> None:
    """Fine-tune the bundled MiniLM on ``data`` into ``path`` unless a model is already there."""
    if (Path(path) / "config.json").exists():
        return
    print(f"ablate: fine-tuning the bundled MiniLM on {data} into {path} (once; reused by every point)", flush=True)
    from hsk_cache.cli.progress import bar
    from hsk_cache.training import finetune

    config = finetune.FinetuneConfig(
        model=models.BUNDLED_TEACHER,
        data=DataConfig(source=data, split="train", max_length=max_length),
        out=path,
        epochs=epochs,
        lr=5e-5,
        batch_size=32,
        precision="bf16",
    )
    result = finetune.run(config, bar)
    print(f"ablate: teacher fine-tuned in {result.elapsed_s:.0f} s", flush=True)


def run_sweep(points: list[Point], seeds: list[int], student: str, ctx: Context, schedule, out: Path) -> None:
    """Run every (point, seed) not yet in the results table, saving after each one."""
    table = ablation_report.load(out)
    done = {
        (
            r["sweep"],
            r["point"],
            r["student"],
            r["seed"],
            r["hidden_epochs"],
            r["pred_epochs"],
            r["hidden_lr"],
            r["pred_lr"],
        )
        for r in table
    }
    todo = [(p, s) for p in points for s in seeds if (p.sweep, p.name, student, s, *_schedule(p, schedule)) not in done]
    print(f"ablate: {len(points) * len(seeds) - len(todo)} points done, {len(todo)} to run", flush=True)
    for i, (point, seed) in enumerate(todo, 1):
        started = time.perf_counter()
        row = run_point(point, seed, student, ctx, schedule)
        table.append(row)
        ablation_report.save(table, out)
        print(
            f"ablate [{i}/{len(todo)}] {point.sweep} {point.name} seed {seed}: accuracy {row['accuracy']:.4f}, "
            f"mcc {row['mcc']:.4f}, {row['bytes_per_example']:,.0f} B/example, kept {row['fraction_kept']:.2e}, "
            f"{time.perf_counter() - started:.0f} s",
            flush=True,
        )
    ablation_report.plots(table, out)


if __name__ == "__main__":
    sys.exit(main())
