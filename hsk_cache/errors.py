"""One error hierarchy. Each error also subclasses the builtin it refines, so callers that
catch ``ValueError`` or ``FileNotFoundError`` keep working. The CLI turns any ``HskError`` into a
one-line message and exit status 2."""

from __future__ import annotations


class HskError(Exception):
    """Base class of every error hsk-cache raises on purpose."""


class ConfigError(HskError, ValueError):
    """An option or spec value is invalid (unknown strategy, K out of range, bad layer map...)."""


class DataError(HskError, ValueError):
    """A data source is missing, unreadable, empty, or lacks the named columns."""


class DataNotFoundError(DataError, FileNotFoundError):
    """A data path does not exist."""


class ModelError(HskError, ValueError):
    """A model path holds no loadable model, or the model cannot do what was asked."""


class CacheError(HskError, ValueError):
    """A cache is incomplete, of an unknown format version, or mismatches what was asked."""


def first_line(err: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message, for wrapping library errors in one-line ones."""
    lines = str(err).strip().splitlines()
    return lines[0][:limit] if lines else type(err).__name__


class CheckpointError(HskError, ValueError):
    """A training run directory cannot be resumed: another config, or an unreadable checkpoint."""
