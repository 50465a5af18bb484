"""The scale-out benchmark's smoke run (``benchmarks.scale_out --quick``): extraction on 1 process and on
2 torchrun ranks (one thread each), and a bare forward loop, each a subprocess, on 16 examples.

Only part 1 (extraction) runs here: every process start costs seconds (torch and transformers
imports on a shared 2-core machine), and parts 2 and 3 need six more processes.
"""

from __future__ import annotations

import json
import os

from benchmarks import scale_out

N = 16
EXAMPLE_ARRAYS = {"input_ids", "lengths", "labels", "example_ids", "token_type_ids"}


def test_quick_extraction_on_two_ranks_matches_one_process(tmp_path):
    argv = ["--quick", "--parts", "extract", "--extract-examples", str(N), "--out", str(tmp_path)]
    assert scale_out.main(argv) == 0
    payload = json.loads((tmp_path / "scale_out.json").read_text())
    assert payload["quick"] and payload["machine"]["cpu"] and payload["repeats"] == 1
    assert "training" not in payload and "object_store" not in payload
    r = payload["extraction"]
    assert r["examples"] == N and r["shard_examples"] == scale_out.shard_examples(N) == N // 8
    for timing in ("1 rank", "2 ranks", "bare forward"):
        rate = r[timing]
        assert 0 < rate["min"] <= rate["median"] <= rate["max"] and rate["repeats"] == 1, timing
    for ratio in ("2 ranks / 1 rank", "1 rank / bare", "2 ranks / bare"):
        assert r[ratio]["median"] > 0, ratio
    assert all(s is not None and s > 0 for runs in r["reported_elapsed_s"].values() for s in runs)
    (check,) = r["checks"]
    assert check["arrays"] > 0 and check["bytes_1_rank"] > 0 and check["bytes_2_ranks"] > 0
    assert r["identical"] == check["identical"] == (not check["differing"])
    assert not EXAMPLE_ARRAYS & set(check["differing"])  # the same examples, tokenized the same, in order
    text = (tmp_path / "scale_out.md").read_text()
    assert f"Caches identical (1 rank vs 2 ranks): {'yes' if r['identical'] else 'NO'}" in text
    if (os.cpu_count() or 1) <= 2:
        # the 1-rank process runs torch's default threads (here at most 2), each rank one: on these machines
        # the two caches are bitwise identical (with more threads kernels may sum in another order, which
        # the benchmark reports rather than fails on)
        assert r["identical"], check["differing"]
        assert check["bytes_1_rank"] == check["bytes_2_ranks"]
