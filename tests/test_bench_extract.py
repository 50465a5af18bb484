"""The extraction-throughput benchmark's smoke run (``benchmarks.extract_throughput --quick``)."""

from __future__ import annotations

import json
import statistics

from benchmarks import extract_throughput
from benchmarks.common import interleave

TIMINGS = ("bare forward", "extract", "extract, steady state", extract_throughput.DEFAULTS)


def test_quick_run_times_bare_forward_and_extraction_for_both_specs(tmp_path):
    assert extract_throughput.main(["--quick", "--out", str(tmp_path)]) == 0
    payload = json.loads((tmp_path / "extract_throughput_fp32.json").read_text())
    assert payload["quick"] and payload["machine"]["cpu"] and payload["repeats"] == 1
    assert payload["warmup_examples"] == 16
    assert payload["examples"] == 64 and payload["precision"] == "fp32" and payload["allocator"] == "hsk"
    assert set(payload["rows"]) == set(extract_throughput.SPECS)
    for label, row in payload["rows"].items():
        for timing in TIMINGS:
            rate = row[timing]
            assert 0 < rate["min"] <= rate["median"] <= rate["max"], (label, timing)
            assert rate["repeats"] == 1 and all(s > 0 for s in rate["seconds"])
        defaults = extract_throughput.DEFAULTS
        for ratio in (
            "extract / bare",
            "extract, steady state / bare",
            f"extract / {defaults}",
            f"bare forward / {defaults}",
        ):
            assert row[ratio]["median"] > 0, (label, ratio)
        assert row["cache"]["examples"] == 64 and row["cache"]["stored_bytes"] > 0, label
        for name in extract_throughput.FORWARD_PAIR:  # two rounds of one batch of 32
            assert row[name]["repeats"] == 2 and all(s > 0 for s in row[name]["seconds"]), (label, name)
        paired = row["forward with selection / bare, batch by batch"]
        bare, selected = (row[name]["seconds"] for name in extract_throughput.FORWARD_PAIR)
        assert paired["median"] == statistics.median([b / s for b, s in zip(bare, selected)]), label
    # one layer's every token outweighs three layers' top 10% of tokens
    sparse, dense = (payload["rows"][label]["cache"]["stored_bytes"] for label in extract_throughput.SPECS)
    assert dense > sparse
    text = (tmp_path / "extract_throughput_fp32.md").read_text()
    assert all(label in text for label in extract_throughput.SPECS)
    assert payload["first_tokenizing_s"] > 0 and f"tokenizes it: {payload['first_tokenizing_s']:.2f} s more" in text


def test_each_warmup_runs_once_untimed_before_the_rounds():
    calls = []
    competitors = {name: (lambda name=name: calls.append(name) or 1.0) for name in ("a", "b")}
    warmup = {name: (lambda name=name: calls.append(f"warm {name}")) for name in ("a", "b")}
    times = interleave(competitors, 2, warmup)
    assert calls == ["warm a", "warm b", "a", "b", "a", "b"] and times == {"a": [1.0, 1.0], "b": [1.0, 1.0]}
