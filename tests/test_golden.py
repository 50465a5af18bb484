"""Format unchanged: the caches of a fixed matrix of specs hash to what the code before the
knowledge-kind registry wrote (``tests/golden.py``; every kind, width strategy, dtype, codec, and
a sentence-pair task)."""

import json

import pytest

from tests import golden


def test_caches_of_the_golden_matrix_are_byte_for_byte_unchanged(tmp_path):
    expected = json.loads(golden.GOLDEN.read_text())
    result = golden.compute(tmp_path)
    if result["teacher_sha256"] != expected["teacher_sha256"]:
        pytest.skip(
            "this CPU computes the tiny teacher's fp32 forward with other rounding than the machine that "
            "recorded the hashes: the cache bytes cannot be compared here (run python -m tests.golden --write "
            "on the code before a change, then compare after it)"
        )
    assert sorted(result["caches"]) == sorted(expected["caches"])
    for name, want in expected["caches"].items():
        got = result["caches"][name]
        assert sorted(got["files"]) == sorted(want["files"]), name
        changed = [f for f in want["files"] if got["files"][f] != want["files"][f]]
        assert not changed, f"{name}: {changed}"
        assert got["manifest"] == want["manifest"], f"{name}: the manifest changed"


def test_the_typed_manifest_is_byte_for_byte_the_stored_json(tmp_path):
    from hsk_cache import Manifest

    golden.compute(tmp_path)
    for name in golden.SPECS:
        stored = golden.stored_manifest(tmp_path / name)
        assert json.dumps(Manifest.from_dict(stored).to_dict()) == json.dumps(stored), name
