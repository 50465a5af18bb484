"""Task-type test data: tiny teachers of each task type, generated data in each community's
format (VADER-layout TSV, CoNLL, JSON Lines label sets, SQuAD v2.0), and the module fixture
``task_data`` (in conftest.py) writes them for tests/test_task_types.py and tests/test_task_qa.py."""

import random

import torch

from hsk_cache.knowledge.spec import ExtractSpec
from tests.conftest import WORDS, tiny_config

LOSSLESS = ExtractSpec.parse(layers="all", tokens="all", dims="all", dtype="float32")
TAGS = ("O", "B-PER", "I-PER", "B-LOC", "I-LOC")
TOPICS = ("cold", "sad", "warm")  # multi-label: a text has every topic whose word it holds
PEOPLE, PLACES = ["ada lovelace", "alan", "grace hopper", "linus"], ["paris", "new york", "oslo", "rome"]


def tiny_task_model(tokenizer, task: str, tags=TAGS, seed: int = 0):
    from transformers import BertForSequenceClassification, BertForTokenClassification

    config = tiny_config(len(tokenizer))
    torch.manual_seed(seed)
    if task == "regression":
        config.num_labels, config.problem_type = 1, "regression"
        return BertForSequenceClassification(config).eval()
    if task == "question_answering":
        from transformers import BertForQuestionAnswering

        config.num_labels = 2
        return BertForQuestionAnswering(config).eval()
    if task == "multi_label_classification":
        config.num_labels, config.problem_type = len(TOPICS), "multi_label_classification"
        config.id2label, config.label2id = dict(enumerate(TOPICS)), {t: i for i, t in enumerate(TOPICS)}
        return BertForSequenceClassification(config).eval()
    config.num_labels, config.id2label = len(tags), dict(enumerate(tags))
    config.label2id = {t: i for i, t in enumerate(tags)}
    return BertForTokenClassification(config).eval()


def scored_rows(n: int, seed: int) -> list[tuple[str, float]]:
    """Sentences scored by (positive − negative words) / words, a float in [−1, 1]."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        words = [rng.choice(WORDS[rng.choice(("pos", "neg"))]) for _ in range(rng.randint(3, 15))]
        score = (sum(w in WORDS["pos"] for w in words) - sum(w in WORDS["neg"] for w in words)) / len(words)
        rows.append((" ".join(words), round(score + 0.01, 4)))
    return rows


def topic_rows(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        words = [rng.choice(WORDS["pos"] + WORDS["neg"]) for _ in range(rng.randint(2, 10))]
        rows.append({"text": " ".join(words), "topics": sorted({w for w in words if w in TOPICS})})
    return rows


def squad_v2(seed: int) -> dict:
    """A SQuAD v2.0 file: contexts of 8–14 "<name> lives in <place> ." sentences (longer than one
    48-token feature), a question per person (answer: the place, at its character offset) and an
    unanswerable one per context (``is_impossible``)."""
    rng = random.Random(seed)
    names = ["ada", "alan", "grace", "linus", "edsger", "barbara", "donald", "frances", "john", "tim", "ken", "dennis"]
    places = ["paris", "oslo", "rome", "lima", "cairo", "kyoto", "quito", "dakar", "perth", "delhi", "tunis", "sofia"]
    paragraphs = []
    for p in range(6):
        people = rng.sample(names, rng.randint(8, 12))
        context, qas = "", []
        for person in people:
            place = rng.choice(places)
            sentence = f"{person} lives in "
            start = len(context) + len(sentence)
            context += sentence + place + ". "
            qas.append(
                {
                    "id": f"{p}-{person}",
                    "question": f"where does {person} live?",
                    "is_impossible": False,
                    "answers": [{"text": place, "answer_start": start}],
                }
            )
        absent = next(n for n in names if n not in people)
        qas.append(
            {
                "id": f"{p}-{absent}",
                "question": f"where does {absent} live?",
                "is_impossible": True,
                "answers": [],
                "plausible_answers": [{"text": "paris", "answer_start": 0}],
            }
        )
        paragraphs.append({"context": context.strip(), "qas": qas})
    return {"version": "v2.0", "data": [{"title": "people", "paragraphs": paragraphs}]}


def tagged_sentences(n: int, seed: int) -> list[list[tuple[str, str]]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        sentence = []
        for _ in range(rng.randint(2, 8)):
            pick = rng.random()
            if pick < 0.2:
                sentence += [(w, ("B-" if i == 0 else "I-") + "PER") for i, w in enumerate(rng.choice(PEOPLE).split())]
            elif pick < 0.4:
                sentence += [(w, ("B-" if i == 0 else "I-") + "LOC") for i, w in enumerate(rng.choice(PLACES).split())]
            else:
                sentence.append((rng.choice(WORDS["pos"] + WORDS["neg"]), "O"))
        out.append(sentence)
    return out
