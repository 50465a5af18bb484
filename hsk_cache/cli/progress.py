"""Console output for the CLI and pipelines: progress bars (the library itself only takes a bar
factory) and quieting the libraries' own logs and bars."""

from __future__ import annotations

import re
import sys

LOG_INTERVAL_S = 10.0  # off a terminal: one progress line this often (seconds)
_CONTROL = re.compile(r"\r|\x1b\[A")  # tqdm's carriage returns and cursor-up moves


class _Lines:
    """A file for tqdm off a terminal (a log file, a CI log): each refresh becomes one plain line
    (carriage returns and cursor moves dropped, blank clears skipped) on ``stream``."""

    def __init__(self, stream) -> None:
        self.stream = stream

    def write(self, text: str) -> None:
        for line in _CONTROL.split(text):
            if line.strip():
                self.stream.write(line.rstrip() + "\n")

    def flush(self) -> None:
        self.stream.flush()


def bar(description: str, total: int, initial: int = 0, unit: str = "ex"):
    """A tqdm bar counting examples (shows examples/s), or ``unit``; starts at work already done
    on resume. On a terminal it redraws in place; off one (stderr redirected to a file or a CI
    log) it prints one line every ``LOG_INTERVAL_S`` seconds and a last one at the end."""
    from tqdm.auto import tqdm

    stream = sys.stderr
    if getattr(stream, "isatty", lambda: False)():
        return tqdm(total=total, initial=initial, desc=description, unit=unit, dynamic_ncols=True, leave=False)
    return tqdm(
        total=total,
        initial=initial,
        desc=description,
        unit=unit,
        file=_Lines(stream),
        ncols=100,
        mininterval=LOG_INTERVAL_S,
        maxinterval=LOG_INTERVAL_S,
        leave=True,
    )


def quiet_libraries() -> None:
    """Silence transformers' and datasets' logs and bars; errors reach the user as HskError lines."""
    import datasets
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)
    datasets.disable_progress_bars()
