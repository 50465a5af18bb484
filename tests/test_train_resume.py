"""hsk train SIGKILLed mid-stage resumes from its last checkpoint to exactly the run it would have been."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
from safetensors.numpy import load_file

from hsk_cache.cli import main

# Runs the real CLI in a child process that SIGKILLs itself right after logging step STEP of
# stage STAGE (a hard crash between checkpoints: the steps since the last checkpoint are lost).
KILLER = textwrap.dedent("""
    import os, signal, sys
    from hsk_cache.training import session
    stage, step = int(os.environ["KILL_STAGE"]), int(os.environ["KILL_STEP"])
    original = session.Session.after_step
    def after_step(self, ctx, done, total, record):
        original(self, ctx, done, total, record)
        if ctx.index == stage and done == step:
            os.kill(os.getpid(), signal.SIGKILL)
    session.Session.after_step = after_step
    from hsk_cache.cli import main
    sys.exit(main(sys.argv[1:]))
""")


@pytest.fixture(scope="module")
def cache(tiny_teacher, toy_dir, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("resume") / "cache")
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
                "--shard-examples",
                "16",
            ]
        )
        == 0
    )
    return out


def _train(cache, toy_dir, out, *extra):
    # a random-init student with dropout (so RNG state matters), prefetch on (num-workers 1), dev eval
    return [
        "train",
        "--from-cache",
        cache,
        "--out",
        out,
        "--student-layers",
        "2",
        "--student-hidden",
        "16",
        "--student-heads",
        "2",
        "--student-ffn",
        "32",
        "--hidden-epochs",
        "2",
        "--pred-epochs",
        "2",
        "--hidden-batch-size",
        "4",
        "--pred-batch-size",
        "4",
        "--hidden-lr",
        "1e-3",
        "--pred-lr",
        "1e-3",
        "--save-every",
        "5",
        "--eval-data",
        toy_dir,
        "--eval-every",
        "4",
        "--seed",
        "3",
        *extra,
    ]


def _child(argv, **env):
    environment = {**os.environ, "OMP_NUM_THREADS": "1", **{k: str(v) for k, v in env.items()}}
    return subprocess.run(
        [sys.executable, "-c", KILLER, *argv],
        capture_output=True,
        text=True,
        timeout=300,
        env={"KILL_STAGE": "-1", "KILL_STEP": "-1", **environment},
    )


def _log(out, event):
    lines = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    return [{k: v for k, v in line.items() if k != "elapsed_s"} for line in lines if line["event"] == event]


@pytest.mark.parametrize(
    "stage,step,memory",
    [(0, 13, []), (1, 9, ["--memory-budget-gb", "1e-9"])],
    ids=["hidden-stage-in-memory", "prediction-stage-shard-windows"],
)
def test_killed_training_resumes_to_identical_losses_and_weights(cache, toy_dir, tmp_path, stage, step, memory):
    reference, resumed = str(tmp_path / "reference"), str(tmp_path / "resumed")
    done = _child(_train(cache, toy_dir, reference, *memory))
    assert done.returncode == 0, done.stderr

    killed = _child(_train(cache, toy_dir, resumed, *memory), KILL_STAGE=stage, KILL_STEP=step)
    assert killed.returncode == -9, killed.stderr
    checkpoints = sorted(os.listdir(os.path.join(resumed, "checkpoints")), reverse=True)
    assert len(checkpoints) == 2  # the last one before the kill, and the one before it
    assert checkpoints[0] == f"stage{stage}-step{(step // 5) * 5:09d}"
    assert not os.path.exists(os.path.join(resumed, "model.safetensors"))

    again = _child(_train(cache, toy_dir, resumed, *memory))
    assert again.returncode == 0, again.stderr
    assert f"resumed from {os.path.join(resumed, 'checkpoints', checkpoints[0])}" in again.stdout

    expected, got = _log(reference, "train"), _log(resumed, "train")
    assert len(got) == 64 and [(x["stage_index"], x["step"]) for x in got] == [
        (s, i) for s in (0, 1) for i in range(1, 33)
    ]
    assert got == expected  # every step's loss, learning rate and epoch, bitwise (JSON floats round-trip)
    assert _log(resumed, "eval") == _log(reference, "eval")
    for weights in ("model.safetensors", os.path.join("best", "model.safetensors")):
        a, b = load_file(os.path.join(reference, weights)), load_file(os.path.join(resumed, weights))
        assert a.keys() == b.keys()
        for key in a:
            assert (a[key] == b[key]).all(), (weights, key)

    # the finished run: the same command again has nothing to do
    assert main(_train(cache, toy_dir, resumed, *memory)) == 0


def test_sigterm_checkpoints_after_the_current_step_and_resumes(cache, toy_dir, tmp_path):
    """A preempted machine sends SIGTERM: training writes a checkpoint at the step it reached and exits 143."""
    import signal
    import time

    argv = [
        "train",
        "--from-cache",
        cache,
        "--student-layers",
        "1",
        "--student-hidden",
        "16",
        "--student-heads",
        "2",
        "--student-ffn",
        "16",
        "--hidden-epochs",
        "10",
        "--pred-epochs",
        "0",
        "--hidden-batch-size",
        "4",
        "--save-every",
        "0",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    reference, stopped = tmp_path / "reference", tmp_path / "stopped"
    command = [sys.executable, "-m", "hsk_cache.cli", *argv, "--out"]
    assert subprocess.run(command + [str(reference)], env=env, capture_output=True, timeout=300).returncode == 0
    child = subprocess.Popen(
        command + [str(stopped)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    log = stopped / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (not log.exists() or len(log.read_text().splitlines()) < 20):
        time.sleep(0.02)
    child.send_signal(signal.SIGTERM)
    _, err = child.communicate(timeout=120)
    assert child.returncode == 143, err
    steps = [line["step"] for line in _log(str(stopped), "train")]
    assert 20 <= steps[-1] < 160 and steps == list(range(1, steps[-1] + 1))
    assert f"stopped by signal 15 after step {steps[-1]} of stage 0; a checkpoint was written" in err
    assert os.listdir(stopped / "checkpoints") == [f"stage0-step{steps[-1]:09d}"]

    again = subprocess.run(command + [str(stopped)], env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert _log(str(stopped), "train") == _log(str(reference), "train")
