"""Extractive question answering through the commands and the API on a generated SQuAD v2.0 file."""

import json

import pytest
import torch

from hsk_cache.data import splits, task_columns
from hsk_cache.data.cache import open_cache
from hsk_cache.models import hub as models
from hsk_cache.tasks import qa, types
from hsk_cache.training import evaluate, finetune


def test_question_answering_finetune_and_eval_give_squads_metrics(task_data, tmp_path, tiny_teacher):
    data = task_data["question_answering"]
    out = str(tmp_path / "reader")
    result = finetune.run(
        finetune.FinetuneConfig(model=tiny_teacher, data=data, out=out, epochs=4, batch_size=8, lr=2e-3)
    )
    assert result.stage.losses[-1] < result.stage.losses[0]
    model, tokenizer = models.load_classifier(out), models.load_tokenizer(out)
    assert types.of_model(model).name == "question_answering"
    examples = task_columns.question_examples(splits.load_split(data).dataset)
    features = qa.make_features(examples, tokenizer, 48, 12)
    starts, ends = [], []
    with torch.no_grad():
        for f in range(len(features)):
            ids = torch.tensor([features.input_ids[f]])
            outputs = model(input_ids=ids, token_type_ids=torch.tensor([features.token_type_ids[f]]))
            starts.append(outputs.start_logits[0].numpy())
            ends.append(outputs.end_logits[0].numpy())
    answers = qa.postprocess(examples, features, starts, ends, version_2=True)
    expected = qa.squad_metrics(answers, {e.id: list(e.answers) for e in examples})
    found = evaluate.run(out, data)
    assert found.task_type == "question_answering" and found.examples == len(features)
    for key in ("exact_match", "f1", "has_answer_f1", "no_answer_exact_match"):
        assert found.metrics[key] == pytest.approx(expected[key], abs=1e-9), key


def test_the_commands_run_question_answering_on_a_squad_v2_file(task_data, tiny_teacher, tmp_path, capsys):
    from hsk_cache.cli import main

    squad, shape = task_data["question_answering"].source, ["--max-length", "48", "--doc-stride", "12"]
    teacher, cache, student = (str(tmp_path / name) for name in ("teacher", "cache", "student"))
    assert main(["finetune", "--model", tiny_teacher, "--data", squad, *shape, "--epochs", "1", "--out", teacher]) == 0
    assert main(["extract", "--teacher", teacher, "--data", squad, *shape, "--out", cache]) == 0
    tiny = ["--student-layers", "1", "--student-hidden", "16", "--student-heads", "2", "--student-ffn", "32"]
    assert main(["train", "--from-cache", cache, *tiny, "--out", student, "--eval-data", squad]) == 0
    capsys.readouterr()
    assert main(["eval", student, "--data", squad, *shape, "--json"]) == 0
    found = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert found["task"] == "question_answering" and 0 <= found["exact_match"] <= found["f1"] <= 1
    assert found["examples"] == len(open_cache(cache))  # the features, several per question
