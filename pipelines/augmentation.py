"""The augmentation payoff: does TinyBERT's data augmentation help a student trained from a teacher
cache, and what does the cache save when the data is augmented?

    python -m pipelines.augmentation --data ../shared/data/glue/SST-2 --teacher runs/sst2_teacher \\
        [--subset 1000] [--copies 20] [--seeds 0,1] [--workdir runs/augmentation] [--out docs/augmentation]

1. (a) the first ``--subset`` training examples; (b) ``hsk augment`` of them (``--copies`` tries per
   example, neighbours from the teacher's input embeddings: no masked LM ships offline).
2. For each dataset and each spec — the study's minimum ("last layer, top-10 tokens, 10% width")
   and full hidden states (all layers, tokens and dims, float16) — extract once, timed.
3. Train the ablation student ``small3`` from each cache for every seed (hidden stage, then
   prediction stage), evaluate on the dev split. Both datasets get the same number of steps:
   (a) trains ``round(rows_b / rows_a)`` epochs per stage, (b) one.
4. On (b), train once more with the teacher online (minimum spec, seed 0, same epochs): the
   measured training-time speedup of the cache.

Rows go to ``<out>/results.json`` (a rerun skips rows already there) and the table to
``<out>/results.md``, which ``docs/augmentation.md`` quotes.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from hsk_cache.cli.progress import quiet_libraries
from hsk_cache.config.run import DataConfig, StageConfig
from hsk_cache.data import augment
from hsk_cache.errors import HskError
from hsk_cache.extraction import extract
from hsk_cache.knowledge.spec import ExtractSpec
from hsk_cache.store.reader import CacheReader
from hsk_cache.training import configs, evaluate, train
from pipelines.ablate import STUDENTS, _slug, ensure_teacher

SPECS = {  # name → (spec, TrainConfig options), as the ablation's joint and full-HSK points
    "minimum": (ExtractSpec.parse("last", "topk:10", "magnitude:0.1"), {"layer_map": "uniform"}),
    "full hidden states": (ExtractSpec.parse("all", "all", "all", dtype="float16"), {}),
}
HIDDEN_LR, PRED_LR, BATCH = 1e-4, 5e-5, 32


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="a GLUE task directory or another hsk data source")
    parser.add_argument("--teacher", required=True, help="fine-tuned teacher (made here once if absent)")
    parser.add_argument("--subset", type=int, default=1000, help="training examples of (a) (default: %(default)s)")
    parser.add_argument("--copies", type=int, default=20, help="augmentation tries per example (default: %(default)s)")
    parser.add_argument("--seeds", default="0,1", help="student seeds (default: %(default)s)")
    parser.add_argument("--max-length", type=int, default=64, help="tokens per example (default: %(default)s)")
    parser.add_argument("--workdir", default="runs/augmentation", help="data, caches, students (default: %(default)s)")
    parser.add_argument("--out", default="docs/augmentation", help="results (default: %(default)s)")
    args = parser.parse_args(argv)
    quiet_libraries()
    try:
        ensure_teacher(args.teacher, args.data, args.max_length, 1.0)
        run(args)
    except HskError as err:
        print(f"augmentation: error: {err}", file=sys.stderr)
        return 2
    return 0


def run(args) -> None:
    work, out = Path(args.workdir), Path(args.out)
    results = _load(out)
    original = DataConfig(source=args.data, split="train", max_length=args.max_length, limit=args.subset)
    augmented_dir = work / "data" / f"augmented-{args.subset}-x{args.copies}"
    started = time.perf_counter()
    made = augment.run(augment.AugmentConfig(data=original, out=str(augmented_dir), copies=args.copies))
    results["augment"] = results.get("augment") or {
        "examples": made.examples,
        "rows": made.rows,
        "elapsed_s": time.perf_counter() - started,
        "word_paths": made.word_paths,
        "command": f"hsk augment --data {args.data} --limit {args.subset} --copies {args.copies} --out {augmented_dir}",
    }
    _save(results, out)
    augmented = DataConfig(source=str(augmented_dir), split="train", max_length=args.max_length)
    dev = DataConfig(source=args.data, split="dev", max_length=args.max_length)
    epochs = {"original": float(round(made.rows / made.examples)), "augmented": 1.0}
    for dataset, data in (("original", original), ("augmented", augmented)):
        for spec_name, (spec, options) in SPECS.items():
            cache = work / "caches" / dataset / _slug(spec)
            key = f"extract {dataset} {spec_name}"
            if key not in results:
                results[key] = _extract(args.teacher, data, cache, spec)
                _save(results, out)
                _report(key, results[key])
            for seed in (int(s) for s in args.seeds.split(",")):
                key = f"train {dataset} {spec_name} seed {seed}"
                if key not in results:
                    source = {"cache": str(cache)}
                    results[key] = _train(args.teacher, source, work, key, epochs[dataset], seed, options, dev)
                    _save(results, out)
                    _report(key, results[key])
    key = "train augmented minimum seed 0 online"
    if key not in results:
        spec, options = SPECS["minimum"]
        source = {"online_teacher": args.teacher, "data": augmented, "spec": spec, "teacher_precision": "bf16"}
        results[key] = _train(args.teacher, source, work, key, 1.0, 0, options, dev)
        _save(results, out)
        _report(key, results[key])


def _report(key: str, row: dict) -> None:
    accuracy = f", dev accuracy {row['accuracy']:.4f}" if "accuracy" in row else ""
    print(f"augmentation: {key}: {row['elapsed_s']:.0f} s{accuracy}", flush=True)


def _extract(teacher: str, data: DataConfig, cache: Path, spec: ExtractSpec) -> dict:
    config = extract.ExtractConfig(
        teacher=teacher, data=data, out=str(cache), spec=spec, batch_size=64, precision="bf16", overwrite=True
    )
    r = extract.run(config)
    reader = CacheReader(str(cache))
    n = reader.manifest.num_examples
    return {"examples": n, "elapsed_s": r.elapsed_s, "stored_bytes": reader.stored_bytes(), "spec": spec.describe()}


def _train(teacher, source: dict, work: Path, key: str, epochs: float, seed: int, options: dict, dev) -> dict:
    out = work / "students" / key.replace(" ", "-")
    stages = (
        StageConfig(kind="hidden", epochs=epochs, lr=HIDDEN_LR, batch_size=BATCH),
        StageConfig(kind="prediction", epochs=epochs, lr=PRED_LR, batch_size=BATCH),
    )
    config = configs.TrainConfig(
        out=str(out),
        student=STUDENTS["small3"](teacher),
        stages=stages,
        seed=seed,
        precision="bf16",
        overwrite=True,
        **source,
        **options,
    )
    r = train.run(config)
    result = evaluate.run(str(out), dev)
    return {
        "epochs": epochs,
        "seed": seed,
        "elapsed_s": r.elapsed_s,
        "stage_s": {s.kind: s.elapsed_s for s in r.stages},
        "examples_per_s": {s.kind: s.examples_per_s for s in r.stages},
        "steps": sum(s.steps for s in r.stages),
        "accuracy": result.accuracy,
        "mcc": result.mcc,
        "dev_examples": result.examples,
    }


def _load(out: Path) -> dict:
    path = out / "results.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _save(results: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    (out / "results.md").write_text(markdown(results))


def markdown(results: dict) -> str:
    """The payoff table: one row per (dataset, spec), seeds aggregated; then the online comparison."""
    lines = [
        "| data | examples | knowledge | cache bytes | extraction s | train s/epoch (hidden + prediction) | "
        "epochs per stage | dev accuracy per seed | mean |",
        "|---|---:|---|---:|---:|---:|---:|---|---:|",
    ]
    for dataset in ("original", "augmented"):
        for spec_name in SPECS:
            e = results.get(f"extract {dataset} {spec_name}")
            prefix = f"train {dataset} {spec_name} seed"
            runs = [v for k, v in sorted(results.items()) if k.startswith(prefix) and not k.endswith("online")]
            if not e or not runs:
                continue
            per_epoch = [sum(r["stage_s"].values()) / r["epochs"] for r in runs]
            accuracy = [r["accuracy"] for r in runs]
            lines.append(
                f"| {dataset} | {e['examples']:,} | {spec_name} | {e['stored_bytes']:,} | {e['elapsed_s']:.0f} | "
                f"{sum(per_epoch) / len(per_epoch):.0f} | {runs[0]['epochs']:g} | "
                f"{' / '.join(f'{a:.4f}' for a in accuracy)} | {sum(accuracy) / len(accuracy):.4f} |"
            )
    online = results.get("train augmented minimum seed 0 online")
    cached = results.get("train augmented minimum seed 0")
    extraction = results.get("extract augmented minimum")
    if online and cached and extraction:
        cache_s, online_s = sum(cached["stage_s"].values()), sum(online["stage_s"].values())
        lines += [
            "",
            "| augmented set, minimum spec, seed 0 | training s (both stages) | dev accuracy |",
            "|---|---:|---:|",
            f"| online (teacher in the loop, bf16) | {online_s:.0f} | {online['accuracy']:.4f} |",
            f"| from the cache | {cache_s:.0f} | {cached['accuracy']:.4f} |",
            f"| speedup | {online_s / cache_s:.2f}× | |",
            f"| cache incl. its one extraction ({extraction['elapsed_s']:.0f} s) | "
            f"{cache_s + extraction['elapsed_s']:.0f} | |",
        ]
    a = results.get("augment")
    if a:
        lines += [
            "",
            f"Augmentation: {a['examples']:,} examples → {a['rows']:,} rows in {a['elapsed_s']:.0f} s "
            f"(`{a['command']}`).",
        ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
