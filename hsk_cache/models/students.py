"""Students for ``hsk train``: how to build one (from a config, from teacher layers, or a saved
model) with the task's classes, or without a task (general distillation: a base encoder or a
masked-LM model), in any supported encoder family."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from hsk_cache.errors import ConfigError, ModelError
from hsk_cache.models import families, hub
from hsk_cache.models.hub import _attention_kwargs, _check_model_dir, local_dir, weight_files
from hsk_cache.tasks import types

log = logging.getLogger(__name__)

STUDENT_KINDS = ("config", "teacher-layers", "pretrained")
HEADS = ("classifier", "base", "mlm")  # a task student; a general student: base encoder or masked LM


def auto_class(head: str):
    """The transformers Auto class of a student ``head``: ``classifier`` (sequence
    classification), ``base`` (``AutoModel``, no head) or ``mlm`` (``AutoModelForMaskedLM``)."""
    import transformers

    return {
        "classifier": transformers.AutoModelForSequenceClassification,
        "base": transformers.AutoModel,
        "mlm": transformers.AutoModelForMaskedLM,
    }[head]


@dataclass(frozen=True, kw_only=True)
class StudentConfig:
    """How to build the student.

    kind ``config``: random init with layers/hidden/heads/ffn (defaults: TinyBERT4 shape);
    ``teacher-layers``: DistilBERT-style copy of ``init_layers`` from the weights at ``path``;
    ``pretrained``: load ``path``. family: for ``config``, build a student of another encoder
    family than the teacher's (one of ``families.FAMILIES``, sharing its tokenizer); None = the
    teacher's.
    """

    kind: str = "config"
    path: str | None = None
    layers: int = 4
    hidden: int = 312
    heads: int = 12
    ffn: int = 1200
    init_layers: tuple[int, ...] | None = None
    family: str | None = None

    def __post_init__(self) -> None:
        if self.family is not None and self.family not in families.FAMILIES:
            raise ConfigError(
                f"{{student.family}} {self.family!r}: use one of {', '.join(families.FAMILIES)}",
                field="student.family",
                value=self.family,
            )
        if self.family is not None and self.kind != "config":
            raise ConfigError(
                f"{{student.family}} applies to students built from a config, not to a {self.kind} student: drop it",
                field="student.family",
                value=self.family,
            )
        if self.kind not in STUDENT_KINDS:
            raise ConfigError(f"unknown student kind {self.kind!r}: use one of {', '.join(STUDENT_KINDS)}")
        if self.kind != "config" and not self.path:
            raise ConfigError(f"a {self.kind} student needs a model directory: set its path", field="student.path")


def build_student(
    student: StudentConfig,
    teacher_config: dict,
    label_names: tuple[str, ...],
    attention: bool = False,
    attention_probs: bool = False,
    head: str = "classifier",
):
    """The student model, with the task's classes (``head`` ``classifier``) or, for general
    distillation, a base encoder (``base``) or a masked-LM model (``mlm``); eager attention when
    ``attention`` (so attention probabilities can be returned); without attention dropout when it
    distils ``attention_probs`` (``families.without_attention_dropout``).
    Raises ConfigError/ModelError on a bad shape or path."""
    if head != "classifier":
        model = _general_student(student, teacher_config, attention, head)
    else:
        model = _student(student, teacher_config, label_names, attention)
    if attention_probs:
        families.without_attention_dropout(model)
    return model


def _student(student: StudentConfig, teacher_config: dict, label_names: tuple[str, ...], attention: bool):
    task = types.of_config(teacher_config)
    classes = task.classes(label_names)
    if student.kind == "pretrained":
        model = hub.load_classifier(student.path, attention=attention)
        if types.of_model(model) != task:
            raise ConfigError(
                f"pretrained student {student.path!r} is a {types.of_model(model).noun}, the task "
                f"{task.name}: pick a student for this task"
            )
        if model.config.num_labels != classes:
            raise ConfigError(
                f"pretrained student {student.path!r} has {model.config.num_labels} classes, the task has "
                f"{classes}: pick a student for this task"
            )
        return model
    if student.kind == "teacher-layers":
        depth = hub.read_config(student.path)["num_hidden_layers"]
        layers = student.init_layers or default_init_layers(depth, student.layers)
        model = student_from_teacher_layers(student.path, tuple(layers), attention)
    else:
        model = student_from_config(
            teacher_config,
            classes,
            student.layers,
            student.hidden,
            student.heads,
            student.ffn,
            attention,
            family=student.family,
        )
    if model.config.num_labels != classes:
        raise ConfigError(f"the student has {model.config.num_labels} classes, the task {classes}")
    if task.labels not in ("score", "span"):
        model.config.id2label = dict(enumerate(label_names))
        model.config.label2id = {name: i for i, name in enumerate(label_names)}
    model.config.problem_type = task.problem_type or model.config.problem_type
    return model


def _general_student(student: StudentConfig, teacher_config: dict, attention: bool, head: str):
    auto = auto_class(head)
    if student.kind == "pretrained":
        if head == "mlm":
            return hub.load_encoder(student.path, mlm=True, attention=attention)
        return hub.load_encoder(student.path, attention=attention)
    if student.kind == "teacher-layers":
        depth = hub.read_config(student.path)["num_hidden_layers"]
        layers = student.init_layers or default_init_layers(depth, student.layers)
        return student_from_teacher_layers(student.path, tuple(layers), attention, head=head)
    return student_from_config(
        teacher_config, 0, student.layers, student.hidden, student.heads, student.ffn, attention, student.family, auto
    )


def student_from_config(
    teacher_config: dict,
    num_labels: int,
    layers: int,
    hidden: int,
    heads: int,
    ffn: int,
    attention: bool = False,
    family: str | None = None,
    auto=None,
):
    """A randomly initialized student with a new shape, of the teacher's family or of ``family``
    (one of ``families.FAMILIES``, sharing the teacher's vocabulary); a task model of
    ``num_labels`` classes with the teacher's head (``tasks.types.of_config``: sequence or token
    classifier, regressor), or the transformers Auto class ``auto`` (``auto_class``) without task.

    Raises: ConfigError if hidden is not a multiple of heads, or for an unsupported family.
    """
    from transformers import AutoConfig

    if min(layers, hidden, heads, ffn) < 1 or hidden % heads:
        raise ConfigError(
            f"student shape layers={layers} hidden={hidden} heads={heads} ffn={ffn}: "
            "all must be ≥ 1 and hidden a multiple of heads"
        )
    if family is not None and family != families.family(teacher_config):
        config = families.student_config(family, teacher_config, layers, hidden, heads, ffn)
    else:
        fields = {
            k: v
            for k, v in teacher_config.items()
            if k not in ("architectures", "_name_or_path", "transformers_version")
        }
        config = AutoConfig.for_model(**fields)
        families.reshape(config, layers, hidden, heads, ffn)
    if auto is not None:
        return auto.from_config(config, **_attention_kwargs(attention))
    task = types.of_config(teacher_config)
    config.num_labels = num_labels
    config.id2label, config.label2id = teacher_config.get("id2label"), teacher_config.get("label2id")
    config.problem_type = task.problem_type or teacher_config.get("problem_type")
    return task.auto().from_config(config, **_attention_kwargs(attention))


def student_from_teacher_layers(
    teacher_path: str, layers: tuple[int, ...], attention: bool = False, head: str = "classifier"
):
    """DistilBERT-style student: copy embeddings and teacher transformer layers ``layers``
    (1-based, as in hidden_states numbering) from the teacher's weight files; a sequence
    classifier, or with ``head`` ``base`` / ``mlm`` a general student (``auto_class``).

    The files may hold a task model (keys ``bert.encoder.layer.N…``) or a base model (keys
    ``encoder.layer.N…``): when the files lack the student's ``base_model_prefix``, it is added,
    as transformers' from_pretrained does. Pooler and classifier may be missing (random init).
    Raises: ConfigError for a layer outside 1..L; ModelError for an unreadable teacher directory,
    or when any student embedding or transformer-layer parameter is not in the files.
    """
    from transformers import AutoConfig

    root = local_dir(teacher_path)
    _check_model_dir(str(root))
    config = AutoConfig.from_pretrained(root)
    depth = config.num_hidden_layers
    if not layers or min(layers) < 1 or max(layers) > depth:
        raise ConfigError(
            f"{{student.init_layers}} {list(layers)}: teacher layers run from 1 to {depth}",
            field="student.init_layers",
            value=list(layers),
        )
    config.num_hidden_layers = len(layers)
    auto = types.of_config(config).auto() if head == "classifier" else auto_class(head)
    student = auto.from_config(config, **_attention_kwargs(attention))
    state = _with_prefix(_read_weights(root), student)
    pattern = _layer_key(student)
    missing, _ = student.load_state_dict(_renumber_layers(state, layers, pattern), strict=False)
    _check_copied(missing, teacher_path, pattern)
    return student


def _layer_key(model) -> re.Pattern:
    """Matches the state-dict keys of the model's transformer layers, the layer number in
    group 2 (``bert.encoder.layer.3.…``, ``distilbert.transformer.layer.3.…``)."""

    name, _ = families.layer_stack(model)
    return re.compile(rf"^({re.escape(name)}\.)(\d+)(\.)")


def _read_weights(root: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    state = {}
    for file in weight_files(str(root)):
        state.update(load_file(str(file)) if file.suffix == ".safetensors" else torch.load(file, weights_only=True))
    return state


def _with_prefix(state: dict, model) -> dict:
    """Add ``model.base_model_prefix`` + "." to every key when the model's keys carry it and
    none of the checkpoint's do (a base model's weights for a task model)."""
    prefix = model.base_model_prefix + "."
    expects = any(key.startswith(prefix) for key in model.state_dict())
    if not expects:  # a base model: a task model's weights lose their prefix (and their head)
        if any(key.startswith(prefix) for key in state):
            return {key[len(prefix) :]: value for key, value in state.items() if key.startswith(prefix)}
        return state
    if any(key.startswith(prefix) for key in state):
        return state
    return {prefix + key: value for key, value in state.items()}


def _renumber_layers(state: dict, layers: tuple[int, ...], pattern: re.Pattern) -> dict:
    """Keep the chosen teacher layers (1-based) as student layers 0..len−1; drop the rest. A
    teacher layer chosen twice (a student deeper than the teacher) is copied into both."""
    targets: dict[int, list[int]] = {}
    for student, teacher in enumerate(layers):
        targets.setdefault(teacher - 1, []).append(student)
    renamed = {}
    for key, value in state.items():
        match = pattern.search(key)
        if match is None:
            renamed[key] = value
            continue
        for new in targets.get(int(match.group(2)), []):
            renamed[key[: match.start(2)] + str(new) + key[match.end(2) :]] = value
    return renamed


def _check_copied(missing: list[str], teacher_path: str, pattern: re.Pattern) -> None:
    """Raises ModelError when an embedding or transformer-layer parameter was not copied."""
    required = [key for key in missing if pattern.search(key) or "embeddings" in key]
    if required:
        raise ModelError(
            f"the weights of {teacher_path!r} lack {len(required)} of the student's embedding and layer "
            f"parameters (e.g. {required[0]!r}): pass a model directory whose weights match its config"
        )
    if missing:
        log.info("student keys not in the teacher (left at random init): %s", missing)


def default_init_layers(teacher_layers: int, student_layers: int) -> tuple[int, ...]:
    """The teacher layers the uniform layer map g(l, L) targets, l = 1..L_S."""
    from hsk_cache.select.depth import uniform_layer_map

    return tuple(uniform_layer_map(student_layers, teacher_layers).values())
