"""Bad input: a one-line error naming the problem and the fix, exit status 2, nothing written."""

import json
import os
import shutil

import pytest

from hsk_cache.cli import main
from tests.conftest import fails, write_rows


def _snapshot(path):
    return {os.path.join(d, f): os.stat(os.path.join(d, f)).st_mtime_ns for d, _, fs in os.walk(path) for f in fs}


@pytest.fixture()
def extract_args(tiny_teacher, toy_dir, tmp_path):
    return lambda *extra, out=None: [
        "extract",
        "--teacher",
        tiny_teacher,
        "--data",
        toy_dir,
        "--max-length",
        "32",
        "--out",
        str(out or tmp_path / "cache"),
        *extra,
    ]


@pytest.mark.parametrize(
    "option,value,needle",
    [
        ("--tokens", "first:3", "unknown --tokens value 'first:3'"),
        ("--layers", "top", "unknown --layers value 'top'"),
        ("--dims", "largest:0.1", "unknown --dims value"),
        ("--dims", "magnitude:1.5", "P must be in (0, 1]"),
        ("--dims", "random:0", "P must be in (0, 1]"),
        ("--tokens", "topk:0%", "percentage must be in (0, 100]"),
        ("--tokens", "left:150%", "percentage must be in (0, 100]"),
        ("--layers", "top:3", "asks for 3 layers but the teacher has 2"),
        ("--codec", "lz4", "unknown --codec 'lz4'"),
        ("--dtype", "int4", "unknown --dtype 'int4'"),
        ("--tokens", "topk:0", "K must be at least 1"),
        ("--tokens", "topk:33", "topk:33 keeps more tokens than --max-length 32"),
        ("--layers", "0,5", "outside the teacher's 0..2"),
    ],
)
def test_bad_extraction_spec(capsys, extract_args, tmp_path, option, value, needle):
    fails(capsys, extract_args(option, value), needle)
    assert not (tmp_path / "cache").exists()


def test_missing_and_unreadable_data(capsys, tiny_teacher, tmp_path):
    base = ["extract", "--teacher", tiny_teacher, "--out", str(tmp_path / "cache")]
    fails(capsys, base + ["--data", str(tmp_path / "nope.csv")], "does not exist")
    fails(capsys, base + ["--data", str(tmp_path)], "no train file")
    garbage = tmp_path / "train.parquet"
    garbage.write_bytes(b"this is not parquet")
    fails(capsys, base + ["--data", str(garbage)], "cannot read")
    assert not (tmp_path / "cache").exists()


def test_missing_columns_and_empty_split(capsys, tiny_teacher, tmp_path):
    base = ["extract", "--teacher", tiny_teacher, "--out", str(tmp_path / "cache")]
    path = write_rows(tmp_path / "rows.csv", [{"sentence": "good", "gold": "pos"}])
    fails(capsys, base + ["--data", str(path)], "no column(s) ['label']", "--label-column")
    fails(capsys, base + ["--data", str(path), "--text-columns", "sentence", "--label-column", "y"], "['y']")
    empty = tmp_path / "empty.csv"
    empty.write_text("text,label\n")
    fails(capsys, base + ["--data", str(empty)], "no examples")
    assert not (tmp_path / "cache").exists()


def test_teacher_path_without_a_model(capsys, toy_dir, tmp_path):
    (tmp_path / "empty_model").mkdir()
    fails(
        capsys,
        ["extract", "--teacher", str(tmp_path / "empty_model"), "--data", toy_dir, "--out", str(tmp_path / "cache")],
        "holds no model",
    )
    fails(
        capsys,
        ["finetune", "--model", str(tmp_path / "empty_model"), "--data", toy_dir, "--out", str(tmp_path / "ft")],
        "holds no model",
    )
    assert not (tmp_path / "cache").exists() and not (tmp_path / "ft").exists()


def test_existing_cache_with_another_spec_or_teacher_is_refused(
    capsys, extract_args, tmp_path, tiny_teacher, tokenizer
):
    assert main(extract_args("--tokens", "topk:4")) == 0
    before = _snapshot(tmp_path / "cache")
    fails(capsys, extract_args("--tokens", "topk:5"), "different spec", "--overwrite")
    other = tmp_path / "other_teacher"
    from hsk_cache.models import hub as models
    from tests.conftest import tiny_bert

    models.save(tiny_bert(tokenizer, seed=1), tokenizer, other)
    args = extract_args("--tokens", "topk:4")
    args[args.index(tiny_teacher)] = str(other)
    fails(capsys, args, "different teacher.weights_sha256")
    assert _snapshot(tmp_path / "cache") == before
    assert main(extract_args("--tokens", "topk:5", "--overwrite")) == 0


def test_non_cache_directory_is_never_deleted(capsys, extract_args, tmp_path):
    victim = tmp_path / "precious"
    victim.mkdir()
    (victim / "notes.txt").write_text("keep me")
    fails(capsys, extract_args(out=victim), "not an hsk cache")
    fails(capsys, extract_args("--overwrite", out=victim), "refusing to delete")
    assert (victim / "notes.txt").read_text() == "keep me"


def test_training_refuses_unknown_format_version_and_missing_layers(capsys, extract_args, tmp_path):
    cache = tmp_path / "cache"
    assert main(extract_args("--layers", "2", "--tokens", "cls")) == 0
    student = str(tmp_path / "student")
    fails(
        capsys,
        ["train", "--from-cache", str(cache), "--out", student, "--layer-map", "1:1"],
        "needs teacher layer 1",
        "cache holds layers [2]",
    )
    copy = tmp_path / "future"
    shutil.copytree(cache, copy)
    meta = json.loads((copy / "zarr.json").read_text())
    meta["attributes"]["hsk_cache"]["format_version"] = 99
    (copy / "zarr.json").write_text(json.dumps(meta))
    fails(capsys, ["train", "--from-cache", str(copy), "--out", student], "format version 99")
    fails(capsys, ["train", "--from-cache", str(tmp_path / "nothing"), "--out", student], "no cache at")
    assert not os.path.exists(student)


def test_attention_from_a_model_that_cannot_return_it(capsys, extract_args, tmp_path, monkeypatch):
    from hsk_cache.models import hub as models

    original = models.load_classifier
    monkeypatch.setattr(
        models, "load_classifier", lambda path, label_names=None, attention=False: original(path, label_names)
    )
    fails(capsys, extract_args("--knowledge", "attention_probs,logits"), "returned no attention probabilities")
    fails(capsys, extract_args("--tokens", "topk:3"), "returned no attention probabilities")
    assert not (tmp_path / "cache").exists()


def test_attention_layers_out_of_range(capsys, extract_args, tmp_path):
    fails(
        capsys,
        extract_args("--knowledge", "attention_probs", "--attention-layers", "0,1"),
        "outside the teacher's 1..2",
    )
    fails(capsys, extract_args("--knowledge", "value_relation", "--value-relation-layer", "3"), "attention layers 1..2")
    assert not (tmp_path / "cache").exists()


def test_value_relation_with_mismatched_heads_needs_a_head_map(capsys, extract_args, tmp_path):
    assert main(extract_args("--knowledge", "value_relation,logits", "--tokens", "cls")) == 0
    student = [
        "train",
        "--from-cache",
        str(tmp_path / "cache"),
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
        "0",
    ]
    fails(capsys, student, "value relation with 2 student heads vs 4 teacher heads", "--head-map relation")
    assert not (tmp_path / "s").exists()
    assert main(student + ["--head-map", "relation"]) == 0
    assert main(student + ["--head-map", "mean", "--out", str(tmp_path / "s2")]) == 0
