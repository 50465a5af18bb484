"""One error hierarchy. Each error also subclasses the builtin it refines, so callers that
catch ``ValueError`` or ``FileNotFoundError`` keep working. The CLI turns any ``HskError`` into a
one-line message and exit status 2.

Errors name the setting they are about by its field (``dtype``, ``layer_map``, ``max_length``), not
by a command-line flag: a message is written with ``{field}`` placeholders, ``str(err)`` shows the
field names, and the CLI shows the flags instead (``err.render(flags)``). ``err.field`` and
``err.value`` carry the setting and the offending value for callers that handle them.
"""

from __future__ import annotations

import re

_PLACEHOLDER = re.compile(r"\{([a-z_][a-z0-9_.]*)\}")


class HskError(Exception):
    """Base class of every error hsk-cache raises on purpose.

    Args:
        message: one line; ``{name}`` placeholders stand for settings (fields) and are shown as
            the field name, or by ``render`` as whatever a front end calls the setting.
        field: the setting the error is about (a config field name), or None.
        value: the offending value, or None.
    """

    def __init__(self, message: str = "", *, field: str | None = None, value=None) -> None:
        self.template, self.field, self.value = message, field, value
        super().__init__(self.render())

    def render(self, names=None) -> str:
        """The message with each ``{name}`` placeholder replaced by ``names(name)`` (default: the
        name itself)."""
        name_of = names or (lambda name: name)
        return _PLACEHOLDER.sub(lambda m: name_of(m.group(1)), self.template)


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


class StoreAccessError(HskError, ConnectionError):
    """The object store holding a cache cannot be reached: nothing answers at its endpoint, it
    accepts connections but does not answer in time, or no credentials were found for it. Not a
    ``CacheError``: nothing is known about the cache itself (code that treats a ``CacheError`` as
    "no cache there" must not take an unreachable store for an empty one)."""


class CheckpointError(HskError, ValueError):
    """A training run directory cannot be resumed: another config, or an unreadable checkpoint."""


def first_line(err: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message, for wrapping library errors in one-line ones."""
    lines = str(err).strip().splitlines()
    return lines[0][:limit] if lines else type(err).__name__
