"""General-distillation step cost: online teacher (fp32, bf16) vs a corpus cache vs no distillation.

    python -m benchmarks.general_step [--steps 5] [--recipes minilm,minilmv2,tinybert] [--quick] [--out DIR]

One optimizer step of a general (task-agnostic) student over WikiText-2 train packed into
sequences of T = 128 tokens, batch 32, for the MiniLM, MiniLMv2 and TinyBERT recipes (spec as
``pipelines.general.spec_for``: the recipe's knowledge at ``topk:32`` tokens; TinyBERT the
embedding output and the teacher layers its uniform map reaches). Teacher: BERT-base shaped
(12 layers × 768, 12 heads, FFN 3072, random weights, the bundled tokenizer's vocabulary);
student: TinyBERT4 shape (4 × 312, 12 heads, FFN 1200), a base encoder (``head="base"``). Four
competitors:

- online fp32: the teacher's forward in fp32 and the selection (``OnlineSource``), then the
  student's forward, the recipe's loss (``objectives.distillation`` on ``DistillationLoss``),
  backward and the optimizer step;
- online bf16: the same with a bf16-autocast teacher (the same teacher object);
- cache: the same knowledge read from a cache extracted (bf16 teacher) before timing;
- student only: the same student's forward/backward/optimizer step on the same batches with a
  dummy loss (the mean of the last hidden state): the floor, no teacher knowledge at all.

Every competitor starts from the same student (and W_h) weights and trains with its own AdamW,
linear warmup/decay and gradient-norm clipping to 1 as ``training.loop.fit`` does (fp32 student),
on the same batches (the same example ids at every step). The competitors are interleaved step by
step (the order rotates every step), so drift on a shared machine hits all of them alike. A step's
time is its batch assembly (teacher forward and selection for online, decoding for the cache,
collation for student only) plus the student's step; both parts are recorded. The first
``--warmup`` steps are not timed. Reports the median seconds per step with min and max over the
timed steps, and the medians (min–max) of the per-step ratios online ÷ cache and cache ÷ student
only. ``--quick``: a 2 × 64 teacher, a 4 × 64 student, T = 64, batch 8, 2 timed steps, TinyBERT only
(a smoke run in well under 40 s). Results go to ``<out>/general_step.md`` and ``.json``
(default ``benchmarks/results``), with the machine (CPU model, cores, torch threads, torch).
"""

from __future__ import annotations

import argparse
import copy
import os
import shlex
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import RESULTS, machine, ratios, write_run
from hsk_cache.cli.progress import quiet_libraries
from hsk_cache.config.run import DataConfig, StageConfig
from hsk_cache.data.cache import open_cache
from hsk_cache.data.sources import DatasetSource, OnlineSource
from hsk_cache.distill import objectives
from hsk_cache.extraction import extract
from hsk_cache.knowledge.recipes import recipe
from hsk_cache.models import hub
from hsk_cache.models.students import StudentConfig, build_student
from hsk_cache.store.reader import CacheReader
from hsk_cache.training.configs import TrainConfig
from hsk_cache.training.train import distillation_loss
from pipelines.general import spec_for

COMPETITORS = ("online fp32", "online bf16", "cache", "student only")


@dataclass(frozen=True)
class Setup:
    """The shapes of one benchmark mode: teacher (layers, hidden, heads, ffn), student, T, batch."""

    teacher: tuple[int, int, int, int]
    student: StudentConfig
    length: int
    batch: int
    steps: int
    recipes: tuple[str, ...]


FULL = Setup(
    teacher=(12, 768, 12, 3072),
    student=StudentConfig(kind="config", layers=4, hidden=312, heads=12, ffn=1200),
    length=128,
    batch=32,
    steps=5,
    recipes=("minilm", "minilmv2", "tinybert"),
)
QUICK = Setup(
    teacher=(2, 64, 4, 256),
    student=StudentConfig(kind="config", layers=4, hidden=64, heads=4, ffn=128),
    length=64,
    batch=8,
    steps=2,
    recipes=("tinybert",),
)


def make_teacher(work: str, shape: tuple[int, int, int, int]) -> str:
    """A random BERT encoder of ``shape`` (layers, hidden, heads, ffn) with the bundled tokenizer,
    saved (``hub.save``) under ``work``; returns its directory."""
    from transformers import BertConfig, BertModel

    tokenizer = hub.load_tokenizer("minilm-l6")
    layers, hidden, heads, ffn = shape
    config = BertConfig(
        vocab_size=len(tokenizer),
        num_hidden_layers=layers,
        hidden_size=hidden,
        num_attention_heads=heads,
        intermediate_size=ffn,
    )
    torch.manual_seed(0)
    path = f"{work}/teacher_{layers}x{hidden}"
    hub.save(BertModel(config).eval(), tokenizer, path)
    return path


class Trainer:
    """One competitor: a student, its objective and its optimizer, stepping as ``fit`` does
    (AdamW, linear warmup then decay over ``total`` steps, gradient norm clipped to 1, fp32)."""

    def __init__(self, source, student, objective, extra_params, lr: float, warmup_ratio: float, total: int) -> None:
        from transformers import get_linear_schedule_with_warmup

        self.source, self.student, self.objective = source, student, objective
        self.params = [p for p in student.parameters() if p.requires_grad] + list(extra_params)
        self.optimizer = torch.optim.AdamW(self.params, lr=lr)
        self.scheduler = get_linear_schedule_with_warmup(self.optimizer, int(warmup_ratio * total), total)
        self.student.train()

    def step(self, ids: np.ndarray) -> tuple[float, float, float]:
        """One step on examples ``ids`` ([B] int) → (batch seconds, student-step seconds, loss)."""
        started = time.perf_counter()
        batch = self.source.batch(ids)
        fetched = time.perf_counter()
        loss = self.objective(self.student, batch)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.optimizer.step()
        self.scheduler.step()
        return fetched - started, time.perf_counter() - fetched, float(loss.detach())


def student_only(model, batch: dict, world_size: int = 1) -> torch.Tensor:
    """The no-distillation floor's dummy loss: the mean of the student's last hidden state
    ([B, T, D] → a scalar), so backward reaches every layer and nothing else is computed."""
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}
    return model(**inputs).last_hidden_state.mean()


def bench_recipe(name: str, teacher: str, setup: Setup, work: str, warmup: int) -> dict:
    """Extract the recipe's cache (bf16 teacher), build the four competitors from one student,
    run them interleaved step by step; returns the recipe's summary (see ``summarize``)."""
    total = warmup + setup.steps
    data = DataConfig(source="wikitext-2", split="train", max_length=setup.length, limit=total * setup.batch)
    spec = spec_for(name, teacher)
    cache_dir = f"{work}/cache_{name}"
    started = time.perf_counter()
    extract.run(
        extract.ExtractConfig(
            teacher=teacher, data=data, out=cache_dir, spec=spec, batch_size=setup.batch, precision="bf16"
        )
    )
    extract_s = time.perf_counter() - started
    print(f"{name}: cache of {total * setup.batch} sequences extracted in {extract_s:.1f}s", flush=True)
    cache = open_cache(cache_dir)
    online = OnlineSource(teacher, data, spec, "fp32")
    online_bf16 = copy.copy(online)  # the same teacher, plan and examples; only the autocast differs
    online_bf16.precision = "bf16"
    plain = DatasetSource(data, cache.tokenizer)
    r = recipe(name)
    stage = StageConfig(
        kind="general", epochs=1, lr=r.stage["lr"], batch_size=setup.batch, warmup_ratio=r.stage["warmup_ratio"]
    )
    config = TrainConfig(out="unused", student=setup.student, cache=cache_dir, stages=(stage,), **r.loss)
    attention = bool(cache.stored.attention_layers) or cache.stored.value_relation_layer is not None
    torch.manual_seed(0)
    base = build_student(
        setup.student,
        cache.teacher_config,
        (),
        attention,
        attention_probs="attention_probs" in cache.knowledge,
        head="base",
    )
    loss_base = distillation_loss(config, base, cache, [stage])
    trainers = {}
    for competitor, source in zip(COMPETITORS, (online, online_bf16, cache, plain)):
        student = copy.deepcopy(base)
        if competitor == "student only":
            objective, extra = student_only, []
        else:
            loss_fn = copy.deepcopy(loss_base)
            objective, extra = objectives.distillation(loss_fn), list(loss_fn.parameters())
        trainers[competitor] = Trainer(source, student, objective, extra, stage.lr, stage.warmup_ratio, total)
    order = np.random.default_rng(0).permutation(len(cache))
    times = {c: {"batch_s": [], "student_s": [], "step_s": [], "loss": []} for c in COMPETITORS}
    for step in range(total):
        ids = np.sort(order[step * setup.batch : (step + 1) * setup.batch])
        for k in range(len(COMPETITORS)):
            competitor = COMPETITORS[(step + k) % len(COMPETITORS)]
            fetch_s, student_s, loss = trainers[competitor].step(ids)
            if step >= warmup:
                row = times[competitor]
                row["batch_s"].append(fetch_s)
                row["student_s"].append(student_s)
                row["step_s"].append(fetch_s + student_s)
                row["loss"].append(loss)
        if step >= warmup:
            done = ", ".join(f"{c} {times[c]['step_s'][-1]:.3f}s" for c in COMPETITORS)
            print(f"{name} step {step + 1}/{total}: {done}", flush=True)
    stored = CacheReader(cache_dir).stored_bytes()
    return {
        **summarize(times),
        "spec": spec.describe(),
        "extract_s": extract_s,
        "cache_bytes_per_sequence": stored / len(cache),
    }


def summarize(times: dict) -> dict:
    """Per competitor: median, min, max of the step, batch and student-step seconds (and every
    step's seconds and loss; for online bf16 and cache the largest relative difference of their
    loss from online fp32's at the same step); the per-step ratios online ÷ cache and cache ÷
    student only (median, min, max)."""
    out = {}
    for competitor, row in times.items():
        entry = {}
        for key in ("step_s", "batch_s", "student_s"):
            values = row[key]
            entry[key] = {"median": statistics.median(values), "min": min(values), "max": max(values)}
        entry["seconds"] = row["step_s"]
        entry["losses"] = row["loss"]
        out[competitor] = entry
    reference = times["online fp32"]["loss"]
    for competitor in ("online bf16", "cache"):
        gaps = [abs(a - b) / max(abs(a), 1e-12) for a, b in zip(reference, times[competitor]["loss"])]
        out[competitor]["loss_rel_diff_vs_online_fp32"] = max(gaps)
    step = {c: times[c]["step_s"] for c in times}
    out["online fp32 / cache"] = ratios(step["online fp32"], step["cache"])
    out["online bf16 / cache"] = ratios(step["online bf16"], step["cache"])
    out["cache / student only"] = ratios(step["cache"], step["student only"])
    return out


def cell(summary: dict, digits: int = 3, suffix: str = "") -> str:
    """'median (min–max)'."""
    return f"{summary['median']:.{digits}f}{suffix} ({summary['min']:.{digits}f}–{summary['max']:.{digits}f})"


def table(results: dict) -> str:
    """The markdown table: s/step per competitor, the knowledge part of it, and the ratios."""
    lines = [
        "| recipe | online fp32 s/step | online bf16 s/step | cache s/step | student only s/step | "
        "online fp32 ÷ cache | online bf16 ÷ cache | cache ÷ student only |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        lines.append(
            f"| {name} | " + " | ".join(cell(r[c]["step_s"]) for c in COMPETITORS) + " | "
            f"{cell(r['online fp32 / cache'], 2, '×')} | {cell(r['online bf16 / cache'], 2, '×')} | "
            f"{cell(r['cache / student only'], 2, '×')} |"
        )
    lines += [
        "",
        "Of which batch assembly (teacher forward + selection online, decoding from the cache, collation), s/step:",
        "",
        "| recipe | " + " | ".join(COMPETITORS) + " |",
        "|---|---|---|---|---|",
    ]
    for name, r in results.items():
        lines.append(f"| {name} | " + " | ".join(cell(r[c]["batch_s"]) for c in COMPETITORS) + " |")
    gaps = "; ".join(
        f"{name} bf16 {r['online bf16']['loss_rel_diff_vs_online_fp32']:.1e}, "
        f"cache {r['cache']['loss_rel_diff_vs_online_fp32']:.1e}"
        for name, r in results.items()
    )
    lines += [
        "",
        "Same work check, the largest relative difference of a step's loss from online fp32's (same weights, same "
        f"batches): {gaps}.",
    ]
    return "\n".join(lines)


def write(out: Path, payload: dict, text: str) -> None:
    """``<out>/general_step.json`` (the payload with the machine) and ``.md`` (header + tables)."""
    write_run(out, "general_step", payload, text)


def main(argv=None) -> int:
    """Run the benchmark (module docstring); returns 0."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=None, help="timed steps per competitor (default 5; quick 2)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--recipes", default=None, help="comma list (default minilm,minilmv2,tinybert)")
    parser.add_argument("--quick", action="store_true", help="tiny teacher and student, one recipe: a smoke run")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where general_step.md/.json go")
    args = parser.parse_args(argv)
    quiet_libraries()
    setup = QUICK if args.quick else FULL
    steps = args.steps or setup.steps
    setup = Setup(
        setup.teacher,
        setup.student,
        setup.length,
        setup.batch,
        steps,
        tuple(args.recipes.split(",")) if args.recipes else setup.recipes,
    )
    started, load_start = time.perf_counter(), os.getloadavg()[0]
    results = {}
    with tempfile.TemporaryDirectory(prefix="hsk-general-step-") as work:
        teacher = make_teacher(work, setup.teacher)
        for name in setup.recipes:
            results[name] = bench_recipe(name, teacher, setup, work, args.warmup)
    layers, hidden, heads, ffn = setup.teacher
    s = setup.student
    description = (
        f"Teacher: random BERT {layers}×{hidden} ({heads} heads, FFN {ffn}); student {s.layers}×{s.hidden} "
        f"({s.heads} heads, FFN {s.ffn}), base encoder; WikiText-2 train packed to T = {setup.length}, batch "
        f"{setup.batch}, tokens topk:32, cache extracted with a bf16 teacher; {args.warmup} warm-up + {steps} "
        "timed steps per competitor, interleaved step by step (rotating order), the same example ids at every "
        "step. Cells: median (min–max) over the timed steps; ratios: per step."
    )
    command = ["python", "-m", "benchmarks.general_step", *(argv if argv is not None else [])]
    payload = {
        "benchmark": "general_step",
        "command": " ".join(shlex.quote(a) for a in command),
        "machine": machine(),
        "description": description,
        "teacher": {"layers": layers, "hidden": hidden, "heads": heads, "ffn": ffn},
        "student": {"layers": s.layers, "hidden": s.hidden, "heads": s.heads, "ffn": s.ffn},
        "length": setup.length,
        "batch": setup.batch,
        "warmup": args.warmup,
        "steps": steps,
        "quick": args.quick,
        "elapsed_s": time.perf_counter() - started,
        "load_average_1min": {"start": load_start, "end": os.getloadavg()[0]},
        "results": results,
    }
    write(args.out, payload, table(results))
    return 0


if __name__ == "__main__":
    import sys

    raise SystemExit(main(sys.argv[1:]))
