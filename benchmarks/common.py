"""Shared helpers for benchmarks: repeat-and-interleave timing, machine description, result files.

Benchmarks run their competitors in one process, interleaved, several repeats each, and report the
median with min and max: these machines are shared and noisy, so a side-by-side ratio is the
figure that counts.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict:
    import torch

    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def interleave(competitors: dict, repeats: int, warmup: dict | None = None) -> dict[str, list[float]]:
    """Run each competitor (name → zero-argument callable returning seconds or None) once per round,
    rounds ``repeats`` times. Returns name → list of seconds.

    ``warmup``: name → zero-argument callable, each run once, untimed, before the first round (a
    small version of its competitor: the process's one-time costs, such as lazy imports and kernel
    selection, then fall on no timed round)."""
    for fn in (warmup or {}).values():
        fn()
    times = {name: [] for name in competitors}
    for _ in range(repeats):
        for name, fn in competitors.items():
            start = time.perf_counter()
            measured = fn()
            times[name].append(measured if measured is not None else time.perf_counter() - start)
    return times


def summarize(seconds: list[float], work: float) -> dict:
    """Throughput (work/s) median, min, max over repeats."""
    rates = sorted(work / s for s in seconds)
    return {
        "median": statistics.median(rates),
        "min": rates[0],
        "max": rates[-1],
        "repeats": len(rates),
        "seconds": seconds,
    }


def ratios(numerators: list[float], denominators: list[float]) -> dict:
    """Median, min and max of the per-repeat ratios (a side-by-side figure, robust to drift)."""
    values = sorted(a / b for a, b in zip(numerators, denominators))
    return {"median": statistics.median(values), "min": values[0], "max": values[-1]}


def spread(summary: dict, digits: int = 2, suffix: str = "", key: str = "") -> str:
    """'median (min–max)' of a summary dict; ``key`` selects median_s/min_s/max_s style keys."""
    m, lo, hi = (summary[f"{name}{key}"] for name in ("median", "min", "max"))
    return f"{m:.{digits}f}{suffix} ({lo:.{digits}f}–{hi:.{digits}f})"


def write(name: str, payload: dict, table: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    command = ["python", "-m", f"benchmarks.{Path(sys.argv[0]).stem}", *sys.argv[1:]]
    payload = {"benchmark": name, "command": " ".join(shlex.quote(a) for a in command), "machine": machine(), **payload}
    (RESULTS / f"{name}.json").write_text(json.dumps(payload, indent=2))
    header = (
        f"# {name}\n\nCommand: `{payload['command']}`\n\nMachine: {payload['machine']['cpu']}, "
        f"{payload['machine']['cores']} cores, torch {payload['machine']['torch']}\n\n"
    )
    (RESULTS / f"{name}.md").write_text(header + table + "\n")
    print(table)


def write_run(out: Path, name: str, payload: dict, text: str, extra: str = "") -> None:
    """``<out>/<name>.json`` (the payload: ``command``, ``machine``, ``load_average_1min``
    {start, end}, ``elapsed_s``, ``description``) and ``<name>.md``: a header naming the command,
    the machine and its load, the description and ``extra``, then ``text`` (the tables)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(payload, indent=2))
    m, load = payload["machine"], payload["load_average_1min"]
    header = (
        f"# {name}\n\nCommand: `{payload['command']}`\n\nMachine: {m['cpu']}, {m['cores']} cores, "
        f"{m['torch_threads']} torch threads, torch {m['torch']}; 1-minute load average {load['start']:.1f} at the "
        f"start, {load['end']:.1f} at the end; {payload['elapsed_s']:.0f} s in all\n\n{payload['description']}\n\n"
    )
    (out / f"{name}.md").write_text(header + extra + text + "\n")
    print(text)
