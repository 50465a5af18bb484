"""``hsk eval`` and dev metrics during training, per task type (``tasks.types``):

- classification: accuracy and Matthews correlation;
- regression: Pearson and Spearman correlation (``tasks.regression``; ``best/`` follows Pearson
  unless ``--eval-metric spearman``);
- multi-label classification: micro and macro F1 of the label sets, a label predicted where
  its sigmoid exceeds 0.5 (``tasks.multi_label``; ``best/`` follows micro F1);
- question answering: SQuAD exact match and F1 of the post-processed answers, over the
  questions (not the features; ``best/`` follows F1);
- token classification: entity-level F1, precision and recall (seqeval, conlleval's
  definitions; ``tasks.token_classification``) over the words kept after truncation, read at
  each word's first piece, and the tag accuracy at those pieces (``best/`` follows F1).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import numpy as np
import torch

from hsk_cache.config.run import DataConfig
from hsk_cache.data import task_columns
from hsk_cache.data.sources import DatasetSource, check_task
from hsk_cache.errors import ModelError
from hsk_cache.knowledge.batch import sequential_batches
from hsk_cache.knowledge.logits import task_logits
from hsk_cache.models import hub
from hsk_cache.models.inputs import model_inputs
from hsk_cache.models.teacher import autocast
from hsk_cache.tasks import multi_label, qa, regression, token_classification, types


@dataclass(frozen=True)
class EvalResult:
    """What ``run`` measured.

    Attributes:
        metrics: the task type's metrics by name (module docstring), each a float.
        examples: labelled examples evaluated.
        elapsed_s: wall-clock seconds, loading the model and tokenizing the data included.
        task_type: the model's ``tasks.types`` name.
    """

    metrics: dict
    examples: int
    elapsed_s: float
    task_type: str = "classification"

    @property
    def accuracy(self) -> float | None:
        """Classification accuracy in [0, 1] (token classification: tag accuracy); None otherwise."""
        return self.metrics.get("accuracy")

    @property
    def mcc(self) -> float | None:
        """The Matthews correlation coefficient in [−1, 1] (classification); None otherwise."""
        return self.metrics.get("mcc")


def matthews_corrcoef(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> float:
    """Matthews correlation coefficient, multi-class form (Gorodkin 2004, Eq. 2):

    MCC = (c·s − Σ_k p_k t_k) / sqrt((s² − Σ_k p_k²)(s² − Σ_k t_k²))
    with c correct predictions, s samples, p_k times class k was predicted, t_k times it occurred.
    Returns 0.0 when the denominator is 0. For two classes this equals the binary MCC.
    """
    s = len(labels)
    c = int((labels == predictions).sum())
    p = np.bincount(predictions, minlength=num_classes).astype(np.float64)
    t = np.bincount(labels, minlength=num_classes).astype(np.float64)
    denominator = np.sqrt((s**2 - (p**2).sum()) * (s**2 - (t**2).sum()))
    return float((c * s - (p * t).sum()) / denominator) if denominator > 0 else 0.0


def predict(model, source, batch_size: int = 64, precision: str = "fp32", bar=None, device: str = "cpu") -> list:
    """The model's outputs in the source's order (the model is left in eval mode), per batch of
    ``batch_size``: a list of float32 numpy arrays, [B, C] logits, [B, 1] scores (regression) or
    [B, T_b, C] per-token logits (token classification)."""
    model.eval()
    out = []
    with torch.no_grad(), autocast(precision, device.split(":")[0]):
        for index in sequential_batches(len(source), batch_size):
            inputs = {key: value.to(device) for key, value in model_inputs(source.batch(index), model).items()}
            out.append(task_logits(model(**inputs)).float().cpu().numpy())
            if bar is not None:
                bar.update(len(index))
    return out


def metrics(
    task_type: str, outputs: list, labels: np.ndarray, label_names: tuple[str, ...], num_labels: int, source=None
) -> dict:
    """The task type's metrics (module docstring) of ``predict``'s outputs against the gold
    ``labels`` ([N] ids, [N] scores, [N, T] tag ids with −100 where no word starts, [N, C]
    label sets); question answering reads the questions and the features' offsets from the
    ``DatasetSource`` ``source`` instead."""
    task = types.get(task_type)
    if task.labels == "span":
        return question_metrics(outputs, source)
    if task.name == "regression":
        return regression.correlations(np.concatenate([o[:, 0] for o in outputs]), labels)
    if task == types.MULTI_LABEL:
        return multi_label.f1_scores(np.concatenate(outputs) > 0, labels > 0.5)  # σ(z) > 0.5
    if task.labels == "tags":
        gold, predicted, right, total, row = [], [], 0, 0, 0
        for batch in outputs:
            for tags in batch.argmax(-1):
                truth = labels[row, : len(tags)]
                keep = truth != token_classification.IGNORE
                gold.append([label_names[t] for t in truth[keep]])
                predicted.append([label_names[t] for t in tags[keep]])
                right, total, row = right + int((tags[keep] == truth[keep]).sum()), total + int(keep.sum()), row + 1
        return {**token_classification.entity_metrics(gold, predicted), "accuracy": right / max(total, 1)}
    predictions = np.concatenate([o.argmax(-1) for o in outputs])
    return {
        "accuracy": float((predictions == labels).mean()),
        "mcc": matthews_corrcoef(labels, predictions, num_labels),
    }


def question_metrics(outputs: list, source) -> dict:
    """SQuAD exact match and F1 (``tasks.qa``, the official definitions, as fractions) of
    ``predict``'s [B, T_b, 2] start/end logits over ``source``'s features: post-processed to
    answer texts with ``tasks.qa.postprocess`` (n-best 20, at most 30 tokens; SQuAD v2.0's null
    answer allowed when the split has an unanswerable question)."""
    examples = task_columns.question_examples(source.split.dataset)
    columns = source.tokenized.select_columns(["example_id", "offsets"])
    offsets = [[tuple(o) if o[0] >= 0 else None for o in row] for row in columns["offsets"]]
    features = qa.QAFeatures(
        source.tokenized["input_ids"], None, np.asarray(columns["example_id"]), offsets, np.zeros(0), np.zeros(0)
    )
    rows = [row for batch in outputs for row in batch]
    starts = [row[: len(offsets[f]), 0] for f, row in enumerate(rows)]
    ends = [row[: len(offsets[f]), 1] for f, row in enumerate(rows)]
    version_2 = any(not e.answers for e in examples)
    predictions = qa.postprocess(examples, features, starts, ends, version_2=version_2)
    found = qa.squad_metrics(predictions, {e.id: list(e.answers) for e in examples})
    return {key: float(value) for key, value in found.items() if not key.endswith("total")}


class Evaluator:
    """Dev metrics of a model during training: ``evaluator(model)`` → accuracy, MCC, examples.

    The split is tokenized once with the training tokenizer; labels are mapped with the training
    task's class names. ``every``: evaluate every this many steps (0: at stage ends only);
    ``metric``: accuracy or mcc, the one that picks the best model.
    Raises: DataError for bad data; ModelError when the split has other classes than the task.
    """

    def __init__(
        self,
        data_config: DataConfig,
        tokenizer,
        label_names: tuple[str, ...],
        every: int = 0,
        metric: str = "accuracy",
        batch_size: int = 64,
        precision: str = "fp32",
        device: str = "cpu",
    ) -> None:
        self.source = DatasetSource(data_config, tokenizer, label_names)
        self.task_type = self.source.split.task_type
        if len(self.source.label_names) != len(label_names):
            raise ModelError(
                f"{{eval_data}} {data_config.source!r} has {len(self.source.label_names)} classes, the "
                f"training task {len(label_names)}: evaluate on the same task's dev split",
                field="eval_data",
                value=data_config.source,
            )
        self.tokenizer, self.num_classes = tokenizer, len(label_names)
        self.every, self.metric, self.batch_size, self.precision, self.device = (
            every,
            metric,
            batch_size,
            precision,
            device,
        )

    def __call__(self, model) -> dict:
        outputs = predict(model, self.source, self.batch_size, self.precision, device=self.device)
        labels = self.source.examples.labels
        found = metrics(self.task_type, outputs, labels, self.source.label_names, self.num_classes, self.source)
        return {**found, "examples": len(labels)}


class DistillationEvaluator:
    """The dev distillation loss of a general (task-agnostic) student: ``evaluator(model)`` →
    {"loss": mean total, "loss.<term>": each term's mean, "examples": N}, the means over the dev
    source's batches weighted by their examples, with the model (and loss) in eval mode and no
    gradient. Lower is better (``higher_is_better`` False), so ``best/`` keeps the lowest.

    Args:
        source: a knowledge source of held-out text with the training source's knowledge (a
            ``data.cache.Cache`` or an ``OnlineSource``), read in one seeded epoch.
        loss_fn: the run's ``DistillationLoss`` (its terms, maps and W_h as trained).
        every, batch_size, precision, device: as ``Evaluator``'s.
    """

    metric = "loss"
    higher_is_better = False

    def __init__(self, source, loss_fn, every: int = 0, batch_size: int = 64, precision: str = "fp32", device="cpu"):
        self.source, self.loss_fn, self.tokenizer = source, loss_fn, source.tokenizer
        self.every, self.batch_size, self.precision, self.device = every, batch_size, precision, device

    def __call__(self, model) -> dict:
        loss_fn, was_training = self.loss_fn, self.loss_fn.training
        model.eval()
        loss_fn.eval()
        loader = self.source.loader(min(self.batch_size, len(self.source)), seed=0, prefetch=0)
        totals: dict[str, float] = {}
        examples = 0
        stream = loader.stream(loader.sampler.steps_per_epoch())
        try:
            with torch.no_grad(), autocast(self.precision, self.device.split(":")[0]):
                for _, batch in stream:
                    if self.device != "cpu":
                        batch = {key: value.to(self.device) for key, value in batch.items()}
                    with loss_fn.capture_values(model) as values:
                        outputs = model(**model_inputs(batch, model), **loss_fn.output_flags())
                    out = loss_fn(outputs, batch, values)
                    n = len(batch["input_ids"])
                    for name, value in {"loss": out.loss, **{f"loss.{t}": v for t, v in out.terms.items()}}.items():
                        totals[name] = totals.get(name, 0.0) + float(value) * n
                    examples += n
        finally:
            stream.close()
            loss_fn.train(was_training)
        return {**{name: total / max(examples, 1) for name, total in totals.items()}, "examples": examples}


def run(
    model_path: str,
    data_config: DataConfig,
    batch_size: int = 64,
    precision: str = "fp32",
    progress=None,
    device: str = "cpu",
) -> EvalResult:
    """Evaluate the task model at ``model_path`` on ``data_config``'s split (read as the model's
    task type unless ``data_config.task_type`` says otherwise) with its task type's metrics.

    Raises: ModelError for a path with no model; DataError for bad data; ModelError when the
    model's class count differs from the data's; ConfigError when ``max_length`` exceeds the
    model's position embeddings.
    """
    started = time.perf_counter()
    model = hub.load_classifier(model_path).to(device)
    task = types.of_model(model)
    hub.check_max_length(model.config, data_config.max_length)
    if data_config.task_type is None:  # read the data as the model's task
        data_config = replace(data_config, task_type=task.name)
    names = None if task.labels in ("score", "span") else hub.task_label_names(model)
    source = DatasetSource(data_config, hub.load_tokenizer(model_path), names)
    check_task(source.split, model.config, repr(model_path))
    bar = progress("eval", len(source), 0) if progress is not None else None
    outputs = predict(model, source, batch_size, precision, bar, device=device)
    if bar is not None:
        bar.close()
    labels = source.examples.labels
    found = metrics(task.name, outputs, labels, source.label_names, model.config.num_labels, source)
    return EvalResult(found, len(labels), time.perf_counter() - started, task.name)
