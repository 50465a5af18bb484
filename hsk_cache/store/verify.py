"""``hsk verify``: check every committed shard file against its commit record, every small
global array (dim_index) against its chunk checksums, the manifest against the sha256 written
with it and the arrays' shapes against its counts, and the stored tokenizer's files against the
sizes and crc32c the manifest recorded (and that transformers loads them).

A shard is bad when one of its files is missing, has another size than was written, or has
another crc32c, or when its commit record itself is unreadable. ``hsk extract`` with the same
options re-extracts exactly the bad shards (it runs this check first when it resumes).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import zarr

from hsk_cache.errors import CacheError
from hsk_cache.store import commits, layout
from hsk_cache.store.manifest import Manifest
from hsk_cache.store.reader import TOKENIZER_GROUP, CacheReader

MANIFEST = "zarr.json (manifest)"  # Problem.array of the manifest's own problems


@dataclass(frozen=True)
class Problem:
    """One damaged file. shard: its shard (None for a global array); rows: its examples [start, stop)."""

    shard: int | None
    array: str
    problem: str
    rows: tuple[int, int] | None = None

    @property
    def where(self) -> str:
        """``shard 3 of logits (examples 24..31)``, or the global array's name."""
        return (
            f"shard {self.shard} of {self.array} (examples {self.rows[0]}..{self.rows[1] - 1})"
            if self.rows
            else self.array
        )


@dataclass
class VerifyReport:
    """What ``verify`` found in one cache.

    Attributes:
        path: the cache's path or URL.
        num_shards: shards in the cache's layout.
        committed: shards with a complete commit record (the ones checked).
        complete: the manifest says extraction finished.
        problems: every damaged file found (missing, resized, another crc32c, an unreadable
            commit record, a corrupt global array); empty when all is well.
        checked_bytes: bytes of the committed shard files read and checked (global arrays not
            counted).
        elapsed_s: wall-clock seconds the check took.
    """

    path: str
    num_shards: int
    committed: int
    complete: bool
    problems: list[Problem] = field(default_factory=list)
    checked_bytes: int = 0
    elapsed_s: float = 0.0

    @property
    def bad_shards(self) -> list[int]:
        """The shards with at least one problem, ascending (the ones ``hsk extract`` re-extracts)."""
        return sorted({p.shard for p in self.problems if p.shard is not None})

    @property
    def ok(self) -> bool:
        """Complete and undamaged: safe to train from."""
        return self.complete and not self.problems


def verify(path: str | Path, progress=None, storage_options: dict | None = None) -> VerifyReport:
    """Check the cache at ``path`` (a directory or fsspec URL opened with ``storage_options``).

    progress: optional factory ``progress(description, total, initial)`` returning a bar with
    ``update(n)`` and ``close()``, counted in shards.
    Raises: CacheError if ``path`` is no cache or has an unknown format version.
    """
    started = time.perf_counter()
    reader = CacheReader(path, storage_options, check_seal=False)
    report = VerifyReport(reader.path, reader.manifest.layout.num_shards, 0, reader.complete)
    found = [Problem(None, MANIFEST, p) for p in [reader.manifest.seal_problem()] if p]
    found += [Problem(None, MANIFEST, p) for p in reader.shape_problems()]
    report.problems, report.checked_bytes, report.committed = check_group(reader.group, reader.manifest, progress)
    report.problems = found + report.problems + _check_tokenizer(reader)
    report.elapsed_s = time.perf_counter() - started
    return report


def check_group(
    group: zarr.Group, manifest: Manifest, progress=None, part: tuple[int, int] = (0, 1)
) -> tuple[list[Problem], int, int]:
    """(problems, bytes checked, committed shards) of an open cache group; ``part`` (i, k) checks
    only every k-th committed shard from the i-th (and the global arrays only for i = 0)."""
    rows, unreadable = commits.read_commits(group)
    names = commits.commit_names(group)
    n, shard_examples = manifest.num_examples, manifest.layout.shard_examples
    problems = [
        Problem(s, layout.COMMIT_ARRAY, "commit record damaged", layout.shard_range(s, n, shard_examples))
        for s in (unreadable if part[0] == 0 else [])
    ]
    committed = np.flatnonzero(commits.committed_mask(rows))[part[0] :: part[1]]
    bar = progress("verify shards", len(committed), 0) if progress is not None else None
    checked = 0
    arrays = [group[name] for name in names]
    for shard in committed:
        span = layout.shard_range(int(shard), n, shard_examples)
        found = commits.records(group, [commits.shard_key(array, int(shard)) for array in arrays])
        for i, (name, record) in enumerate(zip(names, found)):
            problem = _compare(record, commits.FileRecord(int(rows[shard, i, 0]), int(rows[shard, i, 1])))
            checked += 0 if record is None else record.nbytes
            if problem:
                problems.append(Problem(int(shard), name, problem, span))
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    if part[0] == 0:
        problems += _check_globals(group, manifest)
    return problems, checked, len(committed)


def _compare(found: commits.FileRecord | None, expected: commits.FileRecord) -> str | None:
    if found is None:
        return "missing"
    if found.nbytes != expected.nbytes:
        return f"{found.nbytes} bytes, {expected.nbytes} written"
    if found.crc32c != expected.crc32c:
        return f"crc32c {found.crc32c:08x}, {expected.crc32c:08x} written"
    return None


def _check_tokenizer(reader: CacheReader) -> list[Problem]:
    """The stored tokenizer: its files as recorded, and loadable by transformers."""
    files, problem = reader.tokenizer_problem()
    if problem is None:
        try:
            reader.load_tokenizer(files)
        except CacheError as err:
            problem = str(err).split(": ", 1)[-1].split("; `hsk verify")[0]
    return [Problem(None, TOKENIZER_GROUP, problem)] if problem else []


def _check_globals(group: zarr.Group, manifest: Manifest) -> list[Problem]:
    """Arrays not chunked along N are small: decoding them checks their chunk crc32c (the
    tokenizer's files are ``_check_tokenizer``'s)."""
    names = [spec.name for spec in layout.manifest_arrays(manifest) if not spec.per_example]
    problems = []
    for name in names:
        try:
            group[name][...]
        except KeyError:
            problems.append(Problem(None, name, "missing"))
        except ValueError as err:
            problems.append(Problem(None, name, f"corrupt ({str(err).split('.')[0]})"))
    return problems


def table(report: VerifyReport) -> str:
    """The bad shards as a Markdown table: shard, examples, array, problem."""
    lines = ["| shard | examples | array | problem |", "|---|---|---|---|"]
    for p in sorted(report.problems, key=lambda p: (p.shard is None, p.shard or 0, p.array)):
        rows = f"{p.rows[0]}..{p.rows[1] - 1}" if p.rows else "-"
        lines.append(f"| {'-' if p.shard is None else p.shard} | {rows} | {p.array} | {p.problem} |")
    return "\n".join(lines)
