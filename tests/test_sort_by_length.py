"""``hsk extract --sort-by-length``: each shard's examples batched longest first, stored in order.

The reference for the batches is the cache's own stored lengths, sorted here with Python's
``sorted`` (stable, longest first); the reference for the knowledge is the same extraction in
stored order (the default, which the golden hashes hold bitwise).
"""

from __future__ import annotations

import json

import numpy as np
import zarr

from hsk_cache.cli import main
from hsk_cache.extraction import extract

ARGS = ["--max-length", "32", "--layers", "all", "--tokens", "topk:4", "--dtype", "float32"]
ARGS += ["--knowledge", "hidden_states,attention_probs,logits", "--batch-size", "8", "--shard-examples", "32"]


def _extract(teacher, data, out, monkeypatch, *flags) -> list[tuple[list[int], int]]:
    """Run ``hsk extract``; returns each teacher batch's (example ids, padded width T_b)."""
    batches = []
    knowledge = extract.teacher_knowledge

    def recording(model, batch, plan, precision):
        batches.append((batch.example_ids.tolist(), int(batch.input_ids.shape[1])))
        return knowledge(model, batch, plan, precision)

    monkeypatch.setattr(extract, "teacher_knowledge", recording)
    assert main(["extract", "--teacher", teacher, "--data", data, "--out", str(out), *ARGS, *flags]) == 0
    monkeypatch.setattr(extract, "teacher_knowledge", knowledge)
    return batches  # (the one-example probe before the cache opens runs the teacher, not this)


def test_each_shard_is_batched_longest_first_and_stored_in_order(tiny_teacher, toy_dir, tmp_path, monkeypatch):
    stored_batches = _extract(tiny_teacher, toy_dir, tmp_path / "stored", monkeypatch)
    sorted_batches = _extract(tiny_teacher, toy_dir, tmp_path / "sorted", monkeypatch, "--sort-by-length")
    a, b = zarr.open_group(str(tmp_path / "stored"), mode="r"), zarr.open_group(str(tmp_path / "sorted"), mode="r")
    lengths, ids = a["lengths"][...], a["example_ids"][...].tolist()
    assert len(lengths) == 64 and len(set(lengths.tolist())) > 8  # lengths that sorting can change

    expected = []
    for start in (0, 32):  # shards of 32, batches of 8
        rows = sorted(range(start, start + 32), key=lambda r: -int(lengths[r]))  # stable: ties in stored order
        expected += [([ids[r] for r in rows[i : i + 8]], int(lengths[rows[i]])) for i in range(0, 32, 8)]
    assert sorted_batches == expected
    assert [batch for batch, _ in stored_batches] == [ids[i : i + 8] for i in range(0, 64, 8)]
    padded = lambda batches: sum(len(batch) * width for batch, width in batches)
    assert padded(sorted_batches) < padded(stored_batches)

    # the same cache: stored order, integers equal, floats equal up to rounding, the same manifest
    assert sorted(a.array_keys()) == sorted(b.array_keys())
    for name in a.array_keys():
        x, y = a[name][...], b[name][...]
        if x.dtype.kind == "f":
            np.testing.assert_allclose(y, x, rtol=1e-5, atol=1e-6, err_msg=name)
        else:
            np.testing.assert_array_equal(y, x, err_msg=name)
    manifest = lambda group: json.loads((tmp_path / group / "zarr.json").read_text())["attributes"]["hsk_cache"]
    assert manifest("sorted")["layout"] == manifest("stored")["layout"]
    assert manifest("sorted")["counts"] == manifest("stored")["counts"]
