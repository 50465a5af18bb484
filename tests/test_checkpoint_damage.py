"""Damaged checkpoints: each file's size and crc32c in state.json, checked on resume; a damaged
latest checkpoint falls back to the one before it (the same final weights as an uninterrupted
run), or, with no intact one left, is refused in one line (exit 2) with nothing rewritten."""

import json

import pytest
from safetensors.torch import load_file

from hsk_cache.cli import main
from hsk_cache.training import checkpoint, session
from tests.conftest import fails


@pytest.fixture(scope="module")
def cache(tiny_teacher, toy_dir, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("damage") / "cache")
    argv = ["extract", "--teacher", tiny_teacher, "--data", toy_dir, "--out", out, "--max-length", "32"]
    assert main([*argv, "--layers", "all", "--tokens", "topk:5"]) == 0
    return out


def _train(cache, toy_dir, out):
    # dropout on and a dev evaluation keeping best/: the RNG, optimizer and best model all matter
    return [
        "train", "--from-cache", cache, "--out", str(out), "--student-layers", "1", "--student-hidden", "16",
        "--student-heads", "2", "--student-ffn", "16", "--hidden-epochs", "2", "--pred-epochs", "0",
        "--hidden-batch-size", "8", "--save-every", "3", "--seed", "5", "--eval-data", toy_dir, "--eval-every", "2",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def reference(cache, toy_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("reference") / "run"
    assert main(_train(cache, toy_dir, out)) == 0
    return load_file(str(out / "model.safetensors"))


def _interrupted(cache, toy_dir, out, monkeypatch, at_step):
    """A run stopped by Ctrl-C right after step ``at_step`` (checkpoints every 3 steps)."""
    original = session.Session.after_step

    def stop(self, ctx, done, total, record):
        original(self, ctx, done, total, record)
        if done == at_step:
            raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(session.Session, "after_step", stop)
        assert main(_train(cache, toy_dir, out)) == 130


def _flip(path, start=200, count=4000):
    raw = bytearray(path.read_bytes())
    raw[start : start + count] = bytes(b ^ 0x5A for b in raw[start : start + count])
    path.write_bytes(raw)


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


DAMAGES = {
    "empty state.json": (lambda c: (c / "state.json").write_text("{}"), "lacks stage, step"),
    "garbage state.json": (lambda c: (c / "state.json").write_bytes(b"\x00\xffnot json"), "state.json' is unreadable"),
    "missing optimizer": (lambda c: (c / "optimizer.safetensors").unlink(), "optimizer.safetensors' is missing"),
    "truncated optimizer": (lambda c: _truncate(c / "optimizer.safetensors"), "optimizer.safetensors' has"),
    "missing rng": (lambda c: (c / "rng.safetensors").unlink(), "rng.safetensors' is missing"),
    "truncated rng": (lambda c: _truncate(c / "rng.safetensors"), "rng.safetensors' has"),
    "missing weights": (lambda c: (c / "weights.safetensors").unlink(), "weights.safetensors' is missing"),
    "truncated weights": (lambda c: _truncate(c / "weights.safetensors"), "weights.safetensors' has"),
    "bytes flipped in weights": (lambda c: _flip(c / "weights.safetensors"), "weights.safetensors' is corrupt"),
}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_a_damaged_latest_checkpoint_falls_back_to_the_one_before(
    cache, toy_dir, reference, tmp_path, monkeypatch, capsys, damage
):
    out = tmp_path / "run"
    _interrupted(cache, toy_dir, out, monkeypatch, at_step=7)
    latest, previous = checkpoint.checkpoints(out)  # the two newest are kept
    assert (latest.name, previous.name) == ("stage0-step000000006", "stage0-step000000003")
    harm, problem = DAMAGES[damage]
    harm(latest)
    capsys.readouterr()
    assert main(_train(cache, toy_dir, out)) == 0
    err = capsys.readouterr().err
    (warning,) = [line for line in err.splitlines() if "is damaged" in line]
    assert problem in warning and f"resuming from the one before it, {previous}" in warning, warning
    steps = [json.loads(line) for line in open(out / "metrics.jsonl")]
    assert [line["step"] for line in steps if line["event"] == "train"] == list(range(1, 17))  # 4..6 run again
    final = load_file(str(out / "model.safetensors"))
    assert final.keys() == reference.keys()
    assert all((final[k] == reference[k]).all() for k in final)  # as the uninterrupted run, bitwise


@pytest.mark.parametrize("damage", ["empty state.json", "truncated rng", "bytes flipped in weights"])
def test_a_damaged_only_checkpoint_is_refused_and_nothing_is_rewritten(
    cache, toy_dir, tmp_path, monkeypatch, capsys, damage
):
    out = tmp_path / "run"
    _interrupted(cache, toy_dir, out, monkeypatch, at_step=4)
    (only,) = checkpoint.checkpoints(out)
    harm, problem = DAMAGES[damage]
    harm(only)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    err = fails(capsys, _train(cache, toy_dir, out), "cannot resume from checkpoint stage0-step000000003", problem)
    assert "there is no earlier checkpoint: pass --overwrite to start over" in err
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before  # metrics.jsonl included


def test_both_checkpoints_damaged_is_refused(cache, toy_dir, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    _interrupted(cache, toy_dir, out, monkeypatch, at_step=7)
    for path in checkpoint.checkpoints(out):
        _truncate(path / "weights.safetensors")
    fails(capsys, _train(cache, toy_dir, out), "stage0-step000000006", "no earlier checkpoint is intact")


def test_a_damaged_best_model_is_refused_on_resume(cache, toy_dir, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    _interrupted(cache, toy_dir, out, monkeypatch, at_step=7)
    assert "files" in json.loads((out / "best" / "best.json").read_text())
    _flip(out / "best" / "model.safetensors", count=100)
    fails(capsys, _train(cache, toy_dir, out), "the best model", "model.safetensors has", "remove it to resume")


def test_a_full_disk_while_checkpointing_is_one_line_and_keeps_the_earlier_checkpoint(
    cache, toy_dir, tmp_path, monkeypatch, capsys
):
    """safetensors reports ENOSPC as its own SafetensorError; the first checkpoint (nothing
    before it) and a later one (the one before is kept) are both one line."""
    from safetensors import SafetensorError

    real, calls = checkpoint.save_model, []

    def full(model, filename, *args, **kwargs):
        calls.append(filename)
        if len(calls) >= fail_at:
            with open(filename, "wb") as handle:
                handle.write(b"\x00" * 100)
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
        return real(model, filename, *args, **kwargs)

    for fail_at, before in ((1, None), (3, "stage0-step000000006")):
        calls.clear()
        out = tmp_path / f"run{fail_at}"
        with monkeypatch.context() as patch:
            patch.setattr(checkpoint, "save_model", full)
            err = fails(capsys, _train(cache, toy_dir, out), "cannot write checkpoint", "No space left on device")
        names = [p.name for p in checkpoint.checkpoints(out)]
        if before is None:
            assert names == [] and "then rerun the same command" in err
        else:
            assert names == [before, "stage0-step000000003"] and f"resume from {before}" in err
        assert not list((out / "checkpoints").glob(".tmp-*"))  # the partial checkpoint is gone


def test_a_finished_run_reads_no_checkpoint(cache, toy_dir, tmp_path, capsys):
    """Rerunning a finished run has nothing to do: a damaged checkpoint left in it is not refused."""
    out = tmp_path / "run"
    assert main(_train(cache, toy_dir, out)) == 0
    before = (out / "model.safetensors").read_bytes()
    for path in checkpoint.checkpoints(out):
        _truncate(path / "weights.safetensors")
    assert main(_train(cache, toy_dir, out)) == 0
    assert (out / "model.safetensors").read_bytes() == before
