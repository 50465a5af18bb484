"""The training-step benchmark's smoke run (``benchmarks.speedup --quick``): online vs cache vs no distillation."""

from __future__ import annotations

import json
import shlex

from benchmarks import speedup


def test_quick_run_times_the_four_competitors_on_the_same_knowledge(tmp_path):
    assert speedup.main(["--quick", "--out", str(tmp_path)]) == 0
    payload = json.loads((tmp_path / "speedup.json").read_text())
    assert payload["quick"] and payload["machine"]["cpu"] and payload["repeats"] == 1
    assert payload["command"] == shlex.join(["python", "-m", "benchmarks.speedup", "--quick", "--out", str(tmp_path)])
    (name, result), *rest = payload["results"].items()
    assert not rest and set(speedup.COMPETITORS) <= set(result)
    for competitor in speedup.COMPETITORS:
        entry = result[competitor]
        assert 0 < entry["min_s"] <= entry["median_s"] <= entry["max_s"], competitor
        assert len(entry["seconds"]) == 1 and len(entry["losses"]) == payload["steps"] == speedup.QUICK_STEPS
        assert all(loss == loss and loss > 0 for loss in entry["losses"]), competitor  # not NaN
    for ratio in ("online fp32 / cache", "online bf16 / cache", "cache / student only"):
        assert result[ratio]["median"] > 0
    # the same student, batches and knowledge: the cache (a bf16 teacher's, stored in float16) trains as
    # online bf16 does, and within bf16's rounding of online fp32
    online_bf16, cached = result["online bf16"]["losses"], result["cache"]["losses"]
    assert all(abs(a - b) <= 1e-3 * abs(a) for a, b in zip(online_bf16, cached)), (online_bf16, cached)
    assert result["cache"]["loss_rel_diff_vs_online_fp32"] <= 0.05
    text = (tmp_path / "speedup.md").read_text()
    assert name in text and "Same work check" in text
