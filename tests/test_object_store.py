"""Caches on an object store: a real S3-compatible HTTP server (moto's server mode) on 127.0.0.1.
Extraction into s3://, resume after a kill, info, verify and training all go through zarr's
FsspecStore over s3fs; the arrays are bitwise equal to a local extraction's."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import fsspec
import pytest
import zarr

from benchmarks.scale_out_s3 import moto_server, stop
from hsk_cache import open_cache
from hsk_cache.cli import main
from tests.test_distributed import KILLER, assert_same_cache

pytest.importorskip("s3fs")
pytest.importorskip("moto")


@pytest.fixture(scope="module")
def s3():
    """A moto S3 server on a free 127.0.0.1 port with bucket ``hsk`` (the scale-out benchmark's):
    yields its storage options."""
    server, options = moto_server()
    try:
        yield options
    finally:
        stop(server)


def test_extract_resume_verify_and_train_on_s3(s3, tiny_teacher, toy_dir, tmp_path, capsys):
    options = json.dumps(s3)
    url = "s3://hsk/runs/cache"
    args = ["extract", "--teacher", tiny_teacher, "--data", toy_dir, "--max-length", "32", "--layers", "all"]
    args += ["--tokens", "topk:5", "--knowledge", "hidden_states,logits"]
    args += ["--shard-examples", "16", "--storage-options", options]
    script = tmp_path / "killer.py"
    script.write_text(KILLER)
    killed = subprocess.run(
        [sys.executable, str(script), *args, "--out", url],
        capture_output=True,
        text=True,
        env={**os.environ, "KILL_SHARD": "2"},
        timeout=300,
    )
    assert killed.returncode != 0
    store = zarr.storage.FsspecStore.from_url(url, storage_options=s3, read_only=True)
    assert zarr.open_group(store=store, mode="r")["shard_commits"][:, :, 0].all(axis=1).sum() == 2

    assert main([*args, "--out", url]) == 0  # resumes: the 3 committed shards are verified and kept
    assert "2 shards written, 2 resumed" in capsys.readouterr().out
    local = str(tmp_path / "local")
    assert main([*args, "--out", local]) == 0
    mirror = str(tmp_path / "mirror")
    fsspec.filesystem("s3", **s3).get("hsk/runs/cache", mirror, recursive=True)
    assert_same_cache(local, mirror)

    capsys.readouterr()
    assert main(["verify", url, "--storage-options", options, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] and report["committed"] == 4 and report["path"] == url
    assert main(["info", url, "--storage-options", options, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["complete"] and info["stored_bytes"] == open_cache(local).reader.stored_bytes()

    out = tmp_path / "student"
    train = ["train", "--from-cache", url, "--storage-options", options, "--out", str(out)]
    train += ["--student-layers", "2", "--student-hidden", "32", "--student-heads", "4", "--student-ffn", "64"]
    assert main([*train, "--hidden-epochs", "1", "--pred-epochs", "0", "--hidden-batch-size", "16"]) == 0
    assert (out / "model.safetensors").exists()
    summary = (out / "hsk_train.json").read_text()
    assert "testing" not in summary and "storage_options" not in summary  # credentials are never written


def test_bad_storage_options_and_bucket_roots_are_one_line_errors(s3, tiny_teacher, toy_dir, capsys):
    from tests.conftest import fails

    args = ["extract", "--teacher", tiny_teacher, "--data", toy_dir, "--max-length", "32"]
    fails(capsys, [*args, "--out", "s3://hsk/x", "--storage-options", "{not json"], "--storage-options", "JSON")
    fails(capsys, [*args, "--out", "s3://hsk", "--storage-options", json.dumps(s3)], "whole bucket", "s3://hsk/cache")
    fails(capsys, ["info", "s3://hsk/nothing-here", "--storage-options", json.dumps(s3)], "no cache at")
