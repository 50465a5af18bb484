"""SQuAD JSON, doc-stride features and their mapping back to contexts, and the post-processing of
start/end logits to answers, on a generated SQuAD v2.0-format file and the bundled tokenizer."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hsk_cache.errors import ConfigError, DataError, DataNotFoundError
from hsk_cache.tasks import qa

WORDS = (
    "the river flows north through the old valley where farmers grow wheat and barley in long terraced "
    "fields while the town of aldermoor sits on the eastern bank with its stone bridge built in 1820 "
    "by engineers from the coast who also laid the first railway line across the northern plain"
)


def squad_file(tmp_path, questions=None):
    context = WORDS
    answer = "stone bridge built in 1820"
    at = lambda text: [{"text": text, "answer_start": context.index(text)}]
    questions = questions or [
        {"id": "a1", "question": "What was built in 1820?", "answers": at(answer)},
        {"id": "a2", "question": "What do farmers grow?", "answers": at("wheat")},
        {"id": "u1", "question": "Who painted the bridge?", "answers": [], "is_impossible": True,
         "plausible_answers": at("engineers")},
    ]  # fmt: skip
    data = {"version": "v2.0", "data": [{"title": "t", "paragraphs": [{"context": context, "qas": questions}]}]}
    path = tmp_path / "dev-v2.0.json"
    path.write_text(json.dumps(data))
    return path


def test_read_squad_v2_keeps_answers_and_drops_plausible_ones(tmp_path):
    examples = qa.read_squad(squad_file(tmp_path))
    assert [e.id for e in examples] == ["a1", "a2", "u1"]
    assert examples[0].answers == ("stone bridge built in 1820",) and examples[2].answers == ()
    e = examples[0]
    assert e.context[e.answer_starts[0] : e.answer_starts[0] + len(e.answers[0])] == e.answers[0]


def test_read_squad_refusals_name_the_file_and_question(tmp_path):
    with pytest.raises(DataNotFoundError, match="no SQuAD file"):
        qa.read_squad(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("[1, 2")
    with pytest.raises(DataError, match="not SQuAD JSON"):
        qa.read_squad(tmp_path / "bad.json")
    wrong = [{"id": "w", "question": "?", "answers": [{"text": "wheat", "answer_start": 3}]}]
    with pytest.raises(DataError, match="'w' has an answer 'wheat' that is not at character 3"):
        qa.read_squad(squad_file(tmp_path, wrong))


@pytest.fixture
def features(tmp_path, tokenizer):
    examples = qa.read_squad(squad_file(tmp_path))
    return examples, qa.make_features(examples, tokenizer, max_length=32, doc_stride=8)


def test_doc_stride_windows_overlap_by_the_stride_and_map_back_to_the_context(features, tokenizer):
    examples, f = features
    first = [i for i in range(len(f)) if f.example_index[i] == 0]
    assert len(first) >= 3  # the context is longer than one window
    for i in range(len(f)):
        assert len(f.input_ids[i]) <= 32
        context = examples[f.example_index[i]].context
        for token_id, offset in zip(f.input_ids[i], f.offsets[i]):
            if offset is not None:  # every context token is its piece of the context
                piece = tokenizer.convert_ids_to_tokens(token_id).removeprefix("##")
                assert context[offset[0] : offset[1]].lower() == piece
    for a, b in zip(first, first[1:]):  # consecutive windows share exactly doc_stride context tokens
        tail = [o for o in f.offsets[a] if o is not None][-8:]
        head = [o for o in f.offsets[b] if o is not None][:8]
        assert tail == head
    # the windows cover the whole context, in order
    spans = sorted({o for i in first for o in f.offsets[i] if o is not None})
    assert spans[0][0] == 0 and spans[-1][1] == len(examples[0].context)


def test_answer_positions_label_the_window_holding_the_whole_answer(features):
    examples, f = features
    for i in range(len(f)):
        e = examples[f.example_index[i]]
        s, t = int(f.start_positions[i]), int(f.end_positions[i])
        if s == 0:
            assert t == 0
            inside = [o for o in f.offsets[i] if o is not None]
            if e.answers:  # the answer is not wholly inside this window
                first, last = e.answer_starts[0], e.answer_starts[0] + len(e.answers[0])
                assert not (inside[0][0] <= first and inside[-1][1] >= last)
            continue
        assert e.context[f.offsets[i][s][0] : f.offsets[i][t][1]] == e.answers[0]
    labelled = {int(f.example_index[i]) for i in range(len(f)) if f.start_positions[i] > 0}
    assert labelled == {0, 1}  # both answerable questions, never the unanswerable one


def one_hot_logits(f, null_for=()):
    """Logits peaking at each feature's labelled span (or at [CLS] for examples in null_for)."""
    starts, ends = [], []
    for i in range(len(f)):
        s, t = np.full(len(f.offsets[i]), -5.0), np.full(len(f.offsets[i]), -5.0)
        if int(f.example_index[i]) in null_for:
            s[0] = t[0] = 8.0
        elif f.start_positions[i] > 0:
            s[f.start_positions[i]], t[f.end_positions[i]] = 10.0, 10.0
        starts.append(s)
        ends.append(t)
    return starts, ends


def test_postprocess_recovers_the_answers_and_the_null_answer(features):
    examples, f = features
    starts, ends = one_hot_logits(f, null_for={2})
    got = qa.postprocess(examples, f, starts, ends, version_2=True)
    assert got == {"a1": "stone bridge built in 1820", "a2": "wheat", "u1": ""}
    assert qa.squad_metrics(got, {e.id: list(e.answers) for e in examples})["exact_match"] == 1.0
    # a null score 16 beating the best span of u1 (−10) by 26: a threshold above that keeps the span
    kept = qa.postprocess(examples, f, starts, ends, version_2=True, null_threshold=100.0)
    assert kept["u1"] != ""
    assert qa.postprocess(examples, f, starts, ends)["u1"] != ""  # v1.1: always a span
    # the 5-token answer is too long for max_answer_length 4: another span wins
    short = qa.postprocess(examples, f, starts, ends, version_2=True, max_answer_length=4)
    assert short["a1"] != "stone bridge built in 1820" and len(short["a1"].split()) <= 4
    with pytest.raises(DataError, match="features but"):
        qa.postprocess(examples, f, starts[:-1], ends)


def test_feature_refusals(tmp_path, tokenizer):
    examples = qa.read_squad(squad_file(tmp_path))
    with pytest.raises(ConfigError, match="doc_stride"):
        qa.make_features(examples, tokenizer, max_length=32, doc_stride=16)
