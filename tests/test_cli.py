"""The hsk command end to end on a tiny teacher: finetune → extract → info → train (cache and online) → eval."""

import argparse
import json

import pytest
import zarr

from hsk_cache.cli import build_parser, main
from tests.conftest import write_rows


def test_every_option_documents_its_default():
    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, sub in subparsers.choices.items():
        for action in sub._actions:
            if action.dest == "help":
                continue
            text = action.help or ""
            assert text, (name, action.dest)
            if action.option_strings:
                assert "default" in text or "required" in text, (name, action.dest, text)


def test_main_job_on_a_tiny_teacher(tiny_teacher, toy_dir, tmp_path, capsys):
    ft, cache, student = (str(tmp_path / n) for n in ("teacher", "cache", "student"))
    data = ["--data", toy_dir, "--max-length", "32"]
    assert (
        main(
            [
                "finetune",
                "--model",
                tiny_teacher,
                "--out",
                ft,
                "--epochs",
                "6",
                "--lr",
                "3e-3",
                "--batch-size",
                "8",
                *data,
            ]
        )
        == 0
    )
    assert main(["eval", ft, "--json", *data]) == 0
    teacher_metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert teacher_metrics["examples"] == 16 and teacher_metrics["accuracy"] >= 0.75  # the toy task is learnable

    assert main(["extract", "--teacher", ft, "--out", cache, "--layers", "all", "--tokens", "topk:25%", *data]) == 0
    assert "64 examples" in capsys.readouterr().out
    assert main(["info", cache, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["complete"] and info["manifest"]["data"]["label_names"] == ["neg", "pos"]
    assert info["ratio_to_full"] > 1

    assert (
        main(
            [
                "train",
                "--from-cache",
                cache,
                "--out",
                student,
                "--student-from",
                ft,
                "--student-layers",
                "1",
                "--hidden-epochs",
                "2",
                "--pred-epochs",
                "4",
                "--pred-lr",
                "2e-3",
                "--hidden-batch-size",
                "8",
                "--pred-batch-size",
                "8",
                "--temperature",
                "2",
                "--hard-label-weight",
                "0.5",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "train hidden: 16 steps" in out and "train prediction: 32 steps" in out and "{1: 2}" in out
    assert main(["eval", student, "--json", *data]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] >= 0.75

    assert (
        main(
            [
                "train",
                "--online",
                ft,
                "--out",
                str(tmp_path / "online"),
                "--layers",
                "all",
                "--tokens",
                "topk:25%",
                "--student-layers",
                "2",
                "--student-hidden",
                "16",
                "--student-heads",
                "2",
                "--student-ffn",
                "32",
                "--hidden-epochs",
                "1",
                "--pred-epochs",
                "1",
                *data,
            ]
        )
        == 0
    )
    assert "train: layer map {1: 1, 2: 2}" in capsys.readouterr().out


def test_sentence_pairs_keep_token_type_ids(tiny_teacher, tmp_path, capsys):
    rows = [
        {
            "sentence1": f"the cat sat {i}",
            "sentence2": "on the mat" if i % 2 else "under a tree",
            "label": ["neg", "pos"][i % 2],
        }
        for i in range(12)
    ]
    path = write_rows(tmp_path / "pairs.csv", rows)
    cache = str(tmp_path / "cache")
    assert (
        main(
            [
                "extract",
                "--teacher",
                tiny_teacher,
                "--data",
                str(path),
                "--text-columns",
                "sentence1,sentence2",
                "--out",
                cache,
                "--max-length",
                "24",
                "--tokens",
                "cls",
            ]
        )
        == 0
    )
    group = zarr.open_group(cache, mode="r")
    types, lengths = group["token_type_ids"][:], group["lengths"][:]
    assert all(types[i, : lengths[i]].max() == 1 for i in range(12))  # second segment marked
    assert (
        main(
            [
                "train",
                "--from-cache",
                cache,
                "--out",
                str(tmp_path / "s"),
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
            ]
        )
        == 0
    )


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["train", "--out", "x"], "one of the arguments --from-cache --online is required"),
        (["extract", "--teacher", "t"], "the following arguments are required: --out"),
    ],
)
def test_usage_errors_exit_2(argv, needle, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2 and needle in capsys.readouterr().err


@pytest.mark.parametrize(
    "extra,needles",
    [
        (["--eval-every", "5"], ["--eval-every 5 needs --eval-data"]),
        (["--eval-metric", "mcc"], ["--eval-metric mcc needs --eval-data"]),
        (["--eval-split", "banana"], ["--eval-split banana needs --eval-data"]),
        (["--memory-budget-gb", "-1"], ["--memory-budget-gb -1 GiB", "positive"]),
        (["--memory-budget-gb", "0"], ["--memory-budget-gb 0 GiB"]),
    ],
)
def test_options_that_cannot_do_what_was_asked_are_refused(extra, needles, tmp_path, capsys):
    from tests.conftest import fails

    out = tmp_path / "student"
    fails(capsys, ["train", "--from-cache", str(tmp_path / "no-cache"), "--out", str(out), *extra], *needles)
    assert not out.exists()  # refused before anything is written
