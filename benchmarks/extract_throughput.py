"""Extraction throughput vs a bare teacher forward loop over the same batches, same precision.

    python -m benchmarks.extract_throughput [--examples 1024] [--repeats 3] [--precision fp32] [--device cuda]

The bare loop runs ``model(**inputs)`` over the batches extraction uses (BBC News train, max
length 128, batch 32); extraction is the full ``hsk extract`` path (selection, float16 cast,
Zarr shard writes) into a fresh directory each repeat. Reports examples/s (median, min, max) and
the median ratio extract/bare, for two specs: the demo's (layers 2,4,6, topk:10%, needs eager
attention) and last layer, all tokens (sdpa attention). Extraction is reported twice: end to end
(``extract.run``: loading the teacher, tokenizing, hashing, writing, all included) and steady state
(from its first to its last batch, the part that scales with the dataset).

``--device cuda``: both run on the GPU (the bare loop synchronizes before its time is read;
``--precision fp16`` needs it); results go to ``extract_throughput_<precision>-cuda.{json,md}``,
naming the GPU.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time

import torch

from benchmarks.common import interleave, ratios, spread, summarize, write
from hsk_cache.cli.progress import quiet_libraries
from hsk_cache.config.run import DataConfig, check_device, check_precision
from hsk_cache.data import splits as data
from hsk_cache.extraction import extract
from hsk_cache.knowledge.batch import Examples, collate, sequential_batches
from hsk_cache.knowledge.spec import ExtractSpec
from hsk_cache.models import hub as models
from hsk_cache.models.inputs import model_inputs
from hsk_cache.models.teacher import autocast


class BatchClock:
    """A progress factory recording when each extracted batch completes."""

    def __call__(self, description, total, initial=0):
        self.times, self.counts = [], []
        return self

    def update(self, n):
        self.times.append(time.perf_counter())
        self.counts.append(n)

    def close(self):
        self.closed = time.perf_counter()  # after the last shard is written

    def seconds_per_example(self) -> float:
        """From the end of the first batch to the last shard written."""
        return (self.closed - self.times[0]) / sum(self.counts[1:])


SPECS = {
    "layers 2,4,6 / topk:10%": ExtractSpec.parse("2,4,6", "topk:10%"),
    "last / all tokens": ExtractSpec.parse("last", "all"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"))
    parser.add_argument("--teacher", default=models.BUNDLED_TEACHER, help="teacher (a 5-class head is added if needed)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: %(default)s)")
    args = parser.parse_args()
    device = check_device(args.device)
    check_precision(args.precision, device)
    cuda = device.startswith("cuda")
    quiet_libraries()
    work = tempfile.mkdtemp(prefix="hsk-bench-")
    teacher = f"{work}/teacher"
    models.save(
        models.load_classifier(args.teacher, label_names=tuple("abcde")), models.load_tokenizer(args.teacher), teacher
    )
    config = DataConfig(source="bbc-news", split="train", max_length=128, limit=args.examples)
    tokenizer = models.load_tokenizer(teacher)
    examples = Examples.from_dataset(
        data.tokenize(data.load_split(config), tokenizer, 128), 128, tokenizer.pad_token_id
    )
    rows = {}
    for label, spec in SPECS.items():
        model = models.load_classifier(teacher, attention=spec.needs_attention).to(device)

        def bare(model=model):
            with torch.no_grad(), autocast(args.precision, device.split(":")[0]):
                for index in sequential_batches(len(examples), 32):
                    model(**model_inputs(collate(examples, index).to(device).as_dict(), model))
            if cuda:
                torch.cuda.synchronize(device)

        steady = []

        def run_extract(spec=spec, steady=steady):
            out = f"{work}/cache"
            shutil.rmtree(out, ignore_errors=True)
            clock = BatchClock()
            extract.run(
                extract.ExtractConfig(
                    teacher=teacher,
                    data=config,
                    out=out,
                    spec=spec,
                    batch_size=32,
                    precision=args.precision,
                    device=device,
                ),
                clock,
            )
            steady.append(clock.seconds_per_example() * len(examples))

        times = interleave({"bare forward": bare, "extract": run_extract}, args.repeats)
        times["extract, steady state"] = steady
        rows[label] = {name: summarize(t, len(examples)) for name, t in times.items()}
        for name in ("extract", "extract, steady state"):
            rows[label][f"{name} / bare"] = ratios(times["bare forward"], times[name])
    shutil.rmtree(work, ignore_errors=True)
    lines = [
        "| spec | bare forward ex/s | extract end to end ex/s | extract steady state ex/s | end to end / bare | "
        "steady state / bare |",
        "|---|---|---|---|---|---|",
    ]
    for label, r in rows.items():
        lines.append(
            f"| {label} | {spread(r['bare forward'], 1)} | {spread(r['extract'], 1)} | "
            f"{spread(r['extract, steady state'], 1)} | {spread(r['extract / bare'])} | "
            f"{spread(r['extract, steady state / bare'])} |"
        )
    named = f"{device} ({torch.cuda.get_device_name(torch.device(device))})" if cuda else None
    write(
        f"extract_throughput_{args.precision}" + ("-cuda" if cuda else ""),
        {"examples": len(examples), "precision": args.precision, **({"device": named} if cuda else {}), "rows": rows},
        (f"Device: {named}\n\n" if cuda else "") + "\n".join(lines),
    )


if __name__ == "__main__":
    main()
