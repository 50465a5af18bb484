"""The extraction-throughput benchmark's smoke run (``benchmarks.extract_throughput --quick``)."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from benchmarks import extract_throughput
from benchmarks.common import interleave
from hsk_cache.knowledge.batch import Examples

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
        bare_i, extract_i, steady_i = (row[name] for name in extract_throughput.INTERLEAVED)
        assert all(r["repeats"] == 1 and all(s > 0 for s in r["seconds"]) for r in (bare_i, extract_i, steady_i))
        interleaved = row["extract / bare, interleaved"]
        assert interleaved["median"] == bare_i["seconds"][0] / extract_i["seconds"][0], label
    # one layer's every token outweighs three layers' top 10% of tokens
    sparse, dense = (payload["rows"][label]["cache"]["stored_bytes"] for label in extract_throughput.SPECS)
    assert dense > sparse
    text = (tmp_path / "extract_throughput_fp32.md").read_text()
    assert all(label in text for label in extract_throughput.SPECS)
    assert payload["first_tokenizing_s"] > 0 and f"tokenizes it: {payload['first_tokenizing_s']:.2f} s more" in text


class FakeModel:
    """Records the example ids of each batch it is called on (the interleaved bare forward's)."""

    def __init__(self):
        self.calls = []

    def __call__(self, input_ids, **inputs):
        self.calls.append(input_ids[:, 0].tolist())


def test_interleaved_bare_runs_each_batch_once_after_its_extraction_and_is_not_charged_to_it(monkeypatch):
    n = 80  # batches of 32, 32, 16
    examples = Examples(
        input_ids=np.arange(n)[:, None].repeat(4, 1),
        token_type_ids=None,
        lengths=np.full(n, 4),
        labels=np.zeros(n, dtype=np.int64),
        example_ids=np.arange(n),
    )
    model = FakeModel()
    monkeypatch.setattr(extract_throughput, "model_inputs", lambda inputs, model: inputs)
    clock = extract_throughput.InterleavedBare(model, examples, "fp32", "cpu")
    log = []
    bar = clock("extract", n)
    for size in (32, 32, 16):  # an extraction's batches, then its last shard write
        log.append(len(model.calls))
        bar.update(size)
    time.sleep(0.05)  # the last shard's write: extraction's time, not the bare forward's
    bar.close()
    assert log == [0, 1, 2] and [c[0] for c in model.calls] == [0, 32, 64] and len(model.calls[2]) == 16
    extract_s, bare_s = clock.steady()
    assert extract_s >= 0.05 and bare_s == sum(clock.bare[1:]) and len(clock.bare) == 3
    assert clock.extract_s(clock.bare_s + 1.0) == 1.0


def test_each_warmup_runs_once_untimed_before_the_rounds():
    calls = []
    competitors = {name: (lambda name=name: calls.append(name) or 1.0) for name in ("a", "b")}
    warmup = {name: (lambda name=name: calls.append(f"warm {name}")) for name in ("a", "b")}
    times = interleave(competitors, 2, warmup)
    assert calls == ["warm a", "warm b", "a", "b", "a", "b"] and times == {"a": [1.0, 1.0], "b": [1.0, 1.0]}


def test_fewer_examples_than_two_batches_is_refused_before_anything_runs(tmp_path, capsys):
    with pytest.raises(SystemExit) as refused:
        extract_throughput.main(["--quick", "--examples", "32", "--out", str(tmp_path)])
    assert refused.value.code == 2 and "--examples 32" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())
