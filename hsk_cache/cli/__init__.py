"""The ``hsk`` command: finetune, extract, train, eval, info, verify, augment.

Every error the library raises on purpose (``HskError``), and an object store that cannot be
reached, becomes one line on stderr and exit status 2; argparse's own usage errors also exit 2.
Under a launcher (torchrun: ``WORLD_SIZE`` > 1) only rank 0 prints that line; the other ranks
exit with the same status silently, so a refusal every rank reaches is shown once.
"""

from __future__ import annotations

import logging
import os
import sys

from hsk_cache.allocator import retain_freed_memory
from hsk_cache.cli.commands import COMMANDS
from hsk_cache.cli.parser import build_parser
from hsk_cache.cli.progress import quiet_libraries
from hsk_cache.errors import HskError

__all__ = ["COMMANDS", "build_parser", "flag", "main"]
# library fields whose flag is not --field-name
FLAGS = {
    "cache": "--from-cache",
    "online_teacher": "--online",
    "memory_budget_bytes": "--memory-budget-gb",
    "student.family": "--student-family",
    "student.init_layers": "--init-layers",
    "stages.hidden.epochs": "--hidden-epochs",
    "stages.prediction.epochs": "--pred-epochs",
}


def flag(field: str) -> str:
    """The command-line flag of a library field (``layer_map`` → ``--layer-map``)."""
    return FLAGS.get(field, "--" + field.rsplit(".", 1)[-1].replace("_", "-"))


def _say(line: str) -> None:
    """Print ``line`` on stderr, from rank 0 only when a launcher started several processes
    (``RANK`` and ``WORLD_SIZE``, as ``distributed.init`` reads them; read here from the
    environment, so a refusal raised before the process group exists is shown once too)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and os.environ.get("RANK", "0") != "0":
        return
    print(line, file=sys.stderr)


def _store_access_errors() -> tuple[type[BaseException], ...]:
    """``store.location.access_errors()`` once a cache location was opened (evaluated only when an
    exception reaches ``main``, so ``hsk --help`` imports no storage code)."""
    location = sys.modules.get("hsk_cache.store.location")
    return location.access_errors() if location is not None else ()


def main(argv: list[str] | None = None) -> int:
    """Run ``hsk`` with ``argv`` (default: the process's arguments). Returns the exit status: 0,
    2 for a refused input or an unreachable object store (one line on stderr, fields named by
    their flags; under torchrun from rank 0 only, every rank returning 2), 128 + signal when
    stopped by a signal."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(name)s: %(message)s", force=True
    )
    if not args.verbose:
        quiet_libraries()
    retain_freed_memory()  # this process is hsk's: its CPU forwards keep their pages (``allocator``)
    try:
        return COMMANDS[args.command](args)
    except HskError as err:
        _say(f"hsk: error: {err.render(flag)}")
        return 2
    except _store_access_errors() as err:  # an object store lost mid-way, below store.location's own checks
        from hsk_cache.store.location import access_error

        _say(f"hsk: error: {access_error(err).render(flag)}")
        return 2
    except KeyboardInterrupt as stop:
        detail = str(stop) or "interrupted"  # a Stopped says what it kept
        _say(f"hsk: {detail} (rerun the same command to resume)")
        return 128 + getattr(stop, "signum", 2)  # the shell's convention: 130 for SIGINT, 143 for SIGTERM
    finally:
        if args.command in ("extract", "train") and "torch.distributed" in sys.modules:
            from hsk_cache import distributed

            distributed.shutdown()
