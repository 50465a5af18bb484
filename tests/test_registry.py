"""Adding a knowledge kind is one module and one registry entry: a kind defined here (the
teacher's last-layer [CLS] state, with a cosine loss) extracts, stores, verifies, loads and
trains through the unchanged pipeline."""

import copy
import pickle

import numpy as np
import torch
import torch.nn.functional as F

from hsk_cache import DataConfig, DistillationLoss, ExtractConfig, extract, model_inputs, open_cache
from hsk_cache.knowledge import registry
from hsk_cache.knowledge.kind import ArraySpec, KnowledgeKind, Term, dequantized, quantized
from hsk_cache.knowledge.spec import ExtractSpec
from hsk_cache.models import hub
from hsk_cache.models.students import student_from_config
from hsk_cache.store.verify import verify


class ClsHidden(KnowledgeKind):
    """The teacher's [CLS] state of its last layer: [B, D] float32; arrays cls_hidden [N, D]."""

    name = "cls_hidden"
    batch_keys = ("cls_hidden",)
    stage = "hidden"

    def resolve(self, spec, config, max_length, selected):
        return {"cls_layer": config.num_hidden_layers} if selected else {}

    def manifest_fields(self, plan):
        return {"cls_layer": plan.extra["cls_layer"]}

    def from_manifest(self, stored):
        return {"cls_layer": stored["cls_layer"]}

    def hidden_layers_read(self, plan):
        return {plan.extra["cls_layer"]}

    def select(self, outputs, batch, plan):
        return {"cls_hidden": outputs.hidden_states[plan.extra["cls_layer"]][:, 0]}

    def arrays(self, plan, n):
        return [ArraySpec("cls_hidden", (n, plan.hidden_size), "float32", plan.spec.codec)]

    def encode(self, knowledge, plan):
        out = {}
        quantized(out, "cls_hidden", knowledge["cls_hidden"].numpy(), "float32")
        return out

    def decode(self, rows, plan, width):
        return {"cls_hidden": torch.from_numpy(dequantized(rows, "cls_hidden", "float32"))}

    def term(self, plan, student_config, options):
        return ClsTerm()


class ClsTerm(Term):
    name = "cls_hidden"

    def output_flags(self):
        return {"output_hidden_states": True}

    def __call__(self, outputs, values, batch, world_size=1, training=False):
        student = outputs.hidden_states[-1][:, 0]
        return {self.name: (1 - F.cosine_similarity(student, batch["cls_hidden"], dim=-1)).mean()}


def test_a_kind_defined_in_one_module_runs_end_to_end(tiny_teacher, toy_dir, tmp_path, monkeypatch, tokenizer):
    monkeypatch.setattr(registry, "KINDS", (*registry.KINDS, ClsHidden()))
    out = tmp_path / "cache"
    result = extract(
        ExtractConfig(
            teacher=tiny_teacher,
            data=DataConfig(source=toy_dir, max_length=32, limit=24),
            out=str(out),
            spec=ExtractSpec.parse(knowledge="cls_hidden,logits", dtype="float32"),
        )
    )
    assert result.manifest.knowledge == ("logits", "cls_hidden")  # registry order: it was added last
    assert result.manifest.to_dict()["kinds"] == {"cls_hidden": {"cls_layer": 2}}
    assert verify(str(out)).ok

    cache = open_cache(out)
    assert cache.plan.extra["cls_layer"] == 2
    batch = cache.batch(np.arange(6))
    teacher = hub.load_classifier(tiny_teacher)
    with torch.no_grad():
        live = teacher(**model_inputs(batch, teacher), output_hidden_states=True).hidden_states[2][:, 0]
    torch.testing.assert_close(batch["cls_hidden"], live, rtol=1e-5, atol=1e-6)

    student = student_from_config(cache.teacher_config, 2, layers=1, hidden=32, heads=4, ffn=64)
    loss_fn = DistillationLoss(cache, student.config)
    assert loss_fn.terms == ("logits", "cls_hidden")
    outputs = student(**model_inputs(batch, student), **loss_fn.output_flags())
    loss, terms = loss_fn(outputs, batch)
    loss.backward()
    assert 0 < float(terms["cls_hidden"].detach()) < 2
    copied = copy.deepcopy(loss_fn)  # as training loops do (EMA, one loss per run)
    assert copied.stored.extra == {"cls_layer": 2} and pickle.loads(pickle.dumps(cache.plan)).extra == {"cls_layer": 2}
    assert student.bert.embeddings.word_embeddings.weight.grad is not None
