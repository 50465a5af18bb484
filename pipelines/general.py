"""The general-distillation proof (docs/general.md): corpus caches of WikiText-2, general students
trained from them (and online for the same steps), each fine-tuned on SST-2, CoLA and BBC News
against a random-init student and one initialized from teacher layers; then TinyBERT's whole
pipeline once (general distillation, then task-specific distillation with augmentation).

    python -m pipelines.general --mpnet DIR [--work runs/general] [--out docs/general] \\
        [--sequences 1024] [--epochs 3] [--ft-limit 1000] [--seeds 0,1] [--quick]

Every step appends one JSON row to ``<out>/results.jsonl``; a step whose id is already there is
skipped, so a stopped run resumes where it stopped. ``--report`` only rewrites the tables of
docs/general.md from the rows (``python -m pipelines.general --report``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import time
from pathlib import Path

from hsk_cache.cli.progress import quiet_libraries
from hsk_cache.config.run import DataConfig, StageConfig
from hsk_cache.extraction import extract
from hsk_cache.knowledge.recipes import recipe
from hsk_cache.knowledge.spec import ExtractSpec
from hsk_cache.models import hub, students
from hsk_cache.select.depth import uniform_layer_map
from hsk_cache.store.reader import CacheReader
from hsk_cache.training import configs, evaluate, finetune, train

GLUE = Path(__file__).resolve().parents[2] / "shared" / "data" / "glue"
TASKS = {  # name → (source, dev split, metric, max_length)
    "sst2": (str(GLUE / "SST-2"), "dev", "accuracy", 64),
    "cola": (str(GLUE / "CoLA"), "dev", "mcc", 64),
    "bbc": ("bbc-news", "dev", "accuracy", 128),
}
RECIPES = ("minilm", "minilmv2", "tinybert")
STUDENT = {"layers": 4, "hidden": 312, "heads": 12, "ffn": 1200}  # TinyBERT4's shape
TOKENS = "topk:32"  # the study's length selection: 32 kept query rows / tokens of 128
DOC = Path(__file__).resolve().parents[1] / "docs" / "general.md"


def spec_for(name: str, teacher: str) -> ExtractSpec:
    """The recipe's spec at ``TOKENS``; TinyBERT stores the embedding output and the layers its
    uniform map reaches (not every layer) and the attention of those layers."""
    r = recipe(name)
    kwargs = dict(r.spec)
    if name == "tinybert":
        depth = hub.load_config(teacher).num_hidden_layers
        mapped = sorted(set(uniform_layer_map(STUDENT["layers"], depth).values()))
        kwargs.update(layers=",".join(str(x) for x in [0, *mapped]), attention_layers=",".join(map(str, mapped)))
    return ExtractSpec.parse(tokens=TOKENS, **kwargs)


class Rows:
    """``results.jsonl``: one row per finished step, by id."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rows = {}
        if path.exists():
            for line in path.read_text().splitlines():
                if line.strip():
                    row = json.loads(line)
                    self.rows[row["id"]] = row

    def done(self, key: str) -> bool:
        """Whether ``key`` is finished (re-reading the file: several processes may share it)."""
        if key not in self.rows and self.path.exists():
            for line in self.path.read_text().splitlines():
                if line.strip():
                    row = json.loads(line)
                    self.rows[row["id"]] = row
        return key in self.rows

    def add(self, row: dict) -> None:
        self.rows[row["id"]] = row
        with open(self.path, "a") as handle:
            handle.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)


def corpus(args, limit: int | None = None) -> DataConfig:
    return DataConfig(source="wikitext-2", split="train", max_length=128, limit=limit or args.sequences)


def step_extract(rows: Rows, args, teacher: str, path: str, name: str) -> str:
    out = str(args.work / f"cache-{teacher}-{name}")
    key = f"extract/{teacher}/{name}"
    if not rows.done(key):
        shutil.rmtree(out, ignore_errors=True)
        config = extract.ExtractConfig(
            teacher=path, data=corpus(args), out=out, spec=spec_for(name, path), batch_size=32, precision="bf16"
        )
        r = extract.run(config)
        stored = CacheReader(out).stored_bytes()
        n = r.manifest.counts["examples"]
        rows.add(
            {"id": key, "teacher": teacher, "recipe": name, "sequences": n, "elapsed_s": r.elapsed_s,
             "bytes": stored, "bytes_per_sequence": stored / n, "tokens": TOKENS, "precision": "bf16"}
        )  # fmt: skip
    return out


def general_config(args, name: str, out: str, cache=None, teacher=None, epochs=None) -> configs.TrainConfig:
    r = recipe(name)
    stage = StageConfig(
        kind="general",
        epochs=epochs or args.epochs,
        lr=r.stage["lr"],
        batch_size=32,
        warmup_ratio=r.stage["warmup_ratio"],
    )
    loss = dict(r.loss)
    return configs.TrainConfig(
        out=out,
        student=students.StudentConfig(kind="config", **STUDENT),
        cache=cache,
        online_teacher=teacher,
        data=corpus(args) if teacher else None,
        spec=spec_for(name, teacher) if teacher else ExtractSpec(),
        stages=(stage,),
        teacher_precision="bf16",
        save_every="0",
        overwrite=True,
        **loss,
    )


def step_general(rows: Rows, args, teacher: str, path: str, name: str, cache: str) -> str:
    out = str(args.work / f"general-{teacher}-{name}")
    key = f"general/{teacher}/{name}"
    if not rows.done(key):
        r = train.run(general_config(args, name, out, cache=cache))
        s = r.stages[0]
        rows.add(
            {"id": key, "teacher": teacher, "recipe": name, "epochs": args.epochs, "steps": s.steps,
             "train_s": s.elapsed_s, "s_per_step": s.elapsed_s / s.steps, "first_loss": s.losses[0],
             "last_loss": s.losses[-1]}
        )  # fmt: skip
    key = f"online/{teacher}/{name}"
    if not rows.done(key):
        steps_per_epoch = -(-args.sequences // 32)
        online = str(args.work / f"online-{teacher}-{name}")
        r = train.run(general_config(args, name, online, teacher=path, epochs=args.online_steps / steps_per_epoch))
        s = r.stages[0]
        cached = rows.rows[f"general/{teacher}/{name}"]
        rows.add(
            {"id": key, "teacher": teacher, "recipe": name, "steps": s.steps, "train_s": s.elapsed_s,
             "s_per_step": s.elapsed_s / s.steps, "cache_s_per_step": cached["s_per_step"],
             "speedup": s.elapsed_s / s.steps / cached["s_per_step"]}
        )  # fmt: skip
        shutil.rmtree(online, ignore_errors=True)
    return out


def baseline_students(args, teachers: dict[str, str]) -> dict[str, str]:
    """Students without general distillation: random init (TinyBERT4 shape) and 4 teacher layers
    copied (DistilBERT-style; the teacher's width), saved as base models."""
    out = {}
    tokenizer = hub.load_tokenizer("minilm-l6")
    path = args.work / "baseline-random"
    if not (path / "config.json").exists():
        cfg = hub.read_config("minilm-l6")
        hub.save(students.build_student(students.StudentConfig(**STUDENT), cfg, (), head="base"), tokenizer, path)
    out["random init"] = str(path)
    for teacher, teacher_path in teachers.items():
        path = args.work / f"baseline-layers-{teacher}"
        if not (path / "config.json").exists():
            config = students.StudentConfig(kind="teacher-layers", path=teacher_path, layers=STUDENT["layers"])
            model = students.build_student(config, hub.read_config(teacher_path), (), head="base")
            hub.save(model, hub.load_tokenizer(teacher_path), path)
        out[f"{teacher} layers"] = str(path)
    return out


def step_finetune(rows: Rows, args, student: str, path: str, task: str, seed: int) -> None:
    key = f"finetune/{student}/{task}/{seed}"
    if rows.done(key):
        return
    source, dev, metric, max_length = TASKS[task]
    out = str(args.work / f"ft-{os.getpid()}")
    shutil.rmtree(out, ignore_errors=True)
    data = DataConfig(source=source, split="train", max_length=max_length, limit=args.ft_limit)
    r = finetune.run(
        finetune.FinetuneConfig(
            model=path, data=data, out=out, epochs=args.ft_epochs, lr=1e-4, batch_size=32, seed=seed
        )
    )
    e = evaluate.run(out, DataConfig(source=source, split=dev, max_length=max_length))
    rows.add(
        {"id": key, "student": student, "task": task, "seed": seed, "metric": metric, "examples": args.ft_limit,
         "epochs": args.ft_epochs, "value": e.accuracy if metric == "accuracy" else e.mcc, "train_s": r.elapsed_s}
    )  # fmt: skip


def step_tinybert_pipeline(rows: Rows, args, general_student: str) -> None:
    """TinyBERT end to end once: a fine-tuned SST-2 teacher, augmented SST-2 (GloVe-free: the
    teacher's input embeddings as word vectors), a task cache of it, task-specific distillation
    of the general student (hidden then prediction stage), dev accuracy; and the same from a
    random-init student."""
    from hsk_cache.data.augment import AugmentConfig
    from hsk_cache.data.augment import run as augment

    source, _, _, max_length = TASKS["sst2"]
    teacher = args.work / "sst2-teacher"
    if not rows.done("tinybert/teacher"):
        data = DataConfig(source=source, split="train", max_length=max_length, limit=args.ft_limit)
        finetune.run(finetune.FinetuneConfig(model="minilm-l6", data=data, out=str(teacher), epochs=1, lr=1e-4))
        e = evaluate.run(str(teacher), DataConfig(source=source, split="dev", max_length=max_length))
        rows.add({"id": "tinybert/teacher", "accuracy": e.accuracy})
    augmented = args.work / "sst2-aug"
    if not rows.done("tinybert/augment"):
        shutil.rmtree(augmented, ignore_errors=True)
        started = time.perf_counter()
        data = DataConfig(source=source, split="train", max_length=max_length, limit=args.aug_limit)
        augment(AugmentConfig(data=data, out=str(augmented), copies=args.aug_copies, teacher=str(teacher)))
        rows.add({"id": "tinybert/augment", "source_examples": args.aug_limit, "copies": args.aug_copies,
                  "elapsed_s": time.perf_counter() - started})  # fmt: skip
    cache = args.work / "sst2-task-cache"
    if not rows.done("tinybert/task-cache"):
        shutil.rmtree(cache, ignore_errors=True)
        spec = ExtractSpec.parse(layers="uniform:4", tokens="topk:10", knowledge="hidden_states,logits")
        data = DataConfig(source=str(augmented), split="train", max_length=max_length)
        r = extract.run(extract.ExtractConfig(teacher=str(teacher), data=data, out=str(cache), spec=spec))
        rows.add({"id": "tinybert/task-cache", "examples": r.manifest.counts["examples"], "elapsed_s": r.elapsed_s})
    for label, init in (("general (tinybert recipe)", general_student), ("random init", None)):
        key = f"tinybert/task/{label}"
        if rows.done(key):
            continue
        out = str(args.work / f"task-{'general' if init else 'random'}")
        student = students.StudentConfig(kind="pretrained", path=init) if init else students.StudentConfig(**STUDENT)
        stages = (
            StageConfig(kind="hidden", epochs=1, lr=1e-4, batch_size=32),
            StageConfig(kind="prediction", epochs=1, lr=5e-5, batch_size=32),
        )
        r = train.run(
            configs.TrainConfig(
                out=out, student=student, cache=str(cache), stages=stages, save_every="0", overwrite=True
            )
        )
        e = evaluate.run(out, DataConfig(source=source, split="dev", max_length=max_length))
        rows.add({"id": key, "student": label, "accuracy": e.accuracy, "train_s": r.elapsed_s})


def report(rows: dict) -> str:
    """The markdown tables of docs/general.md from the rows."""
    lines = ["### Extraction and training, WikiText-2 train", ""]
    lines += [
        "| teacher | recipe | sequences | extract s | KB / sequence | train s (cache) | s / step cache | "
        "s / step online | online ÷ cache | loss first → last |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key, row in rows.items():
        if not key.startswith("extract/"):
            continue
        t, name = row["teacher"], row["recipe"]
        g, o = rows.get(f"general/{t}/{name}"), rows.get(f"online/{t}/{name}")
        lines.append(
            f"| {t} | {name} | {row['sequences']} | {row['elapsed_s']:.0f} | {row['bytes_per_sequence'] / 1024:.1f} | "
            + (f"{g['train_s']:.0f} | {g['s_per_step']:.3f} | " if g else "- | - | ")
            + (f"{o['s_per_step']:.3f} | {o['speedup']:.2f}× | " if o else "- | - | ")
            + (f"{g['first_loss']:.3f} → {g['last_loss']:.3f} |" if g else "- |")
        )
    lines += ["", "### Fine-tuned (mean ± half the range over seeds)", ""]
    tasks = list(TASKS)
    lines += ["| student | " + " | ".join(f"{t} ({TASKS[t][2]})" for t in tasks) + " |"]
    lines += ["|---|" + "---|" * len(tasks)]
    finetuned: dict[str, dict[str, list[float]]] = {}
    for key, row in rows.items():
        if key.startswith("finetune/"):
            finetuned.setdefault(row["student"], {}).setdefault(row["task"], []).append(row["value"])
    for student, by_task in finetuned.items():
        cells = []
        for t in tasks:
            values = by_task.get(t, [])
            if not values:
                cells.append("-")
                continue
            spread = (max(values) - min(values)) / 2
            cells.append(f"{statistics.mean(values):.3f} ± {spread:.3f} (n={len(values)})")
        lines.append(f"| {student} | " + " | ".join(cells) + " |")
    task_rows = [row for key, row in rows.items() if key.startswith("tinybert/task/")]
    if task_rows:
        lines += ["", "### TinyBERT's whole pipeline once (SST-2 dev accuracy)", ""]
        teacher = rows.get("tinybert/teacher", {}).get("accuracy")
        lines += [f"Fine-tuned MiniLM-L6 teacher: {teacher:.3f}." if teacher is not None else "", ""]
        lines += ["| student before task distillation | accuracy | train s |", "|---|---|---|"]
        lines += [f"| {row['student']} | {row['accuracy']:.3f} | {row['train_s']:.0f} |" for row in task_rows]
    return "\n".join(lines) + "\n"


def write_report(out: Path) -> None:
    """Rewrite the tables between the markers of docs/general.md."""
    rows = Rows(out / "results.jsonl").rows
    text = DOC.read_text()
    start, end = "<!-- results -->", "<!-- /results -->"
    head, _, rest = text.partition(start)
    _, _, tail = rest.partition(end)
    DOC.write_text(f"{head}{start}\n{report(rows)}{end}{tail}")


def main(argv=None) -> int:
    """Run the proof (see the module docstring); returns 0."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mpnet", default=os.environ.get("HSK_MPNET"), help="the all-mpnet-base-v2 directory")
    parser.add_argument("--work", type=Path, default=Path("runs/general"))
    parser.add_argument("--out", type=Path, default=Path("docs/general"))
    parser.add_argument("--sequences", type=int, default=1024)
    parser.add_argument("--epochs", type=float, default=3.0)
    parser.add_argument("--online-steps", type=int, default=8)
    parser.add_argument("--ft-limit", type=int, default=1000)
    parser.add_argument("--ft-epochs", type=float, default=1.0)
    parser.add_argument("--aug-limit", type=int, default=200)
    parser.add_argument("--aug-copies", type=int, default=4)
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--report", action="store_true", help="only rewrite docs/general.md's tables")
    parser.add_argument("--teachers", default="minilm-l6,mpnet-base", help="the teachers to run (comma list)")
    parser.add_argument("--students", default=None, help="fine-tune only students whose name contains one of these")
    args = parser.parse_args(argv)
    if args.report:
        write_report(args.out)
        return 0
    quiet_libraries()
    args.work.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = Rows(args.out / "results.jsonl")
    teachers = {"minilm-l6": hub.resolve("minilm-l6")}
    if args.mpnet:
        teachers["mpnet-base"] = args.mpnet
    teachers = {k: v for k, v in teachers.items() if k in args.teachers.split(",")}
    generals = {}
    for teacher, path in teachers.items():
        for name in RECIPES:
            cache = step_extract(rows, args, teacher, path, name)
            generals[f"{name} ({teacher})"] = step_general(rows, args, teacher, path, name, cache)
    every = {**generals, **baseline_students(args, teachers)}
    if args.students:
        every = {k: v for k, v in every.items() if any(part in k for part in args.students.split(","))}
    seeds = [int(s) for s in args.seeds.split(",")]
    for task in [t for t in TASKS if t != "bbc"]:  # the short tasks first, every seed
        for seed in seeds:
            for student, path in every.items():
                step_finetune(rows, args, student, path, task, seed)
    if "tinybert (minilm-l6)" in generals:
        step_tinybert_pipeline(rows, args, generals["tinybert (minilm-l6)"])
    for seed in seeds:  # BBC News (128 tokens, 5 classes) last: the longest fine-tunes
        for student, path in every.items():
            step_finetune(rows, args, student, path, "bbc", seed)
    write_report(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
