"""Faults a production user hits, each a one-line refusal (exit 2) with nothing lost: an --out
that cannot be written (checked before any work), a second extraction refused before the
teacher is loaded, SIGTERM during extraction, and a split name a single file cannot honour."""

import os
import subprocess
import sys
import textwrap

import pytest

from hsk_cache.cli import main
from hsk_cache.store import lease
from hsk_cache.store.location import Location
from tests.conftest import fails


@pytest.fixture(scope="module")
def cache(tiny_teacher, toy_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("faults") / "cache"
    assert main(["extract", "--teacher", tiny_teacher, "--data", toy_dir, "--out", str(out), "--max-length", "32"]) == 0
    return str(out)


def _commands(tiny_teacher, toy_dir, cache, out):
    return {
        "train": ["train", "--from-cache", cache, "--out", out, "--student-layers", "1", "--student-hidden", "16",
                  "--student-heads", "2", "--student-ffn", "16", "--hidden-epochs", "1", "--pred-epochs", "0"],
        "finetune": ["finetune", "--model", tiny_teacher, "--data", toy_dir, "--out", out, "--epochs", "1"],
        "augment": ["augment", "--data", toy_dir, "--out", out, "--copies", "2", "--teacher", tiny_teacher],
        "extract": ["extract", "--teacher", tiny_teacher, "--data", toy_dir, "--out", out],
    }  # fmt: skip


@pytest.mark.parametrize("command", ["train", "finetune", "augment", "extract"])
def test_an_out_under_a_file_is_refused_before_any_work(tiny_teacher, toy_dir, cache, tmp_path, capsys, command):
    blocker = tmp_path / "notes.txt"
    blocker.write_text("mine")
    out = str(blocker / "run")
    fails(capsys, _commands(tiny_teacher, toy_dir, cache, out)[command], "cannot be created", "is a file")
    assert blocker.read_text() == "mine" and sorted(os.listdir(tmp_path)) == ["notes.txt"]


@pytest.mark.parametrize("command", ["train", "finetune", "augment", "extract"])
def test_a_read_only_out_is_refused_before_any_work(tiny_teacher, toy_dir, cache, tmp_path, capsys, command):
    """A directory without write permission; as root (who writes anywhere by permission bits),
    sysfs, where the kernel refuses every new file."""
    if os.geteuid() == 0:
        if not os.path.isdir("/sys/kernel"):
            pytest.skip("root here has no directory the kernel refuses to write in")
        parent, mode = "/sys/kernel", None
    else:
        parent = tmp_path / "readonly"
        parent.mkdir()
        mode = parent.stat().st_mode
        parent.chmod(0o555)
    try:
        argv = _commands(tiny_teacher, toy_dir, cache, os.path.join(parent, "hsk-run"))[command]
        fails(capsys, argv, "is not writable", "Permission denied")
        assert not os.path.exists(os.path.join(parent, "hsk-run"))
    finally:
        if mode is not None:
            parent.chmod(mode)


def test_a_second_extraction_is_refused_before_loading_the_teacher(toy_dir, tmp_path, capsys):
    """The lease is taken first: with a teacher that does not even exist, the refusal is the lease's."""
    out = tmp_path / "cache"
    held = lease.WriterLease.acquire(Location.of(str(out)))
    try:
        argv = ["extract", "--teacher", str(tmp_path / "no-such-teacher"), "--data", toy_dir, "--out", str(out)]
        fails(capsys, argv, "another hsk extract", "is writing")
    finally:
        held.release()
    assert not out.exists()


SIGTERM_AFTER_FIRST_SHARD = textwrap.dedent("""
    import os, signal, sys
    from hsk_cache.store import writer
    original = writer.CacheWriter.write_shard
    def write_shard(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        os.kill(os.getpid(), signal.SIGTERM)
        return result
    writer.CacheWriter.write_shard = write_shard
    from hsk_cache.cli import main
    sys.exit(main(sys.argv[1:]))
""")


def test_sigterm_during_extraction_says_it_stopped_and_resumes(tiny_teacher, toy_dir, tmp_path):
    out = str(tmp_path / "cache")
    argv = ["extract", "--teacher", tiny_teacher, "--data", toy_dir, "--out", out, "--shard-examples", "16"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    stopped = subprocess.run(
        [sys.executable, "-c", SIGTERM_AFTER_FIRST_SHARD, *argv], capture_output=True, text=True, timeout=300, env=env
    )
    assert stopped.returncode == 143, stopped.stderr
    last = stopped.stderr.strip().split("\r")[-1].strip().splitlines()[-1]
    assert last == "hsk: stopped by signal 15; the shards committed so far are kept (rerun the same command to resume)"
    assert "Traceback" not in stopped.stderr
    again = subprocess.run([sys.executable, "-m", "hsk_cache.cli", *argv], capture_output=True, text=True, env=env)
    assert again.returncode == 0, again.stderr
    assert "1 resumed" in again.stdout, again.stdout


def test_a_split_name_a_single_file_cannot_honour_is_refused(cache, tiny_teacher, toy_dir, tmp_path, capsys):
    single = os.path.join(toy_dir, "dev.csv")
    train = ["train", "--from-cache", cache, "--out", str(tmp_path / "run"), "--student-layers", "1",
             "--student-hidden", "16", "--student-heads", "2", "--student-ffn", "16", "--hidden-epochs", "1",
             "--pred-epochs", "0", "--eval-data", single]  # fmt: skip
    fails(capsys, [*train, "--eval-split", "banana"], "--eval-split 'banana'", "is a single file")
    assert not (tmp_path / "run").exists()
    assert main([*train, "--eval-split", "dev"]) == 0  # a standard split name reads the file whole
    extract = ["extract", "--teacher", tiny_teacher, "--data", single, "--out", str(tmp_path / "c")]
    fails(capsys, [*extract, "--split", "banana"], "--split 'banana'")


def test_progress_off_a_terminal_is_plain_lines_at_an_interval(capsys, monkeypatch):
    """``make demo > log``: no carriage-return redraws; within one interval only the first line
    and the last, and a line per refresh once the interval has passed."""
    from hsk_cache.cli import progress

    def lines(interval):
        monkeypatch.setattr(progress, "LOG_INTERVAL_S", interval)
        capsys.readouterr()
        bar = progress.bar("extract", 1000)
        for _ in range(20):
            bar.update(50)
        bar.close()
        err = capsys.readouterr().err
        assert "\r" not in err and "\x1b" not in err and err.endswith("\n"), repr(err)
        return err.splitlines()

    first, last = lines(60.0)
    assert first.startswith("extract:   0%") and last.startswith("extract: 100%") and "1000/1000" in last
    assert len(lines(0.0)) > 2  # every refresh is due: one line each


def test_a_from_cache_run_records_no_unused_online_settings(cache, tiny_teacher, toy_dir, tmp_path):
    import json

    out = str(tmp_path / "run")
    assert main(_commands(tiny_teacher, toy_dir, cache, out)["train"]) == 0
    run = json.loads(open(os.path.join(out, "hsk_run.json")).read())["identity"]
    summary = json.loads(open(os.path.join(out, "hsk_train.json")).read())["config"]
    for fields in (run, summary):
        assert not {"spec", "data", "online_teacher", "teacher_precision"} & set(fields), sorted(fields)
    assert "tokens" in run["cache"]["spec"] and summary["cache"] == cache  # the cache's own spec is under cache
