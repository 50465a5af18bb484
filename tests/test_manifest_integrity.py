"""Everything a cache holds is covered by hsk verify: the manifest (its sha256, written with it),
its counts against the arrays' shapes, and the tokenizer's files (sizes and crc32c recorded in
the manifest, and loadable). hsk train and open_cache refuse what verify reports."""

import json
import shutil

import pytest
import zarr

from hsk_cache import open_cache
from hsk_cache.cli import main
from hsk_cache.errors import CacheError
from hsk_cache.store.manifest import Manifest
from hsk_cache.store.reader import MANIFEST_KEY
from tests.conftest import fails


def _extract_args(teacher, data, out):
    return ["extract", "--teacher", teacher, "--data", data, "--out", str(out), "--max-length", "32",
            "--layers", "last", "--tokens", "topk:4", "--limit", "24"]  # fmt: skip


@pytest.fixture(scope="module")
def reference(tiny_teacher, toy_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("integrity") / "cache"
    assert main(_extract_args(tiny_teacher, toy_dir, out)) == 0
    return out


def _copy(reference, tmp_path):
    cache = tmp_path / "cache"
    shutil.copytree(reference, cache)
    return cache


def _train(cache, tmp_path):
    return ["train", "--from-cache", str(cache), "--out", str(tmp_path / "student"), "--student-layers", "1",
            "--student-hidden", "16", "--student-heads", "2", "--student-ffn", "16", "--hidden-epochs", "1",
            "--pred-epochs", "0"]  # fmt: skip


def _verify(capsys, cache):
    capsys.readouterr()
    status = main(["verify", str(cache), "--json"])
    return status, json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def _edit_manifest(cache, edit):
    meta = json.loads((cache / "zarr.json").read_text())
    edit(meta["attributes"][MANIFEST_KEY])
    (cache / "zarr.json").write_text(json.dumps(meta))


def test_an_intact_cache_records_its_manifest_and_tokenizer(reference, capsys):
    stored = json.loads((reference / "zarr.json").read_text())["attributes"][MANIFEST_KEY]
    manifest = Manifest.from_dict(stored)
    assert stored["manifest_sha256"] == manifest.digest() and len(manifest.digest()) == 64
    files = stored["tokenizer"]["files"]
    group = zarr.open_group(str(reference / "tokenizer"), mode="r")
    assert set(files) == set(group.array_keys()) and "tokenizer.json" in files
    assert files["tokenizer.json"]["bytes"] == group["tokenizer.json"].shape[0]
    status, report = _verify(capsys, reference)
    assert status == 0 and report["ok"] and report["problems"] == []


@pytest.mark.parametrize(
    "edit,what",
    [
        (lambda m: m.__setitem__("layers", "x"), "layers set to 'x'"),
        (lambda m: m["counts"].__setitem__("examples", 1000), "counts.examples 24 -> 1000"),
        (lambda m: m["data"].__setitem__("num_examples", 1000), "data.num_examples 24 -> 1000"),
    ],
    ids=["layers", "counts", "num_examples"],
)
def test_an_edited_manifest_is_reported_and_refused(reference, tmp_path, capsys, edit, what):
    cache = _copy(reference, tmp_path)
    _edit_manifest(cache, edit)
    status, report = _verify(capsys, cache)
    assert status == 1 and not report["ok"], what
    problems = [p["problem"] for p in report["problems"] if p["array"] == "zarr.json (manifest)"]
    assert any("its manifest was edited or damaged" in p for p in problems), report
    fails(capsys, _train(cache, tmp_path), "its manifest was edited or damaged", "restore its original zarr.json")
    assert not (tmp_path / "student").exists()
    fails(capsys, ["info", str(cache)], "its manifest was edited or damaged")
    with pytest.raises(CacheError, match="its manifest was edited or damaged"):
        open_cache(cache)


def test_counts_that_disagree_with_the_arrays_are_reported_even_when_resealed(reference, tmp_path, capsys):
    """A manifest sealed by a writer but wrong (a writer bug, not an edit): its counts are checked
    against the arrays' shapes."""
    cache = _copy(reference, tmp_path)

    def wrong(m):
        m["data"]["num_examples"] = 30  # still 1 shard of 32: only the arrays' shapes disagree
        m["manifest_sha256"] = Manifest.from_dict(m).digest()

    _edit_manifest(cache, wrong)
    status, report = _verify(capsys, cache)
    assert status == 1
    assert any("has 24 rows, the manifest says 30 examples" in p["problem"] for p in report["problems"]), report
    fails(capsys, _train(cache, tmp_path), "has 24 rows, the manifest says 30 examples")


def _delete_tokenizer_file(cache):
    shutil.rmtree(cache / "tokenizer" / "tokenizer.json")


def _delete_tokenizer_chunk(cache):
    (cache / "tokenizer" / "tokenizer.json" / "c" / "0").unlink()  # zarr alone would read zeros


def _rewrite_tokenizer_bytes(cache):
    """Other bytes with valid chunk checksums: only the manifest's record tells."""
    array = zarr.open_array(str(cache / "tokenizer" / "tokenizer.json"), mode="r+")
    data = array[:]
    data[10:20] = ord(" ")
    array[:] = data


def _unloadable_tokenizer(cache):
    """A tokenizer.json that is not JSON, recorded as written (a writer bug): loading fails."""
    array = zarr.open_array(str(cache / "tokenizer" / "tokenizer.json"), mode="r+")
    data = array[:]
    data[:] = ord("x")
    array[:] = data

    def record(m):
        from hsk_cache.store.writer import file_records

        m["tokenizer"]["files"]["tokenizer.json"] = file_records({"tokenizer.json": data.tobytes()})["tokenizer.json"]
        m["manifest_sha256"] = Manifest.from_dict(m).digest()

    _edit_manifest(cache, record)


@pytest.mark.parametrize(
    "damage,problem",
    [
        (_delete_tokenizer_file, "tokenizer file tokenizer.json is missing"),
        (_delete_tokenizer_chunk, "tokenizer file tokenizer.json has"),
        (_rewrite_tokenizer_bytes, "were written"),
        (_unloadable_tokenizer, "its tokenizer does not load"),
    ],
    ids=["file deleted", "chunk deleted", "bytes rewritten", "unloadable"],
)
def test_a_damaged_tokenizer_is_reported_refused_and_repaired(
    reference, tmp_path, capsys, tiny_teacher, toy_dir, damage, problem
):
    cache = _copy(reference, tmp_path)
    damage(cache)
    status, report = _verify(capsys, cache)
    assert status == 1, report
    (found,) = [p for p in report["problems"] if p["array"] == "tokenizer"]
    assert problem in found["problem"], found
    fails(capsys, _train(cache, tmp_path), problem)
    assert not (tmp_path / "student").exists()
    if damage is not _unloadable_tokenizer:  # the same hsk extract command rewrites the tokenizer
        assert main(_extract_args(tiny_teacher, toy_dir, cache)) == 0
        status, report = _verify(capsys, cache)
        assert status == 0 and report["problems"] == [], report
