"""Extraction throughput vs a bare teacher forward loop over the same batches, same precision.

    python benchmarks/extract_throughput.py [--examples 512] [--repeats 3] [--precision fp32]

The bare loop runs ``model(**inputs)`` over the batches extraction uses (BBC News train, max
length 128, batch 32); extraction is the full ``hsk extract`` path (selection, float16 cast,
Zarr shard writes) into a fresh directory each repeat. Reports examples/s (median, min, max) and
the median ratio extract/bare, for two specs: the demo's (layers 2,4,6, topk:10%, needs eager
attention) and last layer, all tokens (sdpa attention).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile

import torch

from benchmarks.common import interleave, summarize, write
from hsk_cache import data, extract, models
from hsk_cache.batching import Examples, collate, sequential_batches
from hsk_cache.config import DataConfig, ExtractSpec
from hsk_cache.progress import quiet_libraries
from hsk_cache.teacher import autocast

SPECS = {"layers 2,4,6 / topk:10%": ExtractSpec.parse("2,4,6", "topk:10%"), "last / all tokens": ExtractSpec.parse("last", "all")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    parser.add_argument("--teacher", default=models.BUNDLED_TEACHER, help="teacher (a 5-class head is added if needed)")
    args = parser.parse_args()
    quiet_libraries()
    work = tempfile.mkdtemp(prefix="hsk-bench-")
    teacher = f"{work}/teacher"
    models.save(models.load_classifier(args.teacher, label_names=tuple("abcde")), models.load_tokenizer(args.teacher), teacher)
    config = DataConfig("bbc-news", "train", max_length=128, limit=args.examples)
    tokenizer = models.load_tokenizer(teacher)
    examples = Examples.from_dataset(data.tokenize(data.load_split(config), tokenizer, 128), 128, tokenizer.pad_token_id)
    rows = {}
    for label, spec in SPECS.items():
        model = models.load_classifier(teacher, attention=spec.needs_attention)

        def bare():
            with torch.no_grad(), autocast(args.precision):
                for index in sequential_batches(len(examples), 32):
                    model(**collate(examples, index).model_inputs())

        def run_extract():
            out = f"{work}/cache"
            shutil.rmtree(out, ignore_errors=True)
            extract.run(extract.ExtractConfig(teacher, config, out, spec, 32, args.precision))

        times = interleave({"bare forward": bare, "extract": run_extract}, args.repeats)
        rows[label] = {name: summarize(t, len(examples)) for name, t in times.items()}
        ratios = sorted(b / e for b, e in zip(times["bare forward"], times["extract"]))
        rows[label]["ratio"] = {"median": ratios[len(ratios) // 2], "min": ratios[0], "max": ratios[-1]}
    shutil.rmtree(work, ignore_errors=True)
    lines = ["| spec | bare forward ex/s (min–max) | extract ex/s (min–max) | extract/bare (min–max) |", "|---|---|---|---|"]
    for label, r in rows.items():
        b, e, q = r["bare forward"], r["extract"], r["ratio"]
        lines.append(f"| {label} | {b['median']:.1f} ({b['min']:.1f}–{b['max']:.1f}) | {e['median']:.1f} "
                     f"({e['min']:.1f}–{e['max']:.1f}) | {q['median']:.2f} ({q['min']:.2f}–{q['max']:.2f}) |")
    write(f"extract_throughput_{args.precision}", {"examples": len(examples), "precision": args.precision, "rows": rows},
          "\n".join(lines))


if __name__ == "__main__":
    main()
