"""Every supported encoder family as teacher and student, for every knowledge kind.

Each family gets a tiny random classifier sharing the bundled (BERT WordPiece) tokenizer. The
cached knowledge is checked against an independent reference computed here from the teacher's
own outputs and, for value relation, from a hook on the module path the family's source code
names (written out below, not taken from ``hsk_cache.families``).
"""

from __future__ import annotations

import math

import pytest
import torch

from hsk_cache import DistillationLoss, ModelError, open_cache
from hsk_cache.config.run import DataConfig, StageConfig
from hsk_cache.extraction import extract
from hsk_cache.knowledge.batch import Batch
from hsk_cache.knowledge.plan import Plan
from hsk_cache.knowledge.spec import ExtractSpec
from hsk_cache.models import hub as models
from hsk_cache.models import students
from hsk_cache.models.families import FAMILIES, returns_attention_probs, student_config
from hsk_cache.models.inputs import model_inputs
from hsk_cache.models.teacher import run_teacher
from hsk_cache.training import configs, train

# where each family's transformers source keeps layer 2's value projection (layer index 1)
VALUE_PATHS = {
    "bert": "bert.encoder.layer.1.attention.self.value",
    "roberta": "roberta.encoder.layer.1.attention.self.value",
    "electra": "electra.encoder.layer.1.attention.self.value",
    "distilbert": "distilbert.transformer.layer.1.attention.v_lin",
    "mpnet": "mpnet.encoder.layer.1.attention.attn.v",
    "deberta-v2": "deberta.encoder.layer.1.attention.self.value_proj",
}
KNOWLEDGE = "hidden_states,attention_probs,value_relation,logits"
BASE = {
    "vocab_size": None,
    "pad_token_id": 0,
    "max_position_embeddings": 64,
    "model_type": "bert",
    "type_vocab_size": 2,
}


def tiny(family: str, tokenizer, seed: int = 0, layers: int = 2, hidden: int = 32, heads: int = 4):
    from transformers import AutoModelForSequenceClassification

    config = student_config(family, {**BASE, "vocab_size": len(tokenizer)}, layers, hidden, heads, 2 * hidden)
    config.num_labels, config.id2label, config.label2id = 2, {0: "neg", 1: "pos"}, {"neg": 0, "pos": 1}
    torch.manual_seed(seed)
    return AutoModelForSequenceClassification.from_config(config, attn_implementation="eager").eval()


@pytest.fixture(scope="module")
def teachers(tmp_path_factory, tokenizer) -> dict[str, str]:
    out = {}
    for family in FAMILIES:
        path = tmp_path_factory.mktemp(f"teacher-{family}")
        models.save(tiny(family, tokenizer), tokenizer, path)
        out[family] = str(path)
    return out


@pytest.fixture(scope="module")
def caches(teachers, toy_dir, tmp_path_factory) -> dict[str, str]:
    out = {}
    for family, teacher in teachers.items():
        path = str(tmp_path_factory.mktemp(f"cache-{family}") / "cache")
        spec = ExtractSpec.parse("all", "topk:6", knowledge=KNOWLEDGE, attention_layers="all", dtype="float32")
        extract.run(
            extract.ExtractConfig(
                teacher=teacher, data=DataConfig(source=toy_dir, max_length=24, limit=32), out=path, spec=spec
            )
        )
        out[family] = path
    return out


@pytest.mark.parametrize("family", FAMILIES)
def test_cached_knowledge_matches_the_family_s_own_modules(family, teachers, caches):
    teacher = models.load_classifier(teachers[family], attention=True)
    cache = open_cache(caches[family])
    assert cache.manifest.teacher.config["model_type"] == family
    batch = cache.collate([cache.dataset()[i] for i in range(8)])
    captured = []
    handle = teacher.get_submodule(VALUE_PATHS[family]).register_forward_hook(lambda m, i, o: captured.append(o))
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
    if "token_type_ids" in batch and family not in ("distilbert", "mpnet"):
        inputs["token_type_ids"] = batch["token_type_ids"]
    with torch.no_grad():
        out = teacher(**inputs, output_hidden_states=True, output_attentions=True)
    handle.remove()
    mask = batch["attention_mask"].bool()
    # hidden states of every layer at the kept tokens
    for i, layer in enumerate(cache.manifest.layers):
        index = batch["token_index"][:, i]
        for b in range(8):
            kept = index[b][index[b] >= 0]
            torch.testing.assert_close(batch["hidden_states"][b, i, : len(kept)], out.hidden_states[layer][b, kept])
    # attention rows of the kept queries
    for i, layer in enumerate(cache.manifest.attention_layers):
        index = batch["attention_index"][:, i]
        for b in range(8):
            kept = index[b][index[b] >= 0]
            torch.testing.assert_close(
                batch["attention_probs"][b, i, :, : len(kept)], out.attentions[layer - 1][b, :, kept]
            )
    # value relation of the last layer, from the family's value projection
    v = captured[0]
    heads = teacher.config.num_attention_heads
    b_, t, d = v.shape
    v = v.view(b_, t, heads, d // heads).transpose(1, 2)
    scores = (v @ v.transpose(-1, -2) / math.sqrt(d // heads)).masked_fill(~mask[:, None, None, :], -math.inf)
    relation = scores.softmax(-1)
    for b in range(8):
        kept = batch["value_index"][b][batch["value_index"][b] >= 0]
        torch.testing.assert_close(
            batch["value_relation"][b, :, : len(kept)], relation[b, :, kept], atol=1e-5, rtol=1e-4
        )
    torch.testing.assert_close(batch["logits"], out.logits)


ATTENTION_PATHS = {  # layer 1's self-attention module (the value projection's parent), per family source
    family: path.replace("layer.1.", "layer.0.").rsplit(".", 1)[0] for family, path in VALUE_PATHS.items()
}


@pytest.mark.parametrize("family", FAMILIES)
def test_the_teacher_keeps_only_the_attention_selection_reads(family, tokenizer):
    # 3 layers: layer 3's map is stored, layer 1 only ranks the tokens of hidden layer 1 and
    # layer 2 is read by nothing; the reference is the model's own output_attentions=True
    teacher = tiny(family, tokenizer, layers=3)
    spec = ExtractSpec.parse("1", "topk:4", knowledge="hidden_states,attention_probs", attention_layers="3")
    plan = Plan.make(spec, teacher.config, tokenizer, 16)
    encoded = tokenizer(["a good film", "an awful and grim film it was"], padding=True, return_tensors="pt")
    batch = Batch(
        input_ids=encoded["input_ids"],
        attention_mask=encoded["attention_mask"],
        token_type_ids=encoded["token_type_ids"],
        labels=torch.zeros(2, dtype=torch.long),
        example_ids=torch.arange(2),
    )
    with torch.no_grad():
        reference = teacher(**model_inputs(batch.as_dict(), teacher), output_attentions=True).attentions
    outputs = run_teacher(teacher, batch, plan)
    assert outputs.attentions[1] is None
    assert outputs.attentions[0].shape == (2, 4, 1, batch.input_ids.shape[1])  # the [CLS] query row only
    assert torch.equal(outputs.attentions[0], reference[0][:, :, :1])
    assert torch.equal(outputs.attentions[2], reference[2])
    # hooks are used exactly where the module hands its probabilities on unasked
    seen = []
    handle = teacher.get_submodule(ATTENTION_PATHS[family]).register_forward_hook(lambda m, i, o: seen.append(o))
    with torch.no_grad():
        teacher(**model_inputs(batch.as_dict(), teacher))
    handle.remove()
    unasked = isinstance(seen[0], tuple) and len(seen[0]) > 1 and isinstance(seen[0][1], torch.Tensor)
    assert returns_attention_probs(teacher) == unasked
    assert unasked == (family in ("bert", "roberta", "electra", "distilbert"))  # transformers 5's recorders


@pytest.mark.parametrize("family", FAMILIES)
def test_a_student_of_the_family_trains_from_the_cache_with_every_kind(family, caches, tmp_path):
    config = configs.TrainConfig(
        out=str(tmp_path / "student"),
        cache=caches[family],
        student=students.StudentConfig(layers=2, hidden=16, heads=4, ffn=32),
        stages=(
            StageConfig(kind="hidden", epochs=6, lr=3e-3, batch_size=8),
            StageConfig(kind="prediction", epochs=1, lr=1e-3, batch_size=8),
        ),
        save_every="0",
    )
    result = train.run(config)
    hidden = result.stages[0].losses
    assert all(math.isfinite(x) for x in hidden)
    assert sum(hidden[-4:]) / 4 < sum(hidden[:4]) / 4  # it learns from the cached knowledge
    student = models.load_classifier(str(tmp_path / "student"))
    assert student.config.model_type == family


@pytest.mark.parametrize("family", FAMILIES)
def test_student_from_copies_the_family_s_layers(family, teachers):
    teacher = models.load_classifier(teachers[family])
    student = students.student_from_teacher_layers(teachers[family], (2,))
    assert student.config.model_type == family and student.config.num_hidden_layers == 1
    t_state, s_state = teacher.state_dict(), student.state_dict()
    prefix = teacher.base_model_prefix
    stack = VALUE_PATHS[family].split(".1.")[0]  # e.g. bert.encoder.layer
    copied = [k for k in s_state if k.startswith(f"{stack}.0.")]
    assert copied
    for key in copied:
        torch.testing.assert_close(s_state[key], t_state[key.replace(f"{stack}.0.", f"{stack}.1.")], rtol=0, atol=0)
    embeddings = [k for k in s_state if k.startswith(f"{prefix}.embeddings.")]
    assert embeddings
    for key in embeddings:
        assert torch.equal(s_state[key], t_state[key]), key


@pytest.mark.parametrize("family", [f for f in FAMILIES if f != "bert"])
def test_a_student_of_another_family_trains_from_a_bert_cache(family, caches, tmp_path):
    config = configs.TrainConfig(
        out=str(tmp_path / "student"),
        cache=caches["bert"],
        student=students.StudentConfig(layers=2, hidden=16, heads=4, ffn=32, family=family),
        stages=(
            StageConfig(kind="hidden", epochs=3, lr=3e-3, batch_size=8),
            StageConfig(kind="prediction", epochs=1, lr=1e-3, batch_size=8),
        ),
        save_every="0",
    )
    result = train.run(config)
    assert all(math.isfinite(x) for s in result.stages for x in s.losses)
    student = models.load_classifier(str(tmp_path / "student"))
    assert student.config.model_type == family
    assert (
        student.config.attention_probs_dropout_prob == 0.0
        if family != "distilbert"
        else student.config.attention_dropout == 0.0
    )


def test_distillation_loss_terms_per_family(caches, tokenizer):
    cache = open_cache(caches["mpnet"])
    student = tiny("mpnet", tokenizer, seed=1, hidden=16)
    loss_fn = DistillationLoss(cache.manifest, student.config)
    assert loss_fn.terms == ("hidden_states", "attention_probs", "value_relation", "logits")
    assert loss_fn.projection is not None and loss_fn.projection.in_features == 16
    batch = next(iter(cache.loader(8)))
    with loss_fn.capture_values(student) as values:
        outputs = student(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], **loss_fn.output_flags()
        )
    loss, terms = loss_fn(outputs, batch, values)
    assert set(terms) == {"hidden_states", "attention_probs", "value_relation", "logits"}
    torch.testing.assert_close(loss, sum(terms.values()))
    loss.backward()
    assert loss_fn.projection.weight.grad is not None


def test_an_unsupported_family_is_named(tmp_path, tokenizer, toy_dir, capsys):
    from transformers import AlbertConfig, AlbertForSequenceClassification

    from tests.conftest import fails

    config = AlbertConfig(
        vocab_size=len(tokenizer),
        embedding_size=16,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        num_labels=2,
        id2label={0: "neg", 1: "pos"},
        label2id={"neg": 0, "pos": 1},
    )
    models.save(AlbertForSequenceClassification(config), tokenizer, tmp_path / "albert")
    with pytest.raises(ModelError, match="'albert'"):
        from hsk_cache.models.families import value_module

        value_module(AlbertForSequenceClassification(config), 1)
    fails(
        capsys,
        [
            "extract",
            "--teacher",
            str(tmp_path / "albert"),
            "--data",
            toy_dir,
            "--max-length",
            "32",
            "--knowledge",
            "hidden_states,value_relation,logits",
            "--out",
            str(tmp_path / "cache"),
        ],
        "'albert'",
        "bert",
    )
    assert not (tmp_path / "cache").exists()
