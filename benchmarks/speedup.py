"""Training step cost: online distillation vs training from the cache vs no distillation.

    python -m benchmarks.speedup [--steps 6] [--repeats 3] [--quick] [--device cuda] [--precision bf16] [--out DIR]

Same student, batch 32, sequence length 128 (BBC News articles, all longer than 128 tokens),
same steps, hidden-state stage (the mapped layers of a uniform layer map at the top 16 tokens):

- online fp32: the teacher runs in fp32 at every step, then the student step;
- online bf16: the same with a bf16-autocast teacher;
- cache: the same knowledge read from a cache extracted beforehand (teacher never loaded);
- student only: the student trained on labels, no distillation (the floor).

Teachers: the bundled MiniLM-L6 and a BERT-base-shaped model (12 × 768, random weights);
students: TinyBERT4 shape (4 × 312, 12 heads, FFN 1200) and 2 × 384. Competitors run
interleaved in one process, batches assembled inline (--num-workers 0) for all of them; the first
step of each run is a warm-up and not timed. Reports the median step time with min and max, and
the median of the per-repeat ratios online/cache and cache/student-only. Every competitor's per-step
losses (first repeat) are recorded, with the largest relative difference of online bf16's and the
cache's from online fp32's: the same student, batches and knowledge, so they agree.

``--quick``: a random 4 × 64 teacher (the bundled tokenizer), one 2 × 64 student, batch 8, 64
tokens, 3 steps (2 timed), 1 repeat: a smoke run of the same code path in seconds (the test suite's).
Results go to ``<out>/speedup.{json,md}`` (``--out``, default ``benchmarks/results``).

``--device cuda``: the teachers, the students and the extraction run on the GPU (``--precision``:
the students' autocast, fp32 by default); results go to ``speedup-cuda.{json,md}``, naming the GPU.
"""

from __future__ import annotations

import argparse
import copy
import json
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import RESULTS, machine, ratios, spread
from hsk_cache.cli.progress import quiet_libraries
from hsk_cache.config.run import DataConfig, StageConfig, check_device, check_precision
from hsk_cache.data.cache import open_cache
from hsk_cache.data.sources import DatasetSource, OnlineSource
from hsk_cache.distill import objectives
from hsk_cache.extraction import extract
from hsk_cache.knowledge.spec import ExtractSpec
from hsk_cache.models import hub as models
from hsk_cache.models import students
from hsk_cache.models.students import StudentConfig, build_student
from hsk_cache.training.configs import TrainConfig
from hsk_cache.training.loop import fit
from hsk_cache.training.train import distillation_loss

STUDENTS = {
    "TinyBERT4 (4×312)": StudentConfig(kind="config", layers=4, hidden=312, heads=12, ffn=1200),
    "2×384": StudentConfig(kind="config", layers=2, hidden=384, heads=12, ffn=1536),
}
BATCH, LENGTH = 32, 128
QUICK_TEACHER = (4, 64, 4, 256)  # layers, hidden, heads, ffn
QUICK_STUDENTS = {"2×64": StudentConfig(kind="config", layers=2, hidden=64, heads=4, ffn=128)}
QUICK_BATCH, QUICK_LENGTH, QUICK_STEPS = 8, 64, 3
COMPETITORS = ("online fp32", "online bf16", "cache", "student only")


class StepClock:
    """A progress 'bar' that records the time of every step."""

    def __init__(self):
        self.times = [time.perf_counter()]

    def __call__(self, *args):
        return self

    def update(self, n):
        self.times.append(time.perf_counter())

    def set_postfix(self, **kw):
        pass

    def close(self):
        pass

    def step_seconds(self) -> float:
        """Median seconds per step after the first (warm-up) step."""
        gaps = [b - a for a, b in zip(self.times[1:], self.times[2:])]
        return statistics.median(gaps)


def teachers(work: str, quick: bool) -> dict[str, str]:
    """name → saved teacher: the bundled MiniLM-L6 and a random BERT-base shape, each with a 5-class
    head; ``quick``: one random ``QUICK_TEACHER``-shaped BERT instead."""
    from transformers import BertConfig, BertForSequenceClassification

    names = tuple("abcde")
    bundled = models.bundled_teacher_path()
    tokenizer = models.load_tokenizer(bundled)
    labels = dict(num_labels=5, id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)})
    if quick:
        layers, hidden, heads, ffn = QUICK_TEACHER
        config = BertConfig(
            vocab_size=len(tokenizer),
            num_hidden_layers=layers,
            hidden_size=hidden,
            num_attention_heads=heads,
            intermediate_size=ffn,
            **labels,
        )
        torch.manual_seed(0)
        tiny = f"{work}/tiny"
        models.save(BertForSequenceClassification(config), tokenizer, tiny)
        return {f"random {layers}×{hidden}": tiny}
    minilm = f"{work}/minilm"
    models.save(models.load_classifier(bundled, label_names=names), tokenizer, minilm)
    out = {"MiniLM-L6 (6×384)": minilm}
    config = BertConfig(vocab_size=len(tokenizer), **labels)
    torch.manual_seed(0)
    base = f"{work}/bert_base"
    models.save(BertForSequenceClassification(config), tokenizer, base)
    out["BERT-base shape (12×768)"] = base
    return out


def run_competitor(
    source, student, objective, steps: int, batch: int, extra=(), device="cpu", precision="fp32"
) -> tuple[float, list[float]]:
    """Train ``student`` for ``steps`` steps of ``batch``: (median seconds per step after the first,
    every step's loss)."""
    clock = StepClock()  # each step ends reading its loss (a host sync on a GPU): the gaps are whole steps
    stage = StageConfig(kind="hidden", epochs=steps / (-(-len(source) // batch)), lr=1e-4, batch_size=batch)
    result = fit(
        student,
        source,
        stage,
        objective,
        seed=0,
        extra_params=extra,
        progress=clock,
        num_workers=0,
        device=device,
        precision=precision,
    )
    return clock.step_seconds(), result.losses


def device_name(device: str) -> str:
    """``device`` with the GPU's name (``cuda (NVIDIA H200)``), or ``cpu``."""
    return f"{device} ({torch.cuda.get_device_name(torch.device(device))})" if device.startswith("cuda") else device


def main(argv=None) -> int:
    """Run the benchmark (module docstring); returns 0."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--steps", type=int, default=None, help="steps per run, the first an untimed warm-up (default 6, quick 3)"
    )
    parser.add_argument("--repeats", type=int, default=None, help="interleaved repeats (default 3, quick 1)")
    parser.add_argument("--quick", action="store_true", help="a tiny teacher and student, 1 repeat: a smoke run")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: %(default)s)")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"), help="the students' autocast")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where speedup.md/.json go (default: %(default)s)")
    args = parser.parse_args(argv)
    steps = args.steps or (QUICK_STEPS if args.quick else 6)
    repeats = args.repeats or (1 if args.quick else 3)
    batch, length = (QUICK_BATCH, QUICK_LENGTH) if args.quick else (BATCH, LENGTH)
    student_configs = QUICK_STUDENTS if args.quick else STUDENTS
    device = check_device(args.device)
    check_precision(args.precision, device)
    quiet_libraries()
    torch.manual_seed(0)
    work = tempfile.mkdtemp(prefix="hsk-speedup-")
    data = DataConfig(source="bbc-news", split="train", max_length=length, limit=(steps + 1) * batch)
    results = {}
    for teacher_name, teacher in teachers(work, args.quick).items():
        for student_name, student_config in student_configs.items():
            depth = models.read_config(teacher)["num_hidden_layers"]
            layers = ",".join(map(str, students.default_init_layers(depth, student_config.layers)))
            spec = ExtractSpec.parse(layers, "topk:16", dtype="float16")
            cache = f"{work}/cache_{len(results)}"
            extract.run(
                extract.ExtractConfig(teacher=teacher, data=data, out=cache, spec=spec, precision="bf16", device=device)
            )
            sources = {
                "online fp32": OnlineSource(teacher, data, spec, "fp32", device),
                "online bf16": OnlineSource(teacher, data, spec, "bf16", device),
                "cache": open_cache(cache),
                "student only": DatasetSource(data, models.load_tokenizer(teacher)),
            }
            config = TrainConfig(out="unused", student=student_config, cache=cache)
            base = build_student(student_config, sources["cache"].teacher_config, sources["cache"].label_names)
            hidden = distillation_loss(
                config, base, sources["cache"], [StageConfig(kind="hidden", epochs=1, lr=1e-4, batch_size=batch)]
            )
            base, hidden = base.to(device), hidden.to(device)
            on = dict(device=device, precision=args.precision)
            times = {name: [] for name in sources}
            losses = {}
            for _ in range(repeats):
                for name, source in sources.items():
                    student, loss_fn = copy.deepcopy(base), copy.deepcopy(hidden)
                    if name == "student only":
                        seconds, run = run_competitor(source, student, objectives.labels, steps, batch, **on)
                    else:
                        step = objectives.distillation(loss_fn, ("hidden_states",))
                        extra = list(loss_fn.parameters())
                        seconds, run = run_competitor(source, student, step, steps, batch, extra, **on)
                    times[name].append(seconds)
                    losses.setdefault(name, run)
            results[f"{teacher_name} → {student_name}"] = summarize(times, layers, losses)
            print(
                f"{teacher_name} → {student_name}: "
                + ", ".join(
                    f"{k} {v['median_s']:.3f}s"
                    for k, v in results[f"{teacher_name} → {student_name}"].items()
                    if isinstance(v, dict) and "median_s" in v
                ),
                flush=True,
            )
    shutil.rmtree(work, ignore_errors=True)  # the teachers and caches
    cuda = device.startswith("cuda")
    write(
        args.out,
        "speedup-cuda" if cuda else "speedup",
        {
            "batch": batch,
            "length": length,
            "steps": steps,
            "repeats": repeats,
            "quick": args.quick,
            **({"device": device_name(device), "precision": args.precision} if cuda else {}),
            "results": results,
        },
        (f"Device: {device_name(device)}, students in {args.precision}\n\n" if cuda else "") + table(results),
        sys.argv[1:] if argv is None else argv,
    )
    return 0


def write(out: Path, name: str, payload: dict, text: str, argv: list[str]) -> None:
    """``<out>/<name>.json`` (the payload with the command and the machine) and ``.md`` (header + table)."""
    out.mkdir(parents=True, exist_ok=True)
    command = " ".join(shlex.quote(a) for a in ["python", "-m", "benchmarks.speedup", *argv])
    payload = {"benchmark": name, "command": command, "machine": machine(), **payload}
    (out / f"{name}.json").write_text(json.dumps(payload, indent=2))
    m = payload["machine"]
    header = f"# {name}\n\nCommand: `{command}`\n\nMachine: {m['cpu']}, {m['cores']} cores, torch {m['torch']}\n\n"
    (out / f"{name}.md").write_text(header + text + "\n")
    print(text)


def summarize(times: dict[str, list[float]], layers: str, losses: dict[str, list[float]]) -> dict:
    """Per competitor: median, min, max seconds per step over the repeats and the first repeat's
    per-step losses; the ratios (median, min, max of the per-repeat ratios); for online bf16 and
    the cache, the largest relative difference of a step's loss from online fp32's."""
    out = {
        name: {"median_s": statistics.median(t), "min_s": min(t), "max_s": max(t), "seconds": t, "losses": losses[name]}
        for name, t in times.items()
    }
    for label, a, b in (
        ("online fp32 / cache", "online fp32", "cache"),
        ("online bf16 / cache", "online bf16", "cache"),
        ("cache / student only", "cache", "student only"),
    ):
        out[label] = ratios(times[a], times[b])
    reference = losses["online fp32"]
    for name in ("online bf16", "cache"):
        gaps = [abs(a - b) / max(abs(a), 1e-12) for a, b in zip(reference, losses[name])]
        out[name]["loss_rel_diff_vs_online_fp32"] = max(gaps)
    out["teacher_layers"] = layers
    return out


def table(results: dict) -> str:
    lines = [
        "| teacher → student | online fp32 s/step | online bf16 s/step | cache s/step | student only s/step | "
        "online fp32 / cache | online bf16 / cache | cache / student only |",
        "|---|---|---|---|---|---|---|---|",
    ]
    cell = lambda r: spread(r, 3, key="_s")
    ratio = lambda r: spread(r, 2, "×")
    for name, r in results.items():
        lines.append(
            f"| {name} | {cell(r['online fp32'])} | {cell(r['online bf16'])} | {cell(r['cache'])} | "
            f"{cell(r['student only'])} | {ratio(r['online fp32 / cache'])} | {ratio(r['online bf16 / cache'])} | "
            f"{ratio(r['cache / student only'])} |"
        )
    gaps = "; ".join(
        f"{name}: online bf16 {r['online bf16']['loss_rel_diff_vs_online_fp32']:.1e}, "
        f"cache {r['cache']['loss_rel_diff_vs_online_fp32']:.1e}"
        for name, r in results.items()
    )
    lines += [
        "",
        "Same work check, the largest relative difference of a step's loss from online fp32's (same weights, "
        f"same batches, first repeat): {gaps}.",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
