"""hsk_cache.allocator: glibc keeps a forward pass's freed activations (no page faults to touch
them again), and leaves an allocator the user chose alone. Each case runs in a fresh interpreter:
the setting is process-wide and cannot be undone."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

glibc = pytest.mark.skipif(
    not sys.platform.startswith("linux") or not os.confstr("CS_GNU_LIBC_VERSION"), reason="glibc only"
)

# allocate, fill and free a 48 MB float32 tensor 8 times (a large activation, as a forward's are) and
# count the minor page faults of the last 6 passes: every pass faults its pages anew when glibc
# returns the block to the kernel, none when it keeps it
PROBE = """
import json, resource, sys, torch
from hsk_cache import allocator
applied = allocator.retain_freed_memory() if sys.argv[1] == "tune" else False
faults = []
for i in range(8):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = torch.ones(12_000_000)
    del block
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"applied": applied, "faults": sum(faults[2:])}))
"""


def probe(mode: str, **env) -> dict:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    environment.pop("GLIBC_TUNABLES", None)
    environment.pop("HSK_MALLOC_TUNING", None)
    done = subprocess.run(
        [sys.executable, "-c", PROBE, mode], env={**environment, **env}, capture_output=True, text=True, check=True
    )
    return json.loads(done.stdout)


@glibc
def test_tuned_glibc_keeps_a_freed_block_for_the_next_pass():
    default, tuned = probe("defaults"), probe("tune")
    assert tuned["applied"] and not default["applied"]
    assert default["faults"] >= 6 * 11_000  # 48 MB / 4 KiB pages, every pass
    assert tuned["faults"] < 100


@glibc
@pytest.mark.parametrize(
    "env", [{"HSK_MALLOC_TUNING": "0"}, {"MALLOC_TRIM_THRESHOLD_": "131072"}, {"LD_PRELOAD": "/opt/libjemalloc.so.2"}]
)
def test_an_allocator_the_user_chose_is_left_alone(env):
    left = probe("tune", **env)
    assert not left["applied"] and left["faults"] >= 6 * 11_000
