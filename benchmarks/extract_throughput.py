"""Extraction throughput vs a bare teacher forward loop over the same batches, same precision.

    python -m benchmarks.extract_throughput [--examples 1024] [--repeats 3] [--precision fp32] [--device cuda]
        [--allocator hsk|default] [--quick] [--out DIR]

The bare loop runs ``model(**inputs)`` over the batches extraction uses (BBC News train, max
length 128, batch 32); extraction is the full ``hsk extract`` path (selection, float16 cast,
Zarr shard writes) into a fresh directory each repeat. Reports examples/s (median, min, max) and
the median ratio extract/bare, for two specs: the demo's (layers 2,4,6, topk:10%, needs eager
attention) and last layer, all tokens (sdpa attention). Extraction is reported twice: end to end
(``extract.run``: loading the teacher and the split, hashing, writing, all included) and steady
state (from its first to its last batch, the part that scales with the dataset). The split's
tokenization comes from datasets' cache (the benchmark's own tokenization of the split leaves it,
as an earlier run on the same split and tokenizer does for a user's rerun or sweep); what a first
extraction of a split adds, tokenizing it, is timed once with the cache bypassed and given under
the table as a share of the bare forward's time. The last repeat's cache
is opened after timing: its examples and stored bytes are recorded. Before the timed rounds each
competitor runs once, untimed, on the first 64 examples (16 with ``--quick``): the process's
one-time costs (lazy imports, kernel selection, the data set's first read) fall on no timed round.
After the rounds, each spec is extracted end to end ``--repeats`` more times with the bare
forward run inside the extraction, batch by batch (``InterleavedBare``: after each extracted
batch, the bare forward of the next batch of the same examples, timed on its own): extraction's
seconds (the run's wall time less the bare batches') and the bare forward's are then measured in
the same seconds, a ratio that the drift of a shared host between whole runs (tens of percent
here) cannot move. Start-up, selection and shard writes all stay in extraction's share.

Allocator: the benchmark sets glibc's allocator for its process as the ``hsk`` command does
(``hsk_cache.allocator``: freed activations are kept for the next batch), so the bare loop and
extraction are timed alike; a third competitor, the bare loop in a child process with glibc's
defaults (a user's own script), shows what that setting gains. ``--allocator default``: neither
sets it (no third competitor).

``--device cuda``: both run on the GPU (the bare loop synchronizes before its time is read;
``--precision fp16`` needs it); results go to ``extract_throughput_<precision>-cuda.{json,md}``,
naming the GPU.

``--quick``: a random 6 × 64 teacher (the bundled tokenizer; ``--teacher`` still picks one), 64
examples, 1 repeat: a smoke run of the same code path in seconds (the test suite's). Results go to
``<out>/extract_throughput_<precision>.{json,md}`` (``--out``, default ``benchmarks/results``).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import multiprocessing
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import RESULTS, interleave, machine, ratios, spread, summarize
from hsk_cache.allocator import retain_freed_memory
from hsk_cache.cli.progress import quiet_libraries
from hsk_cache.config.run import DataConfig, check_device, check_precision
from hsk_cache.data import splits as data
from hsk_cache.extraction import extract
from hsk_cache.knowledge.batch import Examples, collate, sequential_batches
from hsk_cache.knowledge.spec import ExtractSpec
from hsk_cache.models import hub as models
from hsk_cache.models.inputs import model_inputs
from hsk_cache.models.teacher import autocast
from hsk_cache.store.reader import CacheReader

QUICK_TEACHER = (6, 64, 4, 128)  # layers, hidden, heads, ffn: the specs read layers 2, 4, 6


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


def tiny_teacher(path: str) -> None:
    """A random ``QUICK_TEACHER``-shaped BERT classifier (5 classes) with the bundled tokenizer, saved at ``path``."""
    from transformers import BertConfig, BertForSequenceClassification

    tokenizer = models.load_tokenizer(models.BUNDLED_TEACHER)
    layers, hidden, heads, ffn = QUICK_TEACHER
    names = tuple("abcde")
    config = BertConfig(
        vocab_size=len(tokenizer),
        num_hidden_layers=layers,
        hidden_size=hidden,
        num_attention_heads=heads,
        intermediate_size=ffn,
        num_labels=len(names),
        id2label=dict(enumerate(names)),
        label2id={n: i for i, n in enumerate(names)},
    )
    torch.manual_seed(0)
    models.save(BertForSequenceClassification(config), tokenizer, path)


DEFAULTS = "bare forward, glibc defaults"


WARMUP_EXAMPLES = {False: 64, True: 16}  # each competitor's untimed warm-up run (interleave's warmup), by --quick


def bare_loop(model, examples: Examples, precision: str, device: str, limit: int | None = None) -> None:
    """``model(**inputs)`` over the batches extraction uses (batch 32, file order; the first
    ``limit`` examples if given), no_grad."""
    n = len(examples) if limit is None else min(limit, len(examples))
    with torch.no_grad(), autocast(precision, device.split(":")[0]):
        for index in sequential_batches(n, 32):
            model(**model_inputs(collate(examples, index).to(device).as_dict(), model))
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


INTERLEAVED = ("bare forward, interleaved", "extract, interleaved", "extract steady state, interleaved")


class InterleavedBare:
    """A progress factory for ``extract.run`` that runs the bare forward inside the extraction:
    after each extracted batch, the bare forward of the next batch of the same examples (batch 32,
    file order, as ``bare_loop``), timed on its own. An extraction end to end (start-up, selection,
    shard writes) and the bare forward over the same examples then share the machine's seconds,
    so their ratio is free of the drift of a shared host between whole runs (tens of percent
    here); the whole-run rounds suffer it.

    After ``close()``: ``bare_s`` (the bare batches' seconds), ``extract_s(total)`` (``total``, the
    run's wall seconds, less the bare batches'), and ``steady()``: (extraction's seconds from the
    end of its first batch to the last shard written, the bare forward's over batches 2..N)."""

    def __init__(self, model, examples: Examples, precision: str, device: str) -> None:
        self.model, self.examples, self.precision, self.device = model, examples, precision, device

    def __call__(self, description, total, initial=0):
        self._batches = iter(sequential_batches(len(self.examples), 32))
        self.bare, self.extracted, self.bare_done = [], 0, 0
        self.first = self.closed = None
        return self

    def _sync(self) -> None:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize(self.device)

    def _bare_batch(self, index) -> None:
        self._sync()  # the extraction's queued work is not charged to the bare batch
        start = time.perf_counter()
        with torch.no_grad(), autocast(self.precision, self.device.split(":")[0]):
            self.model(**model_inputs(collate(self.examples, index).to(self.device).as_dict(), self.model))
        self._sync()
        self.bare.append(time.perf_counter() - start)
        self.bare_done += len(index)

    def update(self, n) -> None:
        if self.first is None:
            self.first = time.perf_counter()
        self.extracted += n
        while self.bare_done < self.extracted and (index := next(self._batches, None)) is not None:
            self._bare_batch(index)

    def close(self) -> None:
        self.closed = time.perf_counter()  # after the last shard is written
        self._bare_in_run = sum(self.bare)  # every bare batch so far ran between the first update and now
        for index in self._batches:  # none when every example was extracted
            self._bare_batch(index)

    @property
    def bare_s(self) -> float:
        return sum(self.bare)

    def extract_s(self, total: float) -> float:
        return total - self.bare_s

    def steady(self) -> tuple[float, float]:
        return self.closed - self.first - self._bare_in_run, sum(self.bare[1:])


class DefaultAllocatorLoop:
    """The bare loop on the CPU in a child process (a fresh interpreter: glibc's allocator as a
    user's script has it), with the parent's torch thread count; ``run()`` times one pass there
    (seconds; over the first ``limit`` examples if given), the child idles between passes."""

    def __init__(self, teacher: str, attention: bool, examples: Examples, precision: str) -> None:
        spawn = multiprocessing.get_context("spawn")
        self._conn, theirs = spawn.Pipe()
        args = (theirs, teacher, attention, examples, precision, torch.get_num_threads())
        self._process = spawn.Process(target=_default_allocator_worker, args=args, daemon=True)
        self._process.start()
        self._ready = self._conn.recv()  # the model is loaded

    def run(self, limit: int | None = None) -> float:
        self._conn.send(("run", limit))
        return self._conn.recv()

    def close(self) -> None:
        self._conn.send(("stop", None))
        self._process.join(timeout=60)


def _default_allocator_worker(conn, teacher, attention, examples, precision, threads) -> None:
    torch.set_num_threads(threads)
    quiet_libraries()
    model = models.load_classifier(teacher, attention=attention)
    conn.send(True)
    while (message := conn.recv())[0] == "run":
        start = time.perf_counter()
        bare_loop(model, examples, precision, "cpu", message[1])
        conn.send(time.perf_counter() - start)


def main(argv=None) -> int:
    """Run the benchmark (module docstring); returns 0."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=None, help="default 1024 (quick 64)")
    parser.add_argument("--repeats", type=int, default=None, help="default 3 (quick 1)")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"))
    parser.add_argument(
        "--teacher", default=None, help="teacher (a 5-class head is added if needed; default: the bundled MiniLM-L6)"
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: %(default)s)")
    parser.add_argument(
        "--allocator", default="hsk", choices=("hsk", "default"), help="glibc as hsk sets it, or its defaults"
    )
    parser.add_argument("--quick", action="store_true", help="a tiny random teacher, 64 examples, 1 repeat")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where the .md/.json go (default: %(default)s)")
    args = parser.parse_args(argv)
    examples_n = args.examples or (64 if args.quick else 1024)
    if examples_n <= 32:  # steady state is timed from the end of the first batch of 32
        parser.error(f"--examples {examples_n}: give more than one batch of 32 (the default is 1024)")
    repeats = args.repeats or (1 if args.quick else 3)
    device = check_device(args.device)
    check_precision(args.precision, device)
    cuda = device.startswith("cuda")
    quiet_libraries()
    tuned = args.allocator == "hsk" and retain_freed_memory()
    work = tempfile.mkdtemp(prefix="hsk-bench-")
    teacher = f"{work}/teacher"
    if args.quick and args.teacher is None:
        tiny_teacher(teacher)
    else:
        source = args.teacher or models.BUNDLED_TEACHER
        models.save(models.load_classifier(source, label_names=tuple("abcde")), models.load_tokenizer(source), teacher)
    config = DataConfig(source="bbc-news", split="train", max_length=128, limit=examples_n)
    tokenizer = models.load_tokenizer(teacher)
    # this tokenization leaves datasets' cache file of the split, which every extraction then reads
    examples = Examples.from_dataset(
        data.tokenize(data.load_split(config), tokenizer, 128), 128, tokenizer.pad_token_id
    )
    tokenizing = first_tokenizing(config, tokenizer)
    rows = {}
    for label, spec in SPECS.items():
        model = models.load_classifier(teacher, attention=spec.needs_attention).to(device)

        def bare(model=model, limit=None):
            bare_loop(model, examples, args.precision, device, limit)

        steady = []

        def run_extract(spec=spec, steady=steady, limit=None, clock=None):
            out = f"{work}/cache"
            shutil.rmtree(out, ignore_errors=True)
            timed, clock = clock is None, clock or BatchClock()
            extract.run(
                extract.ExtractConfig(
                    teacher=teacher,
                    data=config if limit is None else dataclasses.replace(config, limit=limit),
                    out=out,
                    spec=spec,
                    batch_size=32,
                    precision=args.precision,
                    device=device,
                ),
                clock,
            )
            if limit is None and timed:
                steady.append(clock.seconds_per_example() * len(examples))

        competitors = {"bare forward": bare, "extract": run_extract}
        warm = WARMUP_EXAMPLES[args.quick]
        warmup = {name: functools.partial(fn, limit=warm) for name, fn in competitors.items()}
        child = (
            DefaultAllocatorLoop(teacher, spec.needs_attention, examples, args.precision)
            if tuned and not cuda
            else None
        )
        if child is not None:
            competitors = {DEFAULTS: child.run, **competitors}
            warmup = {DEFAULTS: functools.partial(child.run, warm), **warmup}
        try:
            times = interleave(competitors, repeats, warmup)
        finally:
            if child is not None:
                child.close()
        times["extract, steady state"] = steady
        times.update(zip(INTERLEAVED, interleaved(run_extract, model, examples, args.precision, device, repeats)))
        rows[label] = {name: summarize(t, len(examples)) for name, t in times.items()}
        written = CacheReader(f"{work}/cache")  # the last repeat's, after timing
        rows[label]["cache"] = {"examples": written.manifest.num_examples, "stored_bytes": written.stored_bytes()}
        for name in ("extract", "extract, steady state"):
            rows[label][f"{name} / bare"] = ratios(times["bare forward"], times[name])
        bare_i, extract_i, steady_i = INTERLEAVED
        rows[label]["extract / bare, interleaved"] = ratios(times[bare_i], times[extract_i])
        rows[label]["extract steady state / bare, interleaved"] = ratios(times[bare_i], times[steady_i])
        if child is not None:
            rows[label][f"extract / {DEFAULTS}"] = ratios(times[DEFAULTS], times["extract"])
            rows[label][f"bare forward / {DEFAULTS}"] = ratios(times[DEFAULTS], times["bare forward"])
    shutil.rmtree(work, ignore_errors=True)
    defaults = all(f"extract / {DEFAULTS}" in r for r in rows.values())
    head = ["spec", "bare forward ex/s", "extract end to end ex/s", "extract steady state ex/s"]
    head += ["end to end / bare", "steady state / bare"]
    head += ["end to end / bare, interleaved", "steady state / bare, interleaved"]
    if defaults:
        head += ["bare, glibc defaults ex/s", "end to end / bare (glibc defaults)", "bare / bare (glibc defaults)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, r in rows.items():
        cells = [label, spread(r["bare forward"], 1), spread(r["extract"], 1), spread(r["extract, steady state"], 1)]
        cells += [spread(r["extract / bare"]), spread(r["extract, steady state / bare"])]
        cells += [spread(r["extract / bare, interleaved"]), spread(r["extract steady state / bare, interleaved"])]
        if defaults:
            cells += [
                spread(r[DEFAULTS], 1),
                spread(r[f"extract / {DEFAULTS}"]),
                spread(r[f"bare forward / {DEFAULTS}"]),
            ]
        lines.append("| " + " | ".join(cells) + " |")
    allocator = "glibc as `hsk` sets it (hsk_cache.allocator)" if tuned else "glibc defaults"
    named = f"{device} ({torch.cuda.get_device_name(torch.device(device))})" if cuda else None
    write(
        args.out,
        f"extract_throughput_{args.precision}" + ("-cuda" if cuda else ""),
        {
            "examples": len(examples),
            "precision": args.precision,
            "repeats": repeats,
            "warmup_examples": WARMUP_EXAMPLES[args.quick],
            "quick": args.quick,
            "allocator": "hsk" if tuned else "default",
            **({"device": named} if cuda else {}),
            "first_tokenizing_s": tokenizing,
            "rows": rows,
        },
        (f"Device: {named}\n\n" if cuda else "")
        + f"Allocator: {allocator}\n\n"
        + "\n".join(lines)
        + "\n\n"
        + first_run_line(tokenizing, rows, len(examples)),
        sys.argv[1:] if argv is None else argv,
    )
    return 0


def interleaved(run_extract, model, examples: Examples, precision: str, device: str, rounds: int):
    """``rounds`` extractions end to end (``run_extract(clock=...)``), each with the bare forward
    run inside it batch by batch (``InterleavedBare``). Returns three lists of seconds per round:
    the bare forward, extraction end to end, extraction's steady state scaled to all examples
    (``INTERLEAVED``)."""
    bare, whole, steady = [], [], []
    clock = InterleavedBare(model, examples, precision, device)
    for _ in range(rounds):
        start = time.perf_counter()
        run_extract(clock=clock)
        total = time.perf_counter() - start
        bare.append(clock.bare_s)
        whole.append(clock.extract_s(total))
        extract_s, bare_s = clock.steady()
        steady.append(extract_s * clock.bare_s / bare_s)  # batches 2..N, scaled to all N like the bare forward
    return bare, whole, steady


def first_tokenizing(config: DataConfig, tokenizer) -> float:
    """Seconds to tokenize ``config``'s split as a first extraction of it does (datasets' cache
    of an earlier tokenization bypassed; it writes a new cache file, in a temporary directory)."""
    import datasets

    split = data.load_split(config)
    datasets.disable_caching()
    try:
        start = time.perf_counter()
        data.tokenize(split, tokenizer, 128)
        return time.perf_counter() - start
    finally:
        datasets.enable_caching()


def first_run_line(tokenizing: float, rows: dict, examples: int) -> str:
    """The note under the table: what a first extraction of the split adds (tokenizing)."""
    shares = [tokenizing * r["bare forward"]["median"] / examples for r in rows.values()]
    return (
        "Every extraction above reads the split's tokenization from datasets' cache (the file an earlier "
        f"tokenization of the same split and tokenizer left, as on any rerun); a first extraction of the split "
        f"tokenizes it: {tokenizing:.2f} s more, {min(shares):.1%}–{max(shares):.1%} of the bare forward's time."
    )


def write(out: Path, name: str, payload: dict, text: str, argv: list[str]) -> None:
    """``<out>/<name>.json`` (the payload with the command and the machine) and ``.md`` (header + table)."""
    out.mkdir(parents=True, exist_ok=True)
    command = " ".join(shlex.quote(a) for a in ["python", "-m", "benchmarks.extract_throughput", *argv])
    payload = {"benchmark": name, "command": command, "machine": machine(), **payload}
    (out / f"{name}.json").write_text(json.dumps(payload, indent=2))
    m = payload["machine"]
    header = f"# {name}\n\nCommand: `{command}`\n\nMachine: {m['cpu']}, {m['cores']} cores, torch {m['torch']}\n\n"
    (out / f"{name}.md").write_text(header + text + "\n")
    print(text)


if __name__ == "__main__":
    raise SystemExit(main())
