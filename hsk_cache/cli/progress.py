"""Console output for the CLI and pipelines: progress bars (the library itself only takes a bar
factory) and quieting the libraries' own logs and bars."""

from __future__ import annotations


def bar(description: str, total: int, initial: int = 0, unit: str = "ex"):
    """A tqdm bar counting examples (shows examples/s), or ``unit``; starts at work already done on resume."""
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=description, unit=unit, dynamic_ncols=True, leave=False)


def quiet_libraries() -> None:
    """Silence transformers' and datasets' logs and bars; errors reach the user as HskError lines."""
    import datasets
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)
    datasets.disable_progress_bars()
