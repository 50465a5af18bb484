"""Input edge cases users hit: too-long --max-length, --knowledge order, base-model weights for
--student-from, the test split, empty labels, magnitude rounding, hub names offline."""

import json

import numpy as np
import pytest
import torch

from hsk_cache.cli import main
from hsk_cache.config.run import DataConfig
from hsk_cache.data import splits as data
from hsk_cache.errors import CacheError, ConfigError, ModelError
from hsk_cache.knowledge import hidden_states
from hsk_cache.knowledge.plan import Plan
from hsk_cache.knowledge.spec import ExtractSpec
from hsk_cache.models import families, students
from hsk_cache.models import hub as models
from hsk_cache.select import width
from tests.conftest import fails, tiny_bert, toy_rows, write_rows


def _extract(teacher, source, out, *extra):
    return ["extract", "--teacher", teacher, "--data", str(source), "--max-length", "32", "--out", str(out), *extra]


@pytest.fixture(scope="module")
def small_cache(tiny_teacher, toy_dir, tmp_path_factory):
    """A complete cache of the tiny teacher on 16 toy examples (hidden states and logits)."""
    out = tmp_path_factory.mktemp("input_cases") / "cache"
    assert main(_extract(tiny_teacher, toy_dir, out, "--limit", "16")) == 0
    return str(out)


# 1. --max-length beyond the teacher's position embeddings


def _long_texts(tmp_path):
    rows = [{"text": " ".join(["good"] * 300), "label": "pos"}, {"text": " ".join(["bad"] * 300), "label": "neg"}]
    return write_rows(tmp_path / "long.csv", rows)


def test_max_length_beyond_position_embeddings(capsys, tiny_teacher, tmp_path):
    path, needle = _long_texts(tmp_path), "--max-length 200 exceeds the teacher's 128 position embeddings"
    fix = "use --max-length 128 or less"
    fails(
        capsys,
        [
            "extract",
            "--teacher",
            tiny_teacher,
            "--data",
            str(path),
            "--max-length",
            "200",
            "--out",
            str(tmp_path / "cache"),
        ],
        needle,
        fix,
    )
    fails(
        capsys,
        [
            "finetune",
            "--model",
            tiny_teacher,
            "--data",
            str(path),
            "--max-length",
            "200",
            "--out",
            str(tmp_path / "ft"),
        ],
        needle,
        fix,
    )
    fails(
        capsys,
        [
            "train",
            "--online",
            tiny_teacher,
            "--data",
            str(path),
            "--max-length",
            "200",
            "--out",
            str(tmp_path / "student"),
        ],
        needle,
        fix,
    )
    fails(capsys, ["eval", tiny_teacher, "--data", str(path), "--max-length", "200"], needle, fix)
    assert not any((tmp_path / name).exists() for name in ("cache", "ft", "student"))


def test_max_positions_subtracts_the_padding_offset_of_roberta_families():
    from transformers import BertConfig, RobertaConfig, XLMRobertaConfig

    assert families.max_positions(BertConfig(max_position_embeddings=512, pad_token_id=0)) == 512
    assert families.max_positions(RobertaConfig(max_position_embeddings=514, pad_token_id=1)) == 512
    assert families.max_positions(XLMRobertaConfig(max_position_embeddings=514, pad_token_id=1)) == 512
    assert families.max_positions({"model_type": "camembert", "max_position_embeddings": 514, "pad_token_id": 1}) == 512
    models.check_max_length(RobertaConfig(max_position_embeddings=514, pad_token_id=1), 512)
    with pytest.raises(ConfigError, match="max_length 513 exceeds the teacher's 512 position embeddings"):
        models.check_max_length(RobertaConfig(max_position_embeddings=514, pad_token_id=1), 513)


# 2. --knowledge in another order is the same spec


def test_knowledge_order_does_not_change_the_spec(capsys, tiny_teacher, toy_dir, tmp_path):
    assert ExtractSpec.parse(knowledge="logits,hidden_states") == ExtractSpec.parse(knowledge="hidden_states,logits")
    assert ExtractSpec.parse(knowledge="logits,hidden_states,logits").knowledge == ("hidden_states", "logits")
    out = tmp_path / "cache"
    assert main(_extract(tiny_teacher, toy_dir, out, "--limit", "16", "--knowledge", "logits,hidden_states")) == 0
    capsys.readouterr()
    assert main(_extract(tiny_teacher, toy_dir, out, "--limit", "16", "--knowledge", "hidden_states,logits")) == 0
    assert "0 shards written" in capsys.readouterr().out


# 3. --student-from a base model (no task-model prefix), the bundled teacher, and foreign weights


@pytest.fixture()
def base_model_dir(tokenizer, tmp_path):
    """A saved BertModel (no head: keys embeddings.…, encoder.layer.N.…) shaped like tiny_bert."""
    from transformers import BertModel

    torch.manual_seed(1)
    base = BertModel(tiny_bert(tokenizer).config).eval()
    models.save(base, tokenizer, tmp_path / "base")
    return tmp_path / "base", base


def test_student_from_a_base_model_copies_embeddings_and_layers(capsys, small_cache, base_model_dir, tmp_path):
    from transformers import AutoModelForSequenceClassification

    path, base = base_model_dir
    argv = [
        "train",
        "--from-cache",
        small_cache,
        "--student-from",
        str(path),
        "--student-layers",
        "1",
        "--init-layers",
        "2",
        "--hidden-epochs",
        "0",
        "--pred-epochs",
        "0",
        "--out",
        str(tmp_path / "student"),
    ]
    assert main(argv) == 0
    student = AutoModelForSequenceClassification.from_pretrained(tmp_path / "student").bert
    _assert_copied(student, base, {0: 1})


def _assert_copied(student, teacher, layer_map: dict[int, int]):
    """Embeddings equal; student layer s equals teacher layer layer_map[s] (0-based), exactly."""
    for name, value in teacher.embeddings.state_dict().items():
        assert torch.equal(student.embeddings.state_dict()[name], value), name
    for s, t in layer_map.items():
        theirs = teacher.encoder.layer[t].state_dict()
        for name, value in student.encoder.layer[s].state_dict().items():
            assert torch.equal(value, theirs[name]), (s, name)


def test_student_from_the_bundled_teacher_copies_its_weights():
    from transformers import AutoModel

    student = students.student_from_teacher_layers(models.bundled_teacher_path(), (2, 4))
    _assert_copied(student.bert, AutoModel.from_pretrained(models.bundled_teacher_path()), {0: 1, 1: 3})


def test_student_from_weights_that_match_nothing(capsys, small_cache, tokenizer, tmp_path):
    from safetensors.torch import save_file

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    tiny_bert(tokenizer).config.save_pretrained(foreign)
    tokenizer.save_pretrained(foreign)
    save_file({"decoder.block.0.weight": torch.zeros(2, 2)}, str(foreign / "model.safetensors"))
    with pytest.raises(ModelError, match=r"lack \d+ of the student's embedding and layer parameters"):
        students.student_from_teacher_layers(str(foreign), (1,))
    fails(
        capsys,
        [
            "train",
            "--from-cache",
            small_cache,
            "--student-from",
            str(foreign),
            "--student-layers",
            "1",
            "--hidden-epochs",
            "0",
            "--pred-epochs",
            "0",
            "--out",
            str(tmp_path / "student"),
        ],
        "embedding and layer parameters",
        "bert.embeddings.",
    )
    assert not (tmp_path / "student").exists()


# 4. the test split, and rows with an empty label or text


@pytest.fixture()
def glue_dir(tmp_path):
    root = tmp_path / "SST-2"
    root.mkdir()
    rows = [{"sentence": row["text"], "label": int(row["label"] == "pos")} for row in toy_rows(8)]
    write_rows(root / "train.tsv", rows, delimiter="\t")
    write_rows(root / "dev.tsv", rows[:4], delimiter="\t")
    write_rows(root / "test.tsv", [{"index": i, "sentence": row["sentence"]} for i, row in enumerate(rows)], "\t")
    return root


def test_split_test_is_not_the_dev_split(capsys, tiny_teacher, toy_dir, glue_dir, tmp_path):
    out = tmp_path / "cache"
    fails(
        capsys, _extract(tiny_teacher, glue_dir, out, "--split", "test"), "GLUE's test.tsv has no labels", "--split dev"
    )
    (glue_dir / "test.tsv").unlink()
    fails(capsys, _extract(tiny_teacher, glue_dir, out, "--split", "test"), "no test split in", "it has train and dev")
    fails(capsys, _extract(tiny_teacher, "bbc-news", out, "--split", "test"), "bbc-news has splits train and dev")
    fails(capsys, _extract(tiny_teacher, toy_dir, out, "--split", "test"), "no test file", "test.csv")
    assert not out.exists()
    assert len(data.load_split(DataConfig(source=str(glue_dir), split="validation")).dataset) == 4


def test_rows_with_empty_labels_are_dropped_with_a_warning(capsys, tiny_teacher, tmp_path):
    rows = toy_rows(10)
    for i in (1, 4, 7):
        rows[i]["label"] = ["", "  ", ""][(i - 1) // 3]
    path = write_rows(tmp_path / "rows.csv", rows)
    assert data.load_split(DataConfig(source=str(path))).dropped == 3
    capsys.readouterr()
    assert main(_extract(tiny_teacher, path, tmp_path / "cache")) == 0
    captured = capsys.readouterr()
    assert "extract: 7 examples" in captured.out
    assert "dropped 3 of 10 rows" in captured.err and "3 with an empty label" in captured.err, captured.err


def test_integer_labels_with_a_missing_value_stay_integer_ids(tmp_path):
    rows = [{"text": row["text"], "label": int(row["label"] == "pos")} for row in toy_rows(6)]
    rows[2]["label"] = ""
    split = data.load_split(DataConfig(source=str(write_rows(tmp_path / "ids.csv", rows))))
    labels = split.dataset["label"]
    assert list(labels) == [0, 1, 1, 0, 1] and all(type(v) is int for v in labels)
    assert split.label_names == ("0", "1") and split.dropped == 1


# 5. magnitude width: the mask never holds more elements than the stored slots


@pytest.mark.parametrize("fraction,k,d", [(0.017, 125, 384), (0.1, 7, 30), (0.3, 128, 312), (1.0, 5, 8)])
def test_magnitude_mask_fills_exactly_the_stored_slots(fraction, k, d):
    torch.manual_seed(0)
    hidden = torch.randn(1, 1, k, d)
    mask = width.magnitude_mask(hidden, torch.ones(1, 1, k, dtype=torch.bool), fraction)
    slots = width.max_kept_elements(fraction, k, d)
    assert int(mask.sum()) == slots == width.kept_elements(fraction, k * d)
    kept, mask = (hidden * mask).numpy(), mask.numpy()
    values = hidden_states.pack_values(kept, mask, slots)
    assert np.array_equal(hidden_states.unpack_values(values, mask), kept)
    assert np.array_equal(np.unpackbits(np.packbits(mask, axis=-1), axis=-1, count=d).astype(bool), mask)


def test_encode_refuses_a_mask_larger_than_the_slots():
    hidden = torch.randn(1, 1, 4, 8)
    plan = Plan(
        spec=ExtractSpec.parse(layers="last", dims="magnitude:0.1", knowledge="hidden_states", dtype="float32"),
        max_length=4,
        kept_tokens=4,
        teacher_layers=1,
        hidden_size=8,
        heads=2,
        classes=2,
        layers=(1,),
        slots=3,
    )
    knowledge = {
        "token_index": torch.arange(4).reshape(1, 1, 4),
        "hidden_states": hidden,
        "hidden_mask": torch.ones(1, 1, 4, 8, dtype=torch.bool),
    }
    with pytest.raises(CacheError, match="keeps 32 elements but the cache has 3 slots"):
        plan.encode(knowledge)


# 6. hub names that are neither local nor on the hub (offline: fails at once)


@pytest.fixture()
def offline(monkeypatch):
    """The hub offline: huggingface_hub reads HF_HUB_OFFLINE at import, so patch its constant too."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


@pytest.mark.parametrize("option", ["--student-from", "--student-pretrained"])
def test_unknown_hub_student(capsys, offline, small_cache, tmp_path, option):
    fails(
        capsys,
        ["train", "--from-cache", small_cache, option, "no-such-org/no-such-model", "--out", str(tmp_path / "student")],
        "'no-such-org/no-such-model'",
        "hub could not provide it",
    )
    assert not (tmp_path / "student").exists()


def test_local_dir_of_missing_paths_and_names(offline, tiny_teacher, tmp_path):
    assert models.local_dir(tiny_teacher) == models.local_dir(str(tiny_teacher))
    with pytest.raises(ModelError, match="no such directory"):
        models.local_dir(str(tmp_path / "nope"))
    with pytest.raises(ModelError, match="no model at 'no-such-org/no-such-model'"):
        models.read_config("no-such-org/no-such-model")
    with pytest.raises(ModelError, match="hub could not provide it"):
        models.weights_sha256("no-such-org/no-such-model")
    assert json.loads((models.local_dir(tiny_teacher) / "config.json").read_text())["hidden_size"] == 32
