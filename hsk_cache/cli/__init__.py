"""The ``hsk`` command: finetune, extract, train, eval, info, verify, augment.

Every error the library raises on purpose (``HskError``) becomes one line on stderr and exit
status 2; argparse's own usage errors also exit 2.
"""

from __future__ import annotations

import logging
import sys

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


def main(argv: list[str] | None = None) -> int:
    """Run ``hsk`` with ``argv`` (default: the process's arguments). Returns the exit status: 0,
    2 for a refused input (one line on stderr, fields named by their flags), 128 + signal when
    stopped by a signal."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(name)s: %(message)s", force=True
    )
    if not args.verbose:
        quiet_libraries()
    try:
        return COMMANDS[args.command](args)
    except HskError as err:
        print(f"hsk: error: {err.render(flag)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as stop:
        detail = str(stop) or "interrupted"  # a Stopped says what it kept
        print(f"hsk: {detail} (rerun the same command to resume)", file=sys.stderr)
        return 128 + getattr(stop, "signum", 2)  # the shell's convention: 130 for SIGINT, 143 for SIGTERM
    finally:
        if args.command in ("extract", "train") and "torch.distributed" in sys.modules:
            from hsk_cache import distributed

            distributed.shutdown()
