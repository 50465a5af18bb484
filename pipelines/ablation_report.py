"""Ablation results: the table (Parquet + Markdown) and the plots.

    python -m pipelines.ablation_report [--out docs/ablations]

Plots per sweep and student (matplotlib, PNG): dev metric vs fraction of the hidden-state knowledge
kept (log x axis), one line per strategy, mean over seeds with min–max error bars, that student's
baselines as horizontal lines; and dev metric vs stored bytes per example.
"""

from __future__ import annotations

import argparse
import statistics
from collections import defaultdict
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

TABLE = "results.parquet"
BASELINES = "baselines"


def load(out: Path) -> list[dict]:
    path = Path(out) / TABLE
    return pq.read_table(path).to_pylist() if path.exists() else []


def save(rows: list[dict], out: Path) -> None:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), out / TABLE)
    (out / "results.md").write_text(markdown(rows))


def schedule(row: dict) -> str:
    """A row's training schedule: hidden-state stage + prediction (or label) stage epochs, and their
    learning rates, e.g. ``1+1 @ 0.0001/5e-05`` (``0 @ 0/…`` where there is no hidden stage)."""
    return f"{row['hidden_epochs']:g}+{row['pred_epochs']:g} @ {row['hidden_lr']:g}/{row['pred_lr']:g}"


def grouped(rows: list[dict]) -> dict[tuple, list[dict]]:
    """Rows by (sweep, strategy, point, student, schedule): the seeds of one point."""
    groups = defaultdict(list)
    for r in rows:
        groups[(r["sweep"], r["strategy"], r["point"], r["student"], schedule(r))].append(r)
    return groups


def markdown(rows: list[dict]) -> str:
    lines = [
        "| sweep | strategy | point | student | epochs @ lr | seeds | accuracy mean (min–max) | MCC mean | "
        "bytes/example | "
        "fraction of HSK kept |",
        "|---|---|---|---|---|---:|---|---:|---:|---:|",
    ]
    for (sweep, strategy, point, student, ep), group in sorted(grouped(rows).items()):
        acc = [r["accuracy"] for r in group]
        lines.append(
            f"| {sweep} | {strategy} | {point} | {student} | {ep} | {len(group)} | {statistics.mean(acc):.4f} "
            f"({min(acc):.4f}–{max(acc):.4f}) | {statistics.mean(r['mcc'] for r in group):.4f} | "
            f"{group[0]['bytes_per_example']:,.0f} | {group[0]['fraction_kept']:.2e} |"
        )
    return "\n".join(lines) + "\n"


def plots(rows: list[dict], out: Path, metric: str = "accuracy") -> list[Path]:
    """Two PNGs per (sweep, student), except baselines: ``<sweep>_<student>_fraction.png`` and
    ``<sweep>_<student>_bytes.png``, with that student's baselines as horizontal lines. Points that
    keep no hidden states (fraction 0: attention, value relation) appear only in the bytes plot.
    Returns the paths written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    baselines = defaultdict(dict)  # student → label → mean metric
    for (sweep, strategy, _, student, ep), group in grouped(rows).items():
        if sweep == BASELINES:
            baselines[student][f"{strategy}, {ep}"] = statistics.mean(r[metric] for r in group)
    for sweep, student in sorted({(r["sweep"], r["student"]) for r in rows if r["sweep"] != BASELINES}):
        for x_key, x_label, name in (
            ("fraction_kept", "fraction of hidden-state knowledge kept", "fraction"),
            ("bytes_per_example", "stored bytes per example", "bytes"),
        ):
            fig, ax = plt.subplots(figsize=(7, 4.5))
            lines = defaultdict(list)
            for (s, strategy, _, st, ep), group in grouped(rows).items():
                if s == sweep and st == student:
                    values = [r[metric] for r in group]
                    lines[f"{strategy}, {ep}"].append(
                        (group[0][x_key], statistics.mean(values), min(values), max(values))
                    )
            for strategy, pts in sorted(lines.items()):
                pts = sorted(p for p in pts if p[0] > 0)
                if not pts:
                    continue
                x, y, lo, hi = zip(*pts)
                ax.errorbar(
                    x,
                    y,
                    yerr=[[a - b for a, b in zip(y, lo)], [b - a for a, b in zip(y, hi)]],
                    marker="o",
                    capsize=3,
                    label=strategy,
                )
            for i, (strategy, value) in enumerate(sorted(baselines[student].items())):
                ax.axhline(
                    value,
                    linestyle=("--", ":", "-.")[i % 3],
                    linewidth=1,
                    color=plt.cm.Dark2(i % 8),
                    label=f"baseline: {strategy}",
                )
            ax.set_xscale("log")
            ax.set_xlabel(x_label)
            ax.set_ylabel(f"dev {metric}")
            ax.set_title(f"{sweep} sweep, student {student} (mean, min–max over seeds)")
            ax.legend(fontsize=7)
            fig.tight_layout()
            path = Path(out) / f"{sweep}_{student}_{name}.png"
            fig.savefig(path, dpi=110)
            plt.close(fig)
            written.append(path)
    return written


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="docs/ablations", help="folder with results.parquet (default: %(default)s)")
    args = parser.parse_args(argv)
    rows = load(Path(args.out))
    save(rows, Path(args.out))
    for path in plots(rows, Path(args.out)):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
