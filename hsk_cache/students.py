"""Students for ``hsk train``: how to build one (from a config, from teacher layers, or a saved
model) with the task's classes, in any supported encoder family."""

from __future__ import annotations

from dataclasses import dataclass

from hsk_cache import families, models
from hsk_cache.errors import ConfigError

STUDENT_KINDS = ("config", "teacher-layers", "pretrained")


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
            raise ConfigError(f"--student-family {self.family!r}: use one of {', '.join(families.FAMILIES)}")
        if self.family is not None and self.kind != "config":
            raise ConfigError(
                "--student-family applies to students built from a config, not --student-from/--student-pretrained"
            )
        if self.kind not in STUDENT_KINDS:
            raise ConfigError(f"unknown student kind {self.kind!r}: use one of {', '.join(STUDENT_KINDS)}")
        if self.kind != "config" and not self.path:
            raise ConfigError(f"a {self.kind} student needs a model directory (--student-from / --student-pretrained)")


def build_student(
    student: StudentConfig,
    teacher_config: dict,
    label_names: tuple[str, ...],
    attention: bool = False,
    attention_probs: bool = False,
):
    """The student model, with the task's classes; eager attention when ``attention`` (so
    attention probabilities can be returned); without attention dropout when it distils
    ``attention_probs`` (``families.without_attention_dropout``).
    Raises ConfigError/ModelError on a bad shape or path."""
    model = _student(student, teacher_config, label_names, attention)
    if attention_probs:
        families.without_attention_dropout(model)
    return model


def _student(student: StudentConfig, teacher_config: dict, label_names: tuple[str, ...], attention: bool):
    if student.kind == "pretrained":
        model = models.load_classifier(student.path, attention=attention)
        if model.config.num_labels != len(label_names):
            raise ConfigError(
                f"pretrained student {student.path!r} has {model.config.num_labels} classes, the task has "
                f"{len(label_names)}: pick a student for this task"
            )
        return model
    if student.kind == "teacher-layers":
        depth = models.read_config(student.path)["num_hidden_layers"]
        layers = student.init_layers or models.default_init_layers(depth, student.layers)
        model = models.student_from_teacher_layers(student.path, tuple(layers), attention)
    else:
        model = models.student_from_config(
            teacher_config,
            len(label_names),
            student.layers,
            student.hidden,
            student.heads,
            student.ffn,
            attention,
            family=student.family,
        )
    if model.config.num_labels != len(label_names):
        raise ConfigError(f"the student has {model.config.num_labels} classes, the task {len(label_names)}")
    model.config.id2label = dict(enumerate(label_names))
    model.config.label2id = {name: i for i, name in enumerate(label_names)}
    return model
