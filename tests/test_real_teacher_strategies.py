"""Every extraction strategy runs with the real bundled MiniLM teacher on SST-2 and BBC News."""

import pytest

from hsk_cache.cli import main
from hsk_cache.models import hub as models
from tests.conftest import SHARED_GLUE

STRATEGIES = [
    ["--layers", "all", "--tokens", "all", "--dtype", "float32"],
    ["--layers", "uniform:3", "--tokens", "topk:10", "--dims", "magnitude:0.1", "--dtype", "int8"],
    ["--layers", "top:2", "--tokens", "topk+sep:10%", "--dims", "uniform:0.1", "--dtype", "bfloat16"],
    ["--layers", "bottom:1", "--tokens", "left:5", "--dims", "random:0.2", "--codec", "zstd"],
    ["--layers", "0,6", "--tokens", "random:20%", "--importance-layer", "3", "--codec", "blosc"],
    ["--layers", "last", "--tokens", "cls", "--precision", "bf16"],
    [
        "--knowledge",
        "attention_probs,value_relation,logits",
        "--attention-layers",
        "top:2",
        "--tokens",
        "topk:8",
        "--dtype",
        "int8",
    ],
]


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    """The bundled teacher as-is (2 classes, for SST-2) and with a fresh 5-class head (for BBC News)."""
    path = models.bundled_teacher_path()
    five = tmp_path_factory.mktemp("minilm5")
    models.save(models.load_classifier(path, label_names=tuple("abcde")), models.load_tokenizer(path), five)
    return {"sst2": path, "bbc": str(five)}


@pytest.mark.parametrize("data", ["sst2", "bbc"])
@pytest.mark.parametrize("strategy", STRATEGIES, ids=lambda s: " ".join(s))
def test_extract_with_the_bundled_teacher(data, strategy, teachers, tmp_path, capsys):
    if data == "sst2" and not SHARED_GLUE.is_dir():
        pytest.skip("../shared/data/glue is not beside this checkout")
    source = str(SHARED_GLUE / "SST-2") if data == "sst2" else "bbc-news"
    assert (
        main(
            [
                "extract",
                "--teacher",
                teachers[data],
                "--data",
                source,
                "--limit",
                "12",
                "--max-length",
                "64",
                "--batch-size",
                "6",
                "--out",
                str(tmp_path / "cache"),
                *strategy,
            ]
        )
        == 0
    )
    assert "12 examples" in capsys.readouterr().out
