"""``python -m hsk_cache.cli``: the ``hsk`` command (torchrun launches it this way)."""

import sys

from hsk_cache.cli import main

sys.exit(main())
