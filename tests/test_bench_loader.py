"""The loader benchmark's smoke run (``benchmarks.loader --quick``): every competitor measured, the ratios."""

from __future__ import annotations

import json

from benchmarks import loader

COMPETITORS = {
    "plain read, warm (GB/s)",
    "open_cache, warm (GB/s)",
    "plain read, cold (GB/s)",
    "open_cache, cold (GB/s)",
    "open_cache, zarr read, warm (GB/s)",
    "open_cache, zarr read, cold (GB/s)",
    "plain read into kept memory, warm (GB/s)",
    "plain read into kept memory, cold (GB/s)",
    "fresh memory, first touch (GB/s)",
    "loader (examples/s)",
    "bare gather (examples/s)",
    "bare gather, torch conversion (examples/s)",
    "open_cache + first batch (s)",
    "first batch after open (s)",
}


def test_quick_run_measures_every_competitor_and_the_ratios(tmp_path):
    assert loader.main(["--quick", "--out", str(tmp_path)]) == 0
    payload = json.loads((tmp_path / "loader.json").read_text())
    assert payload["quick"] and payload["examples"] == 2_000 and payload["machine"]["cpu"]
    results = payload["results"]
    assert set(results["competitors"]) == COMPETITORS
    for name, summary in results["competitors"].items():
        assert 0 < summary["min"] <= summary["median"] <= summary["max"], name
        assert len(summary["values"]) == payload["repeats"] == 3, name
    assert set(loader.TARGETS) <= set(results["ratios"])
    for name, ratio in results["ratios"].items():
        assert 0 < ratio["min"] <= ratio["median"] <= ratio["max"], name
    assert all(results["ratios"][name]["target"] == target for name, target in loader.TARGETS.items())
    assert isinstance(results["cold_evicts"], bool)
    text = (tmp_path / "loader.md").read_text()
    assert all(name in text for name in COMPETITORS) and "loader / bare gather" in text
