"""The task types: what each one's labels, head, logits and metrics are.

| task type                | head (transformers Auto class)          | labels               | logits      |
|--------------------------|-----------------------------------------|----------------------|-------------|
| ``classification``       | ``AutoModelForSequenceClassification``  | [N] int64 class id   | [B, C]      |
| ``regression``           | the same, ``problem_type="regression"`` | [N] float32 score    | [B, 1]      |
| ``token_classification`` | ``AutoModelForTokenClassification``     | [N, T] int64 tag id  | [B, T_b, C] |
| ``multi_label_classification`` | the first, ``problem_type`` the name  | [N, C] float32 0/1   | [B, C]      |
| ``question_answering``   | ``AutoModelForQuestionAnswering``       | [N, 2] int64 start, end token | [B, T_b, 2] |

Token classification's tag id sits at each word's first piece, −100 elsewhere. Question
answering's rows are features (question + one window of the context, ``tasks.qa``), several per
question; its logits are the start and end logits stacked on the last axis, and its labels the
answer's first and last token in the feature (0, 0: no answer in it).

A teacher's task type is read from its config (``of_config``: the architecture's name and
``problem_type``), so a cache's task type follows from the teacher config its manifest stores,
and a student built from that config gets the same head.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from hsk_cache.errors import ConfigError


@dataclass(frozen=True)
class TaskType:
    """One task type (module table).

    Attributes:
        name: the type's name (``--task``). auto_class: the transformers Auto class of its head.
        problem_type: the ``problem_type`` its config carries (None: transformers infers it).
        per_token: the logits have a token axis. labels: the labels' form: ``id`` (a class),
            ``score``, ``tags`` (per token), ``set`` (multi-hot), ``span`` (start, end).
        label_dtype: the labels' numpy dtype.
        metrics: the dev metrics it reports; ``metrics[0]`` picks the best model by default.
        noun: what messages call a model with this head ("a sequence classifier").
    """

    name: str
    auto_class: str
    problem_type: str | None
    per_token: bool
    labels: str
    label_dtype: str
    metrics: tuple[str, ...]
    noun: str

    def classes(self, label_names: tuple[str, ...]) -> int:
        """The head's outputs for ``label_names``: 1 (regression), 2 (start, end: QA), else one per name."""
        return {"score": 1, "span": 2}.get(self.labels, len(label_names))

    def auto(self):
        """The transformers Auto class (imported on demand)."""
        import transformers

        return getattr(transformers, self.auto_class)

    def head_kwargs(self, label_names: tuple[str, ...]) -> dict:
        """from_pretrained / config keyword arguments for a new head over ``label_names`` (class or
        tag names; regression: one output, QA: start and end, with placeholder names)."""
        if self.labels in ("score", "span"):
            label_names = tuple(f"LABEL_{i}" for i in range(self.classes(())))
        out = {
            "num_labels": len(label_names),
            "id2label": dict(enumerate(label_names)),
            "label2id": {name: i for i, name in enumerate(label_names)},
        }
        return {**out, "problem_type": self.problem_type} if self.problem_type else out


CLASSIFICATION = TaskType(
    "classification",
    "AutoModelForSequenceClassification",
    None,
    per_token=False,
    labels="id",
    label_dtype="int64",
    metrics=("accuracy", "mcc"),
    noun="sequence classifier",
)
REGRESSION = TaskType(
    "regression",
    "AutoModelForSequenceClassification",
    "regression",
    per_token=False,
    labels="score",
    label_dtype="float32",
    metrics=("pearson", "spearman"),
    noun="regressor",
)
TOKEN_CLASSIFICATION = TaskType(
    "token_classification",
    "AutoModelForTokenClassification",
    None,
    per_token=True,
    labels="tags",
    label_dtype="int64",
    metrics=("f1", "precision", "recall", "accuracy"),
    noun="token classifier",
)
MULTI_LABEL = TaskType(
    "multi_label_classification",
    "AutoModelForSequenceClassification",
    "multi_label_classification",
    per_token=False,
    labels="set",
    label_dtype="float32",
    metrics=("micro_f1", "macro_f1"),
    noun="multi-label classifier",
)
QUESTION_ANSWERING = TaskType(
    "question_answering",
    "AutoModelForQuestionAnswering",
    None,
    per_token=True,
    labels="span",
    label_dtype="int64",
    metrics=("f1", "exact_match"),
    noun="question-answering model",
)
TASK_TYPES = {t.name: t for t in (CLASSIFICATION, REGRESSION, TOKEN_CLASSIFICATION, MULTI_LABEL, QUESTION_ANSWERING)}


def get(name: str | None) -> TaskType:
    """The task type called ``name`` (None: classification).

    Raises: ConfigError naming the value and the known types.
    """
    if name is None:
        return CLASSIFICATION
    if name not in TASK_TYPES:
        raise ConfigError(f"unknown {{task}} {name!r}: use one of {', '.join(TASK_TYPES)}", field="task", value=name)
    return TASK_TYPES[name]


def of_model(model) -> TaskType:
    """The task type of a loaded transformers model: from its class (``*ForTokenClassification``)
    and its config's ``problem_type``; a model still unsaved has no ``architectures`` yet."""
    unwrapped = getattr(model, "module", model)  # DistributedDataParallel
    if type(unwrapped).__name__.endswith("ForTokenClassification"):
        return TOKEN_CLASSIFICATION
    if type(unwrapped).__name__.endswith("ForQuestionAnswering"):
        return QUESTION_ANSWERING
    return of_config(unwrapped.config)


def of_config(config) -> TaskType:
    """The task type of a model with this transformers config (an object or a dict): token
    classification or question answering for a ``*ForTokenClassification`` /
    ``*ForQuestionAnswering`` architecture, regression or multi-label
    classification by ``problem_type``, else classification (also for a base encoder)."""
    get_ = config.get if isinstance(config, Mapping) else lambda key, default=None: getattr(config, key, default)
    architectures = get_("architectures") or ()
    if any(str(a).endswith("ForTokenClassification") for a in architectures):
        return TOKEN_CLASSIFICATION
    if any(str(a).endswith("ForQuestionAnswering") for a in architectures):
        return QUESTION_ANSWERING
    if get_("problem_type") == "regression":
        return REGRESSION
    if get_("problem_type") == "multi_label_classification":
        return MULTI_LABEL
    return CLASSIFICATION
