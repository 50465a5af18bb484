"""hsk_cache.allocator: glibc keeps a forward pass's freed activations (no page faults to touch
them again), and leaves an allocator the user chose alone. Each case runs in a fresh interpreter:
the setting is process-wide and cannot be undone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

glibc = pytest.mark.skipif(
    not sys.platform.startswith("linux") or not os.confstr("CS_GNU_LIBC_VERSION"), reason="glibc only"
)

BLOCK_PAGES = 11_000  # a 48 MB block in 4 KiB pages (11,719), less slack

# malloc, fill and free a 48 MB block 12 times (a large activation, as a forward's are: torch's CPU
# tensors are glibc allocations) and count the minor page faults of each pass: every pass faults
# its pages anew when glibc returns the block to the kernel, none when it keeps it. The heap itself
# may grow over the first passes (seen here with torch tensors in passes 1-3), so the figure is the
# median of passes 4-11. The module is loaded from its file: importing the hsk_cache package (torch,
# transformers, datasets) would take seconds per probe.
PROBE = """
import ctypes, importlib.util, json, resource, statistics, sys
spec = importlib.util.spec_from_file_location("allocator", sys.argv[2])
allocator = importlib.util.module_from_spec(spec)
spec.loader.exec_module(allocator)
applied = allocator.retain_freed_memory() if sys.argv[1] == "tune" else False
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
faults = []
for i in range(12):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = libc.malloc(48_000_000)
    ctypes.memset(block, 1, 48_000_000)
    libc.free(block)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
later = faults[4:]
print(json.dumps({"applied": applied, "median": statistics.median(later), "least": min(later)}))
"""
MODULE = str(Path(__file__).resolve().parents[1] / "hsk_cache" / "allocator.py")


def probe(mode: str, **env) -> dict:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    environment.pop("GLIBC_TUNABLES", None)
    environment.pop("HSK_MALLOC_TUNING", None)
    done = subprocess.run(
        [sys.executable, "-c", PROBE, mode, MODULE],
        env={**environment, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout)


@glibc
def test_tuned_glibc_keeps_a_freed_block_for_the_next_pass():
    default, tuned = probe("defaults"), probe("tune")
    assert tuned["applied"] and not default["applied"]
    assert default["least"] >= BLOCK_PAGES  # every pass, all of its pages
    assert tuned["median"] < 100


@glibc
@pytest.mark.parametrize(
    "env", [{"HSK_MALLOC_TUNING": "0"}, {"MALLOC_TRIM_THRESHOLD_": "131072"}, {"LD_PRELOAD": "/opt/libjemalloc.so.2"}]
)
def test_an_allocator_the_user_chose_is_left_alone(env):
    left = probe("tune", **env)
    assert not left["applied"] and left["least"] >= BLOCK_PAGES
