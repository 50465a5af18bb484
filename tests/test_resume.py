"""An extraction killed with SIGKILL part-way resumes to a cache bitwise identical to an uninterrupted one."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import zarr

from hsk_cache.cli import main

ARGS = [
    "--data",
    "{data}",
    "--max-length",
    "32",
    "--layers",
    "all",
    "--tokens",
    "topk:5",
    "--shard-examples",
    "8",
    "--batch-size",
    "4",
    "--dtype",
    "float16",
]

# Runs the real CLI in a child process; while writing the third shard (after its first array,
# before its commit marker) the process SIGKILLs itself: a hard crash mid-shard.
KILLER = textwrap.dedent("""
    import os, signal, sys
    from hsk_cache.store import writer
    original = writer.CacheWriter.write_shard
    def write_shard(self, shard, start, block):
        if shard == 2:
            name = next(iter(block))
            self.group[name][start:start + len(block[name])] = block[name]
            os.kill(os.getpid(), signal.SIGKILL)
        original(self, shard, start, block)
    writer.CacheWriter.write_shard = write_shard
    from hsk_cache.cli import main
    sys.exit(main(sys.argv[1:]))
""")


def _args(teacher, data, out):
    return ["extract", "--teacher", teacher, "--out", out] + [a.format(data=data) for a in ARGS]


def test_killed_extraction_resumes_bitwise_identical(tiny_teacher, toy_dir, tmp_path, capsys):
    reference, resumed = str(tmp_path / "reference"), str(tmp_path / "resumed")
    assert main(_args(tiny_teacher, toy_dir, reference)) == 0

    child = subprocess.run(
        [sys.executable, "-c", KILLER, *_args(tiny_teacher, toy_dir, resumed)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert child.returncode == -9, child.stderr
    partial = zarr.open_group(resumed, mode="r")
    committed = (partial["shard_commits"][:, :, 0] > 0).all(axis=1)  # a row of (bytes, crc32c) per array
    assert committed.tolist() == [True, True] + [False] * 6
    assert json.load(open(os.path.join(resumed, "zarr.json")))["attributes"]["hsk_cache"]["complete"] is False

    # training refuses the incomplete cache, with a one-line error and exit 2
    capsys.readouterr()
    assert main(["train", "--from-cache", resumed, "--out", str(tmp_path / "student")]) == 2
    assert "incomplete (2/8 shards)" in capsys.readouterr().err
    assert not (tmp_path / "student").exists()

    assert main(_args(tiny_teacher, toy_dir, resumed)) == 0
    assert "6 shards written, 2 resumed" in capsys.readouterr().out
    a, b = zarr.open_group(reference, mode="r"), zarr.open_group(resumed, mode="r")
    assert sorted(a.array_keys()) == sorted(b.array_keys())
    for name in a.array_keys():
        assert a[name].dtype == b[name].dtype
        np.testing.assert_array_equal(a[name][:], b[name][:], err_msg=name)
    assert dict(a.attrs) == dict(b.attrs)
