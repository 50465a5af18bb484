"""The checkpoint-cost benchmark's smoke run (``benchmarks.checkpoint --quick``)."""

from __future__ import annotations

import json

from benchmarks import checkpoint


def test_quick_run_times_a_checkpoint_next_to_a_step(tmp_path):
    out, scratch = tmp_path / "out", tmp_path / "scratch"
    scratch.mkdir()
    assert checkpoint.main(["--quick", "--dir", str(scratch), "--out", str(out)]) == 0
    payload = json.loads((out / "checkpoint.json").read_text())
    assert payload["quick"] and payload["machine"]["cpu"] and payload["repeats"] == 1
    assert set(payload["students"]) == set(checkpoint.QUICK_STUDENTS)
    assert not list(scratch.iterdir())  # the checkpoints went to a temporary directory under --dir, now gone
    for name, entry in payload["students"].items():
        for timing in ("checkpoint_s", "step_s"):
            t = entry[timing]
            assert 0 < t["min"] <= t["median"] <= t["max"] and len(t["seconds"]) == 1, (name, timing)
        assert entry["write_mb_per_s"] > 0 and entry["overhead_at_default_interval"] > 0
        assert entry["steps_for_1_percent"] > 0
        # weights and both AdamW moments in float32 (student and W_h): at least 3 × 4 bytes a parameter
        shape = checkpoint.QUICK_STUDENTS[name]
        parameters = sum(p.numel() for p in checkpoint.student(*shape).parameters()) + (shape[1] + 1) * 768
        assert entry["checkpoint_bytes"] >= 12 * parameters, name
    assert all(name in (out / "checkpoint.md").read_text() for name in checkpoint.QUICK_STUDENTS)
