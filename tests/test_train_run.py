"""hsk train's run directory: checkpoint contents (safetensors + JSON), dev evaluation and the best
model, refusing another config at the same --out, --overwrite, --resume, and finished runs."""

import json
import os
import shutil

import pytest
import torch
from safetensors.torch import load_file

from hsk_cache.cli import main
from hsk_cache.config.run import Interval
from tests.conftest import fails


@pytest.fixture(scope="module")
def cache(tiny_teacher, toy_dir, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("run") / "cache")
    assert (
        main(
            [
                "extract",
                "--teacher",
                tiny_teacher,
                "--data",
                toy_dir,
                "--out",
                out,
                "--max-length",
                "32",
                "--layers",
                "all",
                "--tokens",
                "topk:5",
            ]
        )
        == 0
    )
    return out


def _train(cache, out, *extra):
    return [
        "train",
        "--from-cache",
        cache,
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
        "2",
        "--hidden-batch-size",
        "8",
        "--pred-batch-size",
        "8",
        "--pred-lr",
        "3e-3",
        *extra,
    ]


def _snapshot(path):
    return {os.path.join(d, f): os.stat(os.path.join(d, f)).st_mtime_ns for d, _, fs in os.walk(path) for f in fs}


def test_checkpoints_hold_safetensors_and_json_only(cache, tmp_path, capsys):
    out = tmp_path / "student"
    assert main(_train(cache, out, "--save-every", "3", "--pred-epochs", "0")) == 0
    assert "3 checkpoints" in capsys.readouterr().out  # steps 3 and 6 of 8, and the stage end
    previous, name = sorted(os.listdir(out / "checkpoints"))  # the two newest are kept
    assert (previous, name) == ("stage0-step000000006", "stage0-step000000008")
    checkpoint = out / "checkpoints" / name
    assert sorted(os.listdir(checkpoint)) == [
        "optimizer.safetensors",
        "rng.safetensors",
        "state.json",
        "weights.safetensors",
    ]
    weights = load_file(str(checkpoint / "weights.safetensors"))
    assert weights["projection.weight"].shape == (32, 16)  # W_h travels with the student (16 → 32 wide)
    final = load_file(str(out / "model.safetensors"))
    assert all(torch.equal(weights[f"student.{k}"], v) for k, v in final.items())
    state = json.loads((checkpoint / "state.json").read_text())
    assert state["stage"] == 0 and state["step"] == 8 and state["stage_done"]
    assert state["sampler"]["epoch"] == 1 and state["sampler"]["step"] == 0

    # mid-stage checkpoints carry the optimizer (AdamW moments as tensors) and the scheduler
    again = tmp_path / "mid"
    assert main(_train(cache, again, "--save-every", "3", "--hidden-epochs", "2", "--pred-epochs", "0")) == 0
    log = [json.loads(line) for line in open(again / "metrics.jsonl")]
    saved = [line["step"] for line in log if line["event"] == "checkpoint"]
    assert saved == [3, 6, 9, 12, 15, 16]


def test_mid_stage_checkpoint_holds_optimizer_scheduler_and_sampler(cache, tmp_path, monkeypatch, capsys):
    from hsk_cache.training import checkpoint, session

    original = session.Session.after_step

    def interrupted(self, ctx, done, total, record):  # Ctrl-C during step 7 of 16
        original(self, ctx, done, total, record)
        if done == 7:
            raise KeyboardInterrupt

    monkeypatch.setattr(session.Session, "after_step", interrupted)
    out = tmp_path / "student"
    assert main(_train(cache, out, "--save-every", "5", "--hidden-epochs", "2", "--pred-epochs", "0")) == 130
    assert "rerun the same command to resume" in capsys.readouterr().err
    path = checkpoint.latest(out)
    assert path.name == "stage0-step000000005"
    state = json.loads((path / "state.json").read_text())
    assert not state["stage_done"] and state["sampler"]["epoch"] == 0 and state["sampler"]["step"] == 5
    assert state["scheduler"]["last_epoch"] == 5 and state["scheduler"]["_step_count"] == 6
    tensors = load_file(str(path / "optimizer.safetensors"))
    optimizer = checkpoint.unflatten(state["optimizer"], tensors)
    weights = load_file(str(path / "weights.safetensors"))
    trained = [k for k in weights if "pooler" not in k and "classifier" not in k]  # the hidden stage's gradients
    assert len(optimizer["state"]) == len(trained)
    assert {k for v in optimizer["state"].values() for k in v} == {"step", "exp_avg", "exp_avg_sq"}
    assert all(float(v["step"]) == 5 for v in optimizer["state"].values())
    assert optimizer["param_groups"][0]["betas"] == (0.9, 0.999)  # tuples survive JSON


def test_dev_evaluation_logs_metrics_and_keeps_the_best_model(cache, toy_dir, tmp_path, capsys):
    out = tmp_path / "student"
    assert main(_train(cache, out, "--eval-data", toy_dir, "--eval-every", "3")) == 0
    assert "best accuracy" in capsys.readouterr().out
    evals = [json.loads(line) for line in open(out / "metrics.jsonl") if '"eval"' in line]
    assert [(e["stage_index"], e["step"]) for e in evals] == [
        (0, 3),
        (0, 6),
        (0, 8),
        (1, 3),
        (1, 6),
        (1, 9),
        (1, 12),
        (1, 15),
        (1, 16),
    ]
    assert all(e["examples"] == 16 and 0 <= e["accuracy"] <= 1 and -1 <= e["mcc"] <= 1 for e in evals)
    best = json.loads((out / "best" / "best.json").read_text())
    prediction = [e for e in evals if e["stage_index"] == 1]
    assert best["value"] == max(e["accuracy"] for e in prediction) and best["stage"] == 1
    assert [e["step"] for e in prediction if e["best"]][-1] == best["step"]
    # the kept model scores exactly what was logged for it, evaluated independently by hsk eval
    capsys.readouterr()
    assert main(["eval", str(out / "best"), "--data", toy_dir, "--max-length", "32", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == best["value"]
    assert main(["eval", str(out), "--data", toy_dir, "--max-length", "32", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == evals[-1]["accuracy"]


def test_another_config_at_the_same_out_is_refused(cache, tmp_path, capsys):
    out = tmp_path / "student"
    assert main(_train(cache, out)) == 0
    before = _snapshot(out)
    fails(
        capsys,
        _train(cache, out, "--pred-lr", "1e-3"),
        "holds a run with a different stages.1.lr (0.003 vs 0.001)",
        "--overwrite",
    )
    fails(capsys, _train(cache, out, "--seed", "1"), "different seed (0 vs 1)")
    assert _snapshot(out) == before
    capsys.readouterr()
    assert main(_train(cache, out)) == 0  # the same command: nothing to do
    assert "already holds this finished run" in capsys.readouterr().out
    assert _snapshot(out) == before
    # options that do not change the numbers may differ
    assert main(_train(cache, out, "--num-workers", "0", "--save-every", "10")) == 0
    assert main(_train(cache, out, "--pred-lr", "1e-3", "--overwrite")) == 0
    run = json.loads((out / "hsk_run.json").read_text())
    assert run["identity"]["stages"][1]["lr"] == 1e-3


def test_resume_needs_a_checkpoint_and_foreign_directories_are_kept(cache, tmp_path, capsys, tiny_teacher):
    fails(capsys, _train(cache, tmp_path / "new", "--resume"), "holds no checkpoint to resume from")
    assert not (tmp_path / "new").exists()
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "todo.txt").write_text("keep me")
    fails(capsys, _train(cache, foreign), "exists and holds no hsk train run", "choose another --out")
    assert os.listdir(foreign) == ["todo.txt"]
    # --overwrite replaces only hsk train's own runs: a saved model stays as it was
    model = tmp_path / "model"
    shutil.copytree(tiny_teacher, model)
    before = {p.name: p.read_bytes() for p in model.iterdir() if p.is_file()}
    fails(capsys, _train(cache, model, "--overwrite"), "holds no hsk train run", "--overwrite replaces only")
    assert {p.name: p.read_bytes() for p in model.iterdir() if p.is_file()} == before
    fails(capsys, _train(cache, tmp_path / "x", "--resume", "--overwrite"), "at most one of --overwrite")


@pytest.mark.parametrize(
    "text,steps,seconds",
    [("500", 500, None), ("90s", None, 90), ("5min", None, 300), ("2h", None, 7200), ("0", None, None)],
)
def test_save_every_parses_steps_and_durations(text, steps, seconds):
    interval = Interval.parse(text)
    assert (interval.steps, interval.seconds) == (steps, seconds)


def test_bad_save_every_is_one_line(cache, tmp_path, capsys):
    fails(capsys, _train(cache, tmp_path / "s", "--save-every", "often"), "--save-every 'often'", "5min")
    assert not (tmp_path / "s").exists()


def test_a_second_run_on_the_same_out_is_refused_while_the_first_holds_it(cache, tmp_path, capsys):
    from filelock import FileLock

    from hsk_cache.training.session import LOCK_FILE

    out = tmp_path / "student"
    out.mkdir()
    with FileLock(out / LOCK_FILE):  # what a running hsk train holds
        fails(capsys, _train(cache, out), "another hsk train is running on --out")
    assert os.listdir(out) == [LOCK_FILE]
    assert main(_train(cache, out)) == 0  # released: the run proceeds
