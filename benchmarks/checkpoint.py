"""What a training checkpoint costs, next to what a training step costs.

    python -m benchmarks.checkpoint [--repeats 3] [--quick] [--dir DIR] [--out DIR]

For three student shapes (TinyBERT4 4×312, the demo's 3×384, and a BERT-base-shaped 12×768
student), each with a 30,522-token vocabulary: the time to write one mid-stage checkpoint
(``checkpoint.save``: weights, AdamW moments, scheduler, RNG, flushed to disk and renamed), and the
time of one training step at batch 32 × 128 tokens (forward, backward, AdamW), interleaved,
medians with min and max. From these: the overhead of the default ``--save-every 5min`` and the
smallest step interval that keeps checkpoints under 1% of training time.

``--quick``: a 2 × 64 student (the same vocabulary) at batch 8 × 64 tokens, 1 repeat: a smoke run of
the same code path in seconds (the test suite's). Results go to ``<out>/checkpoint.{json,md}``
(``--out``, default ``benchmarks/results``).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import tempfile
from pathlib import Path

import torch
from transformers import BertConfig, BertForSequenceClassification, get_linear_schedule_with_warmup

from benchmarks.common import RESULTS, interleave, machine, spread
from hsk_cache.config.run import DEFAULT_SAVE_EVERY, Interval
from hsk_cache.data.loader import Sampler
from hsk_cache.training import checkpoint

STUDENTS = {
    "TinyBERT4 (4×312)": (4, 312, 12, 1200),
    "demo student (3×384)": (3, 384, 12, 1536),
    "BERT-base shape (12×768)": (12, 768, 12, 3072),
}
BATCH, LENGTH = 32, 128
QUICK_STUDENTS = {"2×64": (2, 64, 4, 128)}
QUICK_BATCH, QUICK_LENGTH = 8, 64


def student(layers: int, hidden: int, heads: int, ffn: int):
    config = BertConfig(
        num_hidden_layers=layers, hidden_size=hidden, num_attention_heads=heads, intermediate_size=ffn, num_labels=2
    )
    return BertForSequenceClassification(config)


class Run:
    """One student mid-stage: a model, its W_h, AdamW with state, a scheduler and a sampler."""

    def __init__(self, shape, root: str, batch: int = BATCH, length: int = LENGTH):
        torch.manual_seed(0)
        self.model = student(*shape)
        self.modules = torch.nn.ModuleDict({"student": self.model, "projection": torch.nn.Linear(shape[1], 768)})
        self.optimizer = torch.optim.AdamW(self.modules.parameters(), lr=1e-4)
        self.scheduler = get_linear_schedule_with_warmup(self.optimizer, 10, 1000)
        self.sampler = Sampler(100_000, batch, 0)
        self.inputs = {
            "input_ids": torch.randint(1000, 30000, (batch, length)),
            "labels": torch.randint(0, 2, (batch,)),
        }
        self.root, self.steps = root, 0
        self.step()  # warm-up, and AdamW state for every parameter

    def step(self) -> None:
        self.model.train()
        loss = self.model(**self.inputs).loss + self.modules["projection"].weight.sum() * 0
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        self.steps += 1

    def save(self) -> None:
        checkpoint.save(
            self.root,
            0,
            self.steps,
            self.modules,
            {"stage_done": False, "sampler": self.sampler.state_dict()},
            self.optimizer,
            self.scheduler,
        )

    def bytes_written(self) -> int:
        path = checkpoint.latest(self.root)
        return sum(f.stat().st_size for f in path.iterdir())


def main(argv=None) -> int:
    """Run the benchmark (module docstring); returns 0."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats (default: %(default)s)")
    parser.add_argument("--quick", action="store_true", help="a 2×64 student at batch 8 × 64, 1 repeat (a smoke run)")
    parser.add_argument(
        "--dir",
        default=None,
        help="where checkpoints are written (default: a temporary directory "
        "under runs/, on the disk training writes to)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="where checkpoint.md/.json go (default: %(default)s)")
    args = parser.parse_args(argv)
    students = QUICK_STUDENTS if args.quick else STUDENTS
    batch, length = (QUICK_BATCH, QUICK_LENGTH) if args.quick else (BATCH, LENGTH)
    repeats = 1 if args.quick else args.repeats
    if args.dir is None:
        os.makedirs("runs", exist_ok=True)
    interval = Interval.parse(DEFAULT_SAVE_EVERY).seconds
    rows, payload = [], {"students": {}, "default_save_every": DEFAULT_SAVE_EVERY}
    if args.quick:
        payload.update(quick=True, batch=batch, length=length, repeats=repeats)
    with tempfile.TemporaryDirectory(dir=args.dir or "runs") as tmp:
        runs = {
            name: Run(shape, os.path.join(tmp, str(i)), batch, length)
            for i, (name, shape) in enumerate(students.items())
        }
        competitors = {}
        for name, run in runs.items():
            competitors[f"{name} step"] = run.step
            competitors[f"{name} checkpoint"] = run.save
        times = interleave(competitors, repeats)
        for name, run in runs.items():
            save_s, step_s = times[f"{name} checkpoint"], times[f"{name} step"]
            save, step = statistics.median(save_s), statistics.median(step_s)
            size = run.bytes_written()
            entry = {
                "checkpoint_s": {"median": save, "min": min(save_s), "max": max(save_s), "seconds": save_s},
                "step_s": {"median": step, "min": min(step_s), "max": max(step_s), "seconds": step_s},
                "checkpoint_bytes": size,
                "write_mb_per_s": size / save / 1e6,
                "overhead_at_default_interval": save / interval,
                "steps_for_1_percent": save / (0.01 * step),
            }
            payload["students"][name] = entry
            rows.append(
                f"| {name} | {size / 1e6:.0f} MB | {spread(entry['checkpoint_s'])} | {entry['write_mb_per_s']:.0f} "
                f"| {spread(entry['step_s'])} | {100 * entry['overhead_at_default_interval']:.2f}% "
                f"| {entry['steps_for_1_percent']:.0f} |"
            )
    table = "\n".join(
        [
            f"| student | checkpoint size | checkpoint s | MB/s | train step s (batch {batch} × {length}) | "
            f"overhead at --save-every {DEFAULT_SAVE_EVERY} | --save-every N steps for 1% |",
            "|---|---|---|---|---|---|---|",
            *rows,
        ]
    )
    write(args.out, payload, table, sys.argv[1:] if argv is None else argv)
    return 0


def write(out: Path, payload: dict, text: str, argv: list[str]) -> None:
    """``<out>/checkpoint.json`` (the payload with the command and the machine) and ``.md`` (header + table)."""
    out.mkdir(parents=True, exist_ok=True)
    command = " ".join(shlex.quote(a) for a in ["python", "-m", "benchmarks.checkpoint", *argv])
    payload = {"benchmark": "checkpoint", "command": command, "machine": machine(), **payload}
    (out / "checkpoint.json").write_text(json.dumps(payload, indent=2))
    m = payload["machine"]
    header = f"# checkpoint\n\nCommand: `{command}`\n\nMachine: {m['cpu']}, {m['cores']} cores, torch {m['torch']}\n\n"
    (out / "checkpoint.md").write_text(header + text + "\n")
    print(text)


if __name__ == "__main__":
    raise SystemExit(main())
