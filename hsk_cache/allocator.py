"""glibc's allocator, told to keep freed memory for the next forward pass instead of handing it
back to the kernel.

A CPU forward pass frees and reallocates the same large activations every batch (BERT eager
attention at batch 32 × 128 tokens: [32, 12, 128, 128] float32 scores and probabilities, 25 MB
each, and the [32, 128, 4·D] feed-forward activations). With glibc's defaults the top of the heap
is trimmed once more than twice the (dynamic, ≤ 32 MiB) mmap threshold is free, and larger blocks
are mmapped and unmapped, so each batch touches its activations as fresh pages: measured here
(2-core Xeon, glibc 2.36, the bundled MiniLM-L6 teacher, batch 32 × 128) 60–70k minor page
faults per forward and 12–24% of its time, for the eager (top-k) and the sdpa forward alike.
Raising the trim and mmap thresholds (``mallopt``) takes the faults to 0 and changes no number
computed: the memory is the same, only when it is returned differs.

The cost is memory kept: the process's resident size stays at its peak (the heap shrinks only
when more than ``THRESHOLD_BYTES`` at its top is free). The ``hsk`` command sets this for its own
process (``cli.main``); library users opt in with ``retain_freed_memory()``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys

log = logging.getLogger(__name__)

THRESHOLD_BYTES = 1 << 30  # trim and mmap thresholds: 1 GiB
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's malloc.h
_MMAP_THRESHOLD_MAX = 32 << 20  # glibc's largest mmap threshold on 64-bit before 2.35's larger heaps
OPT_OUT = "HSK_MALLOC_TUNING"  # 0: leave the allocator as it is
# the user has tuned glibc already, or replaced it (jemalloc, tcmalloc, mimalloc): theirs stands
_USER_SETTINGS = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_", "GLIBC_TUNABLES")
_OTHER_ALLOCATORS = ("jemalloc", "tcmalloc", "mimalloc")

_applied = False


def retain_freed_memory() -> bool:
    """Raise glibc's trim threshold (and mmap threshold, 1 GiB where glibc accepts it, else
    32 MiB) for this whole process, once (module docstring). Returns whether the allocator is
    tuned by hsk now.

    Leaves the allocator alone (returns False, no error) when ``HSK_MALLOC_TUNING=0``, when the
    environment already tunes glibc (``MALLOC_*_`` variables, ``GLIBC_TUNABLES``) or preloads
    another allocator (``LD_PRELOAD`` naming jemalloc, tcmalloc or mimalloc), and off glibc
    (macOS, Windows, musl).
    """
    global _applied
    if _applied:
        return True
    if os.environ.get(OPT_OUT, "1") == "0" or not sys.platform.startswith("linux"):
        return False
    preload = os.environ.get("LD_PRELOAD", "")
    if any(name in os.environ for name in _USER_SETTINGS) or any(a in preload for a in _OTHER_ALLOCATORS):
        return False
    libc = _glibc()
    if libc is None:
        return False
    # mmap first: setting either threshold freezes glibc's dynamic one, so neither may stay at 128 KiB
    if not libc.mallopt(_M_MMAP_THRESHOLD, THRESHOLD_BYTES) and not libc.mallopt(
        _M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX
    ):
        return False
    if not libc.mallopt(_M_TRIM_THRESHOLD, THRESHOLD_BYTES):
        return False
    _applied = True
    log.info("glibc malloc: trim and mmap thresholds raised (%s=0 leaves them)", OPT_OUT)
    return True


def _glibc():
    """The C library when it is glibc (it has ``gnu_get_libc_version`` and ``mallopt``), else None."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 (an AttributeError off glibc)
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.mallopt.restype = ctypes.c_int
    except (OSError, AttributeError):
        return None
    return libc
