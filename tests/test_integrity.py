"""Cache integrity: hsk verify finds exactly the damaged shards, training refuses them with one
line, rerunning hsk extract repairs them bitwise; a full disk and an algorithm change are refused."""

import errno
import json
import os
import shutil

import numpy as np
import pytest
import zarr

from hsk_cache.cli import main
from hsk_cache.errors import CacheError
from hsk_cache.store import shards
from hsk_cache.store.reader import CacheReader
from tests.conftest import fails

# 60 examples in shards of 8: shard 7 is an edge shard of 4 (rewriting it updates a partial zarr shard)
OPTIONS = [
    "--max-length",
    "32",
    "--layers",
    "all",
    "--tokens",
    "topk:5",
    "--shard-examples",
    "8",
    "--batch-size",
    "8",
    "--limit",
    "60",
]


def _extract(teacher, data, out, *extra):
    return ["extract", "--teacher", teacher, "--data", data, "--out", str(out), *OPTIONS, *extra]


def _train(cache, out, *extra):
    return [
        "train",
        "--from-cache",
        str(cache),
        "--out",
        str(out),
        "--student-layers",
        "1",
        "--student-hidden",
        "16",
        "--student-heads",
        "2",
        "--student-ffn",
        "16",
        "--hidden-epochs",
        "1",
        "--pred-epochs",
        "1",
        *extra,
    ]


@pytest.fixture(scope="module")
def reference(tiny_teacher, toy_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("integrity") / "reference"
    assert main(_extract(tiny_teacher, toy_dir, out)) == 0
    return out


def _assert_equal_caches(a, b):
    a, b = zarr.open_group(str(a), mode="r"), zarr.open_group(str(b), mode="r")
    assert sorted(a.array_keys()) == sorted(b.array_keys())
    for name in a.array_keys():
        np.testing.assert_array_equal(a[name][:], b[name][:], err_msg=name)


def _shard_file(cache, array, shard):
    group = zarr.open_group(str(cache), mode="r")
    return cache / array / "c" / "/".join([str(shard)] + ["0"] * (group[array].ndim - 1))


def _flip_byte(path, offset=12):
    """Flip one byte: at 12, inside the first chunk's data; at -3, inside the shard index (at the end)."""
    payload = bytearray(path.read_bytes())
    payload[offset] ^= 0xFF
    path.write_bytes(bytes(payload))


def _verify_json(capsys, cache):
    capsys.readouterr()
    status = main(["verify", str(cache), "--json"])
    return status, json.loads(capsys.readouterr().out)


def test_verify_reports_exactly_the_damaged_shards_and_extract_repairs_them(
    capsys, reference, tiny_teacher, toy_dir, tmp_path
):
    cache = tmp_path / "cache"
    shutil.copytree(reference, cache)
    assert _verify_json(capsys, cache)[0] == 0

    _flip_byte(_shard_file(cache, "logits", 5))
    status, report = _verify_json(capsys, cache)
    assert status == 1 and report["bad_shards"] == [5]
    # training reads every chunk through its crc32c: the flipped byte is refused, not trained on
    fails(
        capsys,
        _train(cache, tmp_path / "student"),
        "shard 5 of logits (examples 40..47) is corrupt",
        f"hsk verify {cache}",
        "hsk extract --teacher",
    )
    # with shard windows (larger than memory), every file's crc32c is checked before the first step
    fails(
        capsys,
        _train(cache, tmp_path / "student", "--memory-budget-gb", "1e-9"),
        "shard 5 of logits (examples 40..47): crc32c",
    )
    assert not (tmp_path / "student").exists()

    _shard_file(cache, "hidden_states", 2).unlink()
    _flip_byte(_shard_file(cache, "token_index", 7), offset=-3)
    status, report = _verify_json(capsys, cache)
    assert status == 1 and report["bad_shards"] == [2, 5, 7]
    assert {(p["shard"], p["array"], p["problem"].split()[0]) for p in report["problems"]} == {
        (2, "hidden_states", "missing"),
        (5, "logits", "crc32c"),
        (7, "token_index", "crc32c"),
    }
    capsys.readouterr()
    assert main(["verify", str(cache)]) == 1
    table = capsys.readouterr().out
    assert "| 2 | 16..23 | hidden_states | missing |" in table and "3 bad shards" in table
    fails(capsys, _train(cache, tmp_path / "student"), "shard 2 of hidden_states (examples 16..23) is missing")
    assert not (tmp_path / "student").exists()

    # the repair command printed by verify and by the errors is the extract command itself
    command = CacheReader(cache).repair_command.split()
    assert main(command[1:]) == 0
    assert "3 shards written (3 damaged, re-extracted), 5 resumed" in capsys.readouterr().out
    _assert_equal_caches(reference, cache)
    status, report = _verify_json(capsys, cache)
    assert (
        status == 0 and report["ok"] and report["checked_bytes"] == _verify_json(capsys, reference)[1]["checked_bytes"]
    )
    assert main(_train(cache, tmp_path / "student")) == 0


def test_a_reader_never_reads_a_missing_shard_as_fill_values(reference, tmp_path):
    cache = tmp_path / "cache"
    shutil.copytree(reference, cache)
    _shard_file(cache, "token_index", 7).unlink()
    reader = CacheReader(cache)
    np.testing.assert_array_equal(
        reader.read("token_index", 0, 56), zarr.open_group(str(reference))["token_index"][:56]
    )
    with pytest.raises(CacheError, match="shard 7 of token_index .examples 56..59. is missing"):
        reader.read("token_index", 50, 60)
    with pytest.raises(CacheError, match="shard 7 of token_index"):
        reader.check_files()


def test_damaged_commit_records_and_tokenizer_are_reported(capsys, reference, tmp_path):
    cache = tmp_path / "cache"
    shutil.copytree(reference, cache)
    _flip_byte(cache / "shard_commits" / "c" / "3" / "0" / "0", offset=0)
    _flip_byte(cache / "tokenizer" / "tokenizer.json" / "c" / "0", offset=5)
    status, report = _verify_json(capsys, cache)
    assert status == 1 and report["bad_shards"] == [3] and report["committed"] == 7  # of 8
    assert {(p["shard"], p["array"]) for p in report["problems"]} == {
        (3, "shard_commits"),
        (None, "tokenizer"),
    }


def test_a_full_disk_is_one_line_and_the_cache_stays_resumable(
    capsys, reference, tiny_teacher, toy_dir, tmp_path, monkeypatch
):
    from zarr.storage import LocalStore

    original, direct, calls = LocalStore.set, shards.write_shard, {"n": 0}

    def fill_up(path):
        calls["n"] += 1
        if calls["n"] == 4:  # the fourth shard of hidden states does not fit
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)

    async def set_until_full(self, key, value):  # zarr's writes
        if "/c/" in key and key.startswith("hidden_states/"):
            fill_up(str(self.root / key))
        return await original(self, key, value)

    def write_until_full(path, *args):  # uncompressed local shards, written by store.shards
        if "/hidden_states/c/" in path:
            fill_up(path)
        return direct(path, *args)

    monkeypatch.setattr(LocalStore, "set", set_until_full)
    monkeypatch.setattr(shards, "write_shard", write_until_full)
    cache = tmp_path / "cache"
    fails(capsys, _extract(tiny_teacher, toy_dir, cache), "No space left on device", "rerun the same command to resume")
    assert calls["n"] == 4
    assert CacheReader(cache).committed_shards() == 3 and not CacheReader(cache).complete
    monkeypatch.setattr(LocalStore, "set", original)
    monkeypatch.setattr(shards, "write_shard", direct)
    assert main(_extract(tiny_teacher, toy_dir, cache)) == 0
    assert "5 shards written, 3 resumed" in capsys.readouterr().out  # the fourth failed, nothing lost
    _assert_equal_caches(reference, cache)


def test_a_cache_of_another_selection_algorithm_is_not_resumed(capsys, reference, tiny_teacher, toy_dir, tmp_path):
    cache = tmp_path / "cache"
    shutil.copytree(reference, cache)
    meta = json.loads((cache / "zarr.json").read_text())
    manifest = meta["attributes"]["hsk_cache"]
    assert manifest["hsk_cache_version"] and manifest["selection_version"] == 2
    manifest["selection_version"], manifest["complete"] = 1, False
    (cache / "zarr.json").write_text(json.dumps(meta))
    before = (cache / "zarr.json").read_bytes()
    fails(capsys, _extract(tiny_teacher, toy_dir, cache), "different selection_version (1 vs 2)", "--overwrite")
    assert (cache / "zarr.json").read_bytes() == before


def test_training_without_logits_is_refused_before_any_stage(capsys, tiny_teacher, toy_dir, tmp_path):
    cache, student = tmp_path / "cache", tmp_path / "student"
    assert main(_extract(tiny_teacher, toy_dir, cache, "--knowledge", "hidden_states")) == 0
    fails(
        capsys,
        _train(cache, student),
        "holds no logits (knowledge: hidden_states)",
        "--pred-epochs 0",
        "--knowledge hidden_states,logits",
    )
    assert not student.exists()
    assert main(_train(cache, student, "--pred-epochs", "0")) == 0
