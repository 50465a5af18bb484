"""The sort-by-length benchmark's smoke run (``benchmarks.sort_by_length --quick``)."""

from __future__ import annotations

import csv
import json

from benchmarks import sort_by_length
from hsk_cache.models import hub as models


def test_quick_run_times_both_orders_and_counts_the_padding_each_makes(tmp_path):
    assert sort_by_length.main(["--quick", "--out", str(tmp_path)]) == 0
    payload = json.loads((tmp_path / "sort_by_length.json").read_text())
    assert payload["quick"] and payload["machine"]["cpu"] and payload["examples"] == 128
    assert set(payload["rows"]) == set(sort_by_length.ORDERS) and payload["repeats"] == 1
    for row in payload["rows"].values():
        assert row["repeats"] == 1 and row["min"] == row["median"] == row["max"] > 0
    (stored_s,), (sorted_s,) = (payload["rows"][name]["seconds"] for name in sort_by_length.ORDERS)
    assert payload["sorted / stored"]["median"] == stored_s / sorted_s
    assert payload["integers_equal"] and 0 <= payload["max_abs_difference"] < 1e-2

    # the reference: the toy sentences tokenized here, padded per batch of 32 within each shard
    sort_by_length.toy_data(tmp_path / "toy.csv", 128)
    with open(tmp_path / "toy.csv") as handle:
        texts = [row["sentence"] for row in csv.DictReader(handle)]
    tokenizer = models.load_tokenizer(models.BUNDLED_TEACHER)
    lengths = [len(ids) for ids in tokenizer(texts, truncation=True, max_length=128)["input_ids"]]
    shard = payload["shard_examples"]
    padded = {False: 0, True: 0}
    for start in range(0, 128, shard):
        for sort in padded:
            part = lengths[start : start + shard]
            part = sorted(part, reverse=True) if sort else part
            padded[sort] += sum(len(part[i : i + 32]) * max(part[i : i + 32]) for i in range(0, len(part), 32))
    for name, sort in sort_by_length.ORDERS.items():
        assert payload["rows"][name]["teacher tokens / real token"] == padded[sort] / sum(lengths), name
    assert padded[True] < padded[False]
    assert "sorted by length" in (tmp_path / "sort_by_length.md").read_text()
