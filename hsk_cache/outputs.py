"""Output files and directories: atomic writes (temporary name, flush, rename), and the one
decision of whether an output directory may take a new run (``check_output``)."""

from __future__ import annotations

import enum
import fnmatch
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from hsk_cache.errors import HskError


class OutputState(enum.Enum):
    """What a new run does with its output, as ``check_output`` decides."""

    FREE = "free"  # nothing is there (absent, or empty): start
    SAME = "same"  # a run of this kind with the same identity: resume it
    REPLACE = "replace"  # something is there and ``overwrite`` replaces it: clear it, then start


@dataclass(frozen=True)
class OutputKind:
    """One kind of output (a cache, a training run, an augmentation) and how its refusals read.

    Attributes:
        run: the kind's run, as in "holds {run} with a different seed": "a cache", "a run".
        error: the error class every refusal raises (with ``field="out"``).
        foreign: the refusal of an output that holds something else, after its name.
        fix: what to do about a run of other settings, after the difference.
        Messages name settings by ``{field}`` placeholders (``{out}``, ``{overwrite}``).
        foreign_overwrite: the refusal of something else under ``overwrite`` ("": ``foreign``).
        overwrite_replaces_foreign: ``overwrite`` replaces anything at all instead of refusing it.
    """

    run: str
    error: type[HskError]
    foreign: str
    fix: str = "pass {overwrite} to replace it, or choose another {out}"
    foreign_overwrite: str = ""
    overwrite_replaces_foreign: bool = False


def check_output(
    where: str,
    kind: OutputKind,
    *,
    identity: dict,
    held: dict | Callable[[], dict] | None,
    empty: bool,
    overwrite: bool,
) -> OutputState:
    """Decide whether an output may take a new run, from facts the caller read (a local
    directory: ``check_output_dir``; a cache at a URL: its manifest and listing).

    Args:
        where: the output as messages name it, e.g. ``"{out} '/runs/a'"`` or ``"'s3://b/cache'"``.
        kind: the kind of run the output is for.
        identity: this run's identity (JSON form): the settings a resumed run must match.
        held: None when the output holds no run of this kind; else the identity of the run it
            holds, or a function reading it (called only when needed: not under ``overwrite``).
        empty: nothing is there (absent, or empty but for entries that do not count).
        overwrite: replace what is there.

    Returns:
        ``OutputState.FREE``, ``SAME`` (resume) or ``REPLACE`` (clear it first).

    Raises:
        kind.error: the output holds something else (unless ``overwrite`` replaces it), or a run
            of other settings and ``overwrite`` is False; one line naming ``where`` and the fix.
    """
    if held is None:
        if empty:
            return OutputState.FREE
        if overwrite and kind.overwrite_replaces_foreign:
            return OutputState.REPLACE
        raise kind.error(f"{where} {(kind.foreign_overwrite if overwrite else '') or kind.foreign}", field="out")
    if overwrite:
        return OutputState.REPLACE
    first = next(_differences(held() if callable(held) else held, identity), None)
    if first is not None:
        key, (old, new) = first
        raise kind.error(
            f"{where} holds {kind.run} with a different {key} ({old!r} vs {new!r}): {kind.fix}", field="out"
        )
    return OutputState.SAME


def check_output_dir(
    path: str | Path,
    kind: OutputKind,
    *,
    marker: str,
    identity: dict,
    read: Callable[[Path], dict],
    overwrite: bool,
    ignore: tuple[str, ...] = (),
) -> OutputState:
    """``check_output`` for a local directory, named ``{out} PATH`` in messages.

    Args:
        path: the output directory (it need not exist).
        kind: the kind of run the directory is for.
        marker: the file that marks a run of this kind (``hsk_run.json``).
        identity: this run's identity (JSON form).
        read: reads the identity of the run the directory holds from its marker file.
        overwrite: replace what is there.
        ignore: glob patterns of entries that do not count (a lock file, ``.tmp-*``).

    Returns:
        The ``OutputState``, as ``check_output``.

    Raises:
        kind.error: ``path`` is a file, or as ``check_output``; ``read``'s errors.
    """
    path = Path(path)
    where = f"{{out}} {str(path)!r}"
    if path.exists() and not path.is_dir():
        raise kind.error(f"{where} is a file: give a directory for {kind.run}", field="out", value=str(path))
    mark = path / marker
    if mark.is_file():
        return check_output(where, kind, identity=identity, held=lambda: read(mark), empty=False, overwrite=overwrite)
    empty = not path.is_dir() or all(any(fnmatch.fnmatch(p.name, g) for g in ignore) for p in path.iterdir())
    return check_output(where, kind, identity=identity, held=None, empty=empty, overwrite=overwrite)


def _differences(old, new, prefix: str = ""):
    """(dotted key, (old value, new value)) of every leaf where ``old`` and ``new`` differ."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in [*new, *(k for k in old if k not in new)]:
            yield from _differences(old.get(key), new.get(key), f"{prefix}{key}.")
    elif isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        for i, (a, b) in enumerate(zip(old, new)):
            yield from _differences(a, b, f"{prefix}{i}.")
    elif old != new:
        yield prefix.rstrip("."), (old, new)


def check_writable(path: str | Path, error: type[HskError], field: str = "out") -> None:
    """A new file can be created at the local path ``path``, or in the nearest existing
    directory above it (where the command will create it): a probe file is created there and
    removed at once, so a read-only file system, missing permissions or a file in the way are
    found before any work starts.

    Raises: ``error`` (field ``field``) naming the path, the reason and the fix.
    """
    target = Path(path).expanduser()
    probe = target
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise error(
            f"{{{field}}} {str(path)!r} cannot be created: {str(probe)!r} is a file, not a directory; "
            f"choose another {{{field}}}",
            field=field,
            value=str(path),
        )
    try:
        fd, name = tempfile.mkstemp(dir=probe, prefix=".hsk-write-probe-")
        os.close(fd)
        os.unlink(name)
    except OSError as err:
        raise error(
            f"{{{field}}} {str(path)!r} is not writable ({err.strerror or type(err).__name__} in {str(probe)!r}): "
            f"choose another {{{field}}}, or make it writable",
            field=field,
            value=str(path),
        ) from None


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
