"""Output files and directories: atomic writes (temporary name, flush, rename)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def write_dir(final: Path, write) -> None:
    """Create directory ``final`` atomically: ``write(tmp)`` fills a temporary sibling, every file
    is flushed to disk, then it is renamed to ``final`` (an existing ``final`` is replaced only
    once the new one is complete)."""
    tmp = final.parent / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write(tmp)
    for file in tmp.iterdir():
        _fsync(file)
    _fsync(tmp)
    if final.exists():
        trash = final.parent / f".tmp-old-{final.name}-{os.getpid()}"
        os.replace(final, trash)
        os.replace(tmp, final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(tmp, final)
    _fsync(final.parent)


def write_text(path: Path, text: str) -> None:
    """Write a small file atomically (temporary name, flush, rename)."""
    tmp = path.parent / f".tmp-{path.name}-{os.getpid()}"
    tmp.write_text(text)
    commit_file(tmp, path)


def commit_file(tmp: Path, path: Path) -> None:
    """Give the finished file ``tmp`` its final name ``path``: flushed to disk, then renamed
    (atomic on POSIX), so ``path`` is either absent or complete."""
    _fsync(tmp)
    os.replace(tmp, path)
    _fsync(path.parent)


def _fsync(path: Path) -> None:
    if path.is_dir():
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    else:
        with open(path, "rb+") as handle:
            os.fsync(handle.fileno())
