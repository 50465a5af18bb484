"""``hsk finetune``: fine-tune a teacher on a task's labels and save it (save_pretrained)."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from hsk_cache import outputs
from hsk_cache.config.run import DataConfig, StageConfig, check_device, check_precision
from hsk_cache.data.sources import DatasetSource
from hsk_cache.distill import objectives
from hsk_cache.errors import ConfigError
from hsk_cache.models import hub
from hsk_cache.training.configs import StageResult
from hsk_cache.training.loop import fit


@dataclass(frozen=True, kw_only=True)
class FinetuneConfig:
    """What ``hsk finetune`` does: one stage on a task's gold labels, with the task type's loss
    (cross-entropy; MSE for regression; per-token cross-entropy for token classification).

    Attributes:
        model: the model to fine-tune: a directory, the alias ``minilm-l6``, or a hub name.
        data: the training split.
        out: the directory to save the fine-tuned model to (save_pretrained).
        epochs: training epochs, ≥ 0 (a fraction trains part of the last epoch).
        lr: the peak learning rate of AdamW (linear warmup over 10% of the steps, then linear
            decay), > 0.
        batch_size: examples per optimizer step, ≥ 1.
        seed: seeds the new head's initialization, the epoch order and dropout.
        precision: training autocast: ``fp32``, ``bf16``, or ``fp16`` (CUDA only, with loss
            scaling).
        device: ``cpu``, ``cuda`` or ``cuda:N``.
    Raises:
        ConfigError: (on construction) an unknown device or precision, or numbers out of range.
    """

    model: str
    data: DataConfig
    out: str
    epochs: float = 3.0
    lr: float = 5e-5
    batch_size: int = 32
    seed: int = 0
    precision: str = "fp32"
    device: str = "cpu"

    def __post_init__(self) -> None:
        check_device(self.device)
        check_precision(self.precision, self.device)
        StageConfig(kind="labels", epochs=self.epochs, lr=self.lr, batch_size=self.batch_size)  # validates the numbers


@dataclass(frozen=True, kw_only=True)
class FinetuneResult:
    """What ``run`` did.

    Attributes:
        out: the directory the fine-tuned model was saved to.
        stage: the training stage's result (kind ``labels``).
        elapsed_s: wall-clock seconds of the whole run, loading and saving included.
    """

    out: str
    stage: StageResult
    elapsed_s: float


def run(config: FinetuneConfig, progress=None) -> FinetuneResult:
    """Load ``config.model`` with a fresh head of the data's task type (``tasks.types``: sequence
    classifier, regressor, token classifier) for the task's classes or tags (or keep its head if it
    already has them), train with the task type's loss, save to ``config.out``.

    Raises: ModelError for a path with no model; DataError for bad data; ConfigError when
    ``max_length`` exceeds the model's position embeddings.
    """
    started = time.perf_counter()
    outputs.check_writable(config.out, ConfigError)  # --out is written only after training: check it first
    tokenizer = hub.load_tokenizer(config.model)
    source = DatasetSource(config.data, tokenizer)
    torch.manual_seed(config.seed)
    model = hub.load_classifier(config.model, label_names=source.label_names, task_type=source.split.task_type)
    hub.check_max_length(model.config, config.data.max_length)
    model.to(config.device)
    stage = StageConfig(kind="labels", epochs=config.epochs, lr=config.lr, batch_size=config.batch_size)
    result = fit(
        model,
        source,
        stage,
        objectives.labels,
        seed=config.seed,
        precision=config.precision,
        progress=progress,
        device=config.device,
    )
    hub.save(model.to("cpu"), tokenizer, config.out)
    return FinetuneResult(out=config.out, stage=result, elapsed_s=time.perf_counter() - started)
