"""hsk train --from-cache trains from every kind of cache: each knowledge kind, width, precision and codec."""

import json

import pytest

from hsk_cache.cli import main
from hsk_cache.config.run import DataConfig
from hsk_cache.extraction import extract
from hsk_cache.knowledge.spec import ExtractSpec
from hsk_cache.store.info import cache_info

STUDENT = [
    "--student-layers",
    "2",
    "--student-hidden",
    "16",
    "--student-heads",
    "4",
    "--student-ffn",
    "32",
    "--hidden-epochs",
    "1",
    "--pred-epochs",
    "1",
    "--hidden-batch-size",
    "16",
    "--pred-batch-size",
    "16",
]

CASES = {
    "hidden all fp16": (["--layers", "all", "--tokens", "topk:5", "--dtype", "float16"], []),
    "hidden magnitude int8 ignore": (
        ["--layers", "1,2", "--tokens", "left:50%", "--dims", "magnitude:0.2", "--dtype", "int8"],
        ["--width-target", "ignore"],
    ),
    "hidden uniform bf16 zstd": (
        [
            "--layers",
            "uniform:2",
            "--tokens",
            "random:4",
            "--dims",
            "uniform:0.5",
            "--dtype",
            "bfloat16",
            "--codec",
            "zstd",
        ],
        ["--layer-map", "uniform:1"],
    ),
    "hidden random width blosc": (
        [
            "--layers",
            "top:1",
            "--tokens",
            "topk+sep:6",
            "--dims",
            "random:0.25",
            "--codec",
            "blosc",
            "--dtype",
            "float32",
        ],
        ["--keep-top-pairs", "1"],
    ),
    "attention kl": (["--knowledge", "attention_probs,logits", "--attention-layers", "all", "--tokens", "cls"], []),
    "attention mse int8": (
        ["--knowledge", "attention_probs,logits", "--tokens", "topk:4", "--dtype", "int8"],
        ["--attention-loss", "mse"],
    ),
    "value relation": (["--knowledge", "value_relation,logits", "--tokens", "all", "--importance-layer", "1"], []),
    "everything": (
        [
            "--knowledge",
            "hidden_states,attention_probs,value_relation,logits",
            "--layers",
            "all",
            "--tokens",
            "topk:3",
            "--dims",
            "magnitude:0.5",
            "--dtype",
            "int8",
            "--codec",
            "zstd",
        ],
        [],
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_train_from_every_kind_of_cache(case, tiny_teacher, toy_dir, tmp_path, capsys):
    extract_args, train_args = CASES[case]
    cache, student = str(tmp_path / "cache"), str(tmp_path / "student")
    assert (
        main(
            [
                "extract",
                "--teacher",
                tiny_teacher,
                "--data",
                toy_dir,
                "--max-length",
                "32",
                "--out",
                cache,
                *extract_args,
            ]
        )
        == 0
    )
    assert main(["train", "--from-cache", cache, "--out", student, *STUDENT, *train_args]) == 0
    out = capsys.readouterr().out
    assert "train hidden: 4 steps" in out and "train prediction: 4 steps" in out, out
    summary = json.load(open(f"{student}/hsk_train.json"))
    losses = [s["first_loss"] for s in summary["result"]["stages"]]
    assert all(loss is not None and loss == loss and loss > 0 for loss in losses)  # finite, positive


def test_logits_only_cache_trains_the_prediction_stage(tiny_teacher, toy_dir, tmp_path, capsys):
    cache = str(tmp_path / "cache")
    assert (
        main(
            [
                "extract",
                "--teacher",
                tiny_teacher,
                "--data",
                toy_dir,
                "--max-length",
                "32",
                "--out",
                cache,
                "--knowledge",
                "logits",
            ]
        )
        == 0
    )
    args = ["train", "--from-cache", cache, "--out", str(tmp_path / "s"), *STUDENT]
    assert main(args) == 2 and "no hidden states, attention or value relation" in capsys.readouterr().err
    assert main(args + ["--hidden-epochs", "0"]) == 0


@pytest.mark.parametrize(
    "spec",
    [
        ExtractSpec.parse("all", "topk:10%", dtype="float16"),
        ExtractSpec.parse("last", "all", "magnitude:0.1", dtype="int8"),
        ExtractSpec.parse("2", "all", dtype="float16", codec="zstd"),
        ExtractSpec.parse(
            "last", "topk:3", knowledge="attention_probs,value_relation,logits", dtype="bfloat16", codec="blosc"
        ),
        ExtractSpec.parse(
            "last", "topk:3", knowledge="attention_probs,value_relation,attention_relations", codec="zstd", key_topk=4
        ),
    ],
)
def test_dry_run_predicts_stored_bytes_within_10_percent(spec, tiny_teacher, toy_dir, tmp_path):
    config = extract.ExtractConfig(
        teacher=tiny_teacher,
        data=DataConfig(source=toy_dir, max_length=32),
        out=str(tmp_path / "cache"),
        spec=spec,
        shard_examples=16,
    )
    predicted = extract.dry_run(config).total_bytes
    assert not (tmp_path / "cache").exists()
    extract.run(config)
    real = cache_info(str(tmp_path / "cache"))["stored_bytes"]
    assert abs(predicted - real) <= 0.10 * real, (predicted, real)
