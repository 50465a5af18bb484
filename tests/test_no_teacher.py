"""``hsk train --from-cache`` never loads (or runs) the teacher."""

import shutil

from hsk_cache.cli import main
from hsk_cache.models import hub as models
from hsk_cache.models import teacher


def test_train_from_cache_never_loads_the_teacher(tiny_teacher, toy_dir, tmp_path, monkeypatch):
    teacher_copy = str(tmp_path / "teacher")
    shutil.copytree(tiny_teacher, teacher_copy)
    cache = str(tmp_path / "cache")
    assert (
        main(
            [
                "extract",
                "--teacher",
                teacher_copy,
                "--out",
                cache,
                "--data",
                toy_dir,
                "--max-length",
                "32",
                "--layers",
                "1,2",
                "--tokens",
                "topk:4",
            ]
        )
        == 0
    )
    shutil.rmtree(teacher_copy)  # the teacher is gone from disk ...

    def refuse(*args, **kwargs):  # ... and any attempt to load or run a model as teacher fails loudly
        raise AssertionError(f"teacher touched: {args}")

    monkeypatch.setattr(models, "load_classifier", refuse)
    monkeypatch.setattr(teacher, "run_teacher", refuse)
    import hsk_cache.data.sources as sources

    monkeypatch.setattr(sources, "teacher_knowledge", refuse)
    from transformers import AutoModelForSequenceClassification

    monkeypatch.setattr(AutoModelForSequenceClassification, "from_pretrained", refuse)

    out = tmp_path / "student"
    assert (
        main(
            [
                "train",
                "--from-cache",
                cache,
                "--out",
                str(out),
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
            ]
        )
        == 0
    )
    assert (out / "model.safetensors").is_file() and (out / "tokenizer_config.json").is_file()
    monkeypatch.undo()
    student = models.load_classifier(str(out))
    assert student.config.num_hidden_layers == 2 and student.config.num_labels == 2
