"""``hsk train``: distil a student from a cache (teacher-free) or online (teacher at every step).

Stages run in order (TinyBERT's two-stage recipe, Jiao et al. 2020 §3.2):
1. ``hidden``: hidden-state MSE between mapped student layers and teacher layers at the kept
   token positions, through a learned projection W_h when widths differ;
2. ``prediction``: soft cross-entropy against teacher logits at temperature τ, plus an optional
   hard-label cross-entropy weight.
The fine-tuning stage ``labels`` (cross-entropy on gold labels only) serves ``hsk finetune``.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, replace

import torch

from hsk_cache import distributed, outputs
from hsk_cache.config.run import (
    DataConfig,
    Interval,
    StageConfig,
)
from hsk_cache.data.cache import open_cache
from hsk_cache.data.sources import OnlineSource
from hsk_cache.distill import objectives
from hsk_cache.distill.loss import DistillationLoss
from hsk_cache.errors import CacheError, ConfigError, DataError
from hsk_cache.knowledge import registry
from hsk_cache.models import hub
from hsk_cache.models.students import STUDENT_KINDS, StudentConfig, build_student  # noqa: F401 (public here too)
from hsk_cache.store import layout
from hsk_cache.tasks import types
from hsk_cache.training.configs import StageResult, TrainConfig, TrainResult
from hsk_cache.training.evaluate import DistillationEvaluator, Evaluator
from hsk_cache.training.loop import fit
from hsk_cache.training.session import Session
from hsk_cache.training.stop import StopRequest

log = logging.getLogger(__name__)


def run(config: TrainConfig, progress=None, stop: StopRequest | None = None) -> TrainResult:
    """Build the source and the student, run the stages with checkpoints (resuming from the
    latest one in ``config.out``), save the student (save_pretrained).

    progress: optional factory ``progress(description, total, initial)`` returning a bar with
    ``update(n)``, ``set_postfix(**kw)`` and ``close()`` (a tqdm bar, for instance), in examples.
    stop: the ``StopRequest`` the caller's signal handlers fill (None: a fresh one, no handlers).
    Raises: CacheError for a missing, incomplete or damaged cache; ConfigError for a bad layer
    map or stage, or knowledge the stages need and the source lacks; CheckpointError when
    ``config.out`` holds another run. All before anything is written.
    """
    started = time.perf_counter()
    rank = distributed.init(config.device)
    device = rank.device(config.device)
    if rank.is_main:
        outputs.check_writable(config.out, ConfigError)  # before the cache is read or a step is run
    for stage in config.stages:
        if stage.epochs > 0 and stage.batch_size % rank.world_size:
            raise ConfigError(
                f"{stage.kind} batch size {stage.batch_size} is not a multiple of the {rank.world_size} ranks: "
                "the batch size is the global batch; use a multiple"
            )
    if config.cache is not None:
        source = open_cache(
            config.cache,
            memory_budget_bytes=config.memory_budget_bytes,
            progress=progress,
            storage_options=config.storage_options,
        )
    else:
        source = OnlineSource(config.online_teacher, config.data, config.spec, config.teacher_precision, device)
    session = Session.open(
        config.out, identity(config, source), config.overwrite, config.resume, writer=rank.is_main, stop=stop
    )
    if session.finished and not config.overwrite:
        return TrainResult(
            out=config.out,
            stages=[],
            layer_map={},
            attention_map={},
            elapsed_s=0.0,
            checkpoints=session.checkpoints,
            checkpoint_s=session.checkpoint_s,
            best=session.best,
            already_finished=True,
        )
    torch.manual_seed(config.seed)
    general = is_general(config, source)
    stages = general_stages(config) if general else config.stages
    trains = [s for s in stages if s.epochs > 0]
    _check_knowledge(config, source, trains)
    attention_probs = "attention_probs" in source.knowledge and any(s.kind in ("hidden", "general") for s in trains)
    attention = bool(source.stored.attention_layers) or source.stored.value_relation_layer is not None
    head = ("mlm" if "mlm" in source.knowledge else "base") if general else "classifier"
    student = build_student(
        config.student, source.teacher_config, source.label_names, attention, attention_probs=attention_probs, head=head
    ).to(device)
    if general and config.schedule == "progressive":
        stages = progressive_stages(stages, student.config.num_hidden_layers)
    loss_fn = distillation_loss(config, student, source, trains)
    if loss_fn is not None:
        loss_fn.to(device)
    log.info(
        "layer maps (student:teacher): hidden %s, attention %s",
        loss_fn and loss_fn.hidden_map,
        loss_fn and loss_fn.attention_map,
    )
    evaluator = _evaluator(config, source, general, loss_fn, device) if rank.is_main else None  # rank 0 evaluates
    projection = loss_fn.projection if loss_fn is not None else None
    modules = torch.nn.ModuleDict(
        {"student": student, **({"projection": projection} if projection is not None else {})}
    )
    best_stage = max((i for i, s in enumerate(stages) if s.epochs > 0), default=-1)
    session.start(modules, evaluator, Interval.parse(config.save_every), best_stage, config.overwrite)
    try:
        results = []
        for i, stage in enumerate(stages):
            if session.stage_done(i):
                logged = session.losses.get(i, [])
                results.append(
                    StageResult(kind=stage.kind, steps=len(logged), losses=logged, elapsed_s=0.0, examples_per_s=0.0)
                )
                continue
            step, extra = stage_objective(stage, loss_fn)
            frozen = freeze_for(student, stage)
            results.append(
                fit(
                    student,
                    source,
                    stage,
                    step,
                    seed=config.seed + i,
                    precision=config.precision,
                    extra_params=extra,
                    progress=progress,
                    num_workers=config.num_workers,
                    device=device,
                    session=session,
                    index=i,
                    rank=rank,
                )
            )
            for parameter in frozen:
                parameter.requires_grad_(True)
        if rank.is_main:
            hub.save(student.to("cpu"), source.tokenizer, config.out)
        result = TrainResult(
            out=config.out,
            stages=results,
            layer_map=loss_fn.hidden_map if loss_fn else {},
            attention_map=loss_fn.attention_map if loss_fn else {},
            elapsed_s=time.perf_counter() - started,
            checkpoints=session.checkpoints,
            checkpoint_s=session.checkpoint_s,
            resumed_from=str(session.resume_from) if session.resume_from else None,
            best=session.best,
        )
        config_fields = {k: v for k, v in asdict(config).items() if k != "storage_options"}  # may hold secrets
        if config.cache is not None:  # the online source's unused defaults: the cache's own are its manifest's
            config_fields = {k: v for k, v in config_fields.items() if k not in ONLINE_FIELDS}
        session.finish(
            {"config": config_fields, "result": {**asdict(result), "stages": [_summary(r) for r in results]}}
        )
    finally:
        session.close()
    return result


def is_general(config: TrainConfig, source) -> bool:
    """Whether the run is general distillation: its knowledge comes from an unlabeled corpus."""
    if config.cache is not None:
        return bool(source.manifest.data.corpus)
    return bool(config.data.corpus)


def general_stages(config: TrainConfig) -> tuple[StageConfig, ...]:
    """The stages of a general-distillation run: the ``general`` stages given, else one general
    stage with the hidden stage's settings (the prediction stage needs task logits and does not
    apply to a corpus)."""
    given = tuple(s for s in config.stages if s.kind == "general")
    if given:
        return given
    hidden = next((s for s in config.stages if s.kind == "hidden"), None)
    if hidden is None:
        raise ConfigError("a general-distillation run needs a general (or hidden) stage", field="stages")
    return (replace(hidden, kind="general"),)


def progressive_stages(stages: tuple[StageConfig, ...], student_layers: int) -> tuple[StageConfig, ...]:
    """MobileBERT's progressive knowledge transfer (Sun et al. 2020, §3.5): each general stage
    becomes one stage per student layer l = 1..L_S, each training only layer l (and the
    embeddings with l = 1) on the terms of its layer pairs, the other layers frozen, each for
    1/L_S of the stage's epochs (the same total steps as the joint schedule)."""
    out = []
    for stage in stages:
        if stage.kind != "general":
            out.append(stage)
            continue
        out += [replace(stage, epochs=stage.epochs / student_layers, layers=(l,)) for l in range(1, student_layers + 1)]
    return tuple(out)


def freeze_for(student, stage: StageConfig) -> list:
    """Freeze every student parameter outside ``stage.layers`` (a progressive stage: layer l's
    transformer layer, plus the embeddings for l = 1). Returns the parameters frozen, to unfreeze."""
    if stage.layers is None:
        return []
    from hsk_cache.models.families import layer_stack

    _, stack = layer_stack(student)
    keep = {id(p) for l in stage.layers for p in stack[l - 1].parameters()}
    if 1 in stage.layers:
        embeddings = student.get_input_embeddings()
        keep |= {id(p) for name, p in student.named_parameters() if "embeddings" in name} | {
            id(p) for p in embeddings.parameters()
        }
    frozen = [p for p in student.parameters() if p.requires_grad and id(p) not in keep]
    for parameter in frozen:
        parameter.requires_grad_(False)
    return frozen


def stage_objective(stage: StageConfig, loss_fn: DistillationLoss | None):
    """(step function, parameters besides the student's) of one stage: the hidden stage uses the
    loss's intermediate terms and trains W_h; prediction its logits term; labels gold labels;
    general every term (restricted to the layer pairs of ``stage.layers`` when progressive)."""
    if stage.kind == "labels":
        return objectives.labels, []
    if loss_fn is None:  # a stage with 0 epochs: nothing runs
        return None, []
    if stage.kind == "general":
        step = objectives.distillation(loss_fn, student_layers=stage.layers)
        return step, list(loss_fn.parameters())
    terms = tuple(t for t in registry.stage_terms(stage.kind) if t in loss_fn.terms)
    extra = list(loss_fn.parameters()) if stage.kind == "hidden" else []
    return objectives.distillation(loss_fn, terms), extra


def _summary(stage: StageResult) -> dict:
    first, last = (stage.losses[0], stage.losses[-1]) if stage.losses else (None, None)
    return {
        "kind": stage.kind,
        "steps": stage.steps,
        "first_loss": first,
        "last_loss": last,
        "elapsed_s": stage.elapsed_s,
        "examples_per_s": stage.examples_per_s,
    }


ONLINE_FIELDS = ("online_teacher", "data", "spec", "teacher_precision")  # TrainConfig's online-source settings


def identity(config: TrainConfig, source) -> dict:
    """What must match for a run in ``config.out`` to be resumed: every option that changes the
    trained numbers. The cache counts by its identity (teacher, data, spec), not its path, and a
    run from a cache records no online source settings (``online_teacher``, ``data``, ``spec``,
    ``teacher_precision``: unused defaults there); the device, worker count, checkpoint interval
    and evaluation frequency may change."""
    fields = asdict(config)
    for key in (
        "out",
        "cache",
        "device",
        "num_workers",
        "memory_budget_bytes",
        "save_every",
        "overwrite",
        "resume",
        "storage_options",
    ):
        fields.pop(key)
    if config.eval is not None:
        fields["eval"] = {k: v for k, v in fields["eval"].items() if k not in ("every", "batch_size")}
        fields["eval"]["metric"] = config.eval.resolved_metric(is_general(config, source))
    fields["cache"] = layout.identity(source.manifest) if config.cache is not None else None
    if config.cache is not None:  # the online source's settings: unused defaults (the cache's are under cache)
        for key in ONLINE_FIELDS:
            fields.pop(key)
    fields["shard_window_from_memory_budget"] = getattr(source, "window", None)  # the epoch order depends on it
    return fields


def _check_knowledge(config: TrainConfig, source, stages) -> None:
    """Raises ConfigError, before any training, when a stage needs knowledge the source lacks."""
    if any(s.kind == "prediction" for s in stages) and "logits" not in source.knowledge:
        where = f"the cache {config.cache!r}" if config.cache else "{knowledge}"
        raise ConfigError(
            f"{where} holds no logits (knowledge: {','.join(source.knowledge)}) but the prediction stage needs "
            "them: pass {stages.prediction.epochs} 0, or extract with {knowledge} "
            + ",".join((*source.knowledge, "logits")),
            field="knowledge",
        )


def _evaluator(config: TrainConfig, source, general: bool = False, loss_fn=None, device: str = "cpu"):
    """The dev evaluator of ``config.eval`` (None without it), tokenized like the training data:
    accuracy/MCC of a task, or for general distillation the dev distillation loss
    (``_general_evaluator``).

    Raises: ConfigError (field ``eval_metric``) for a metric the run cannot compute; those of
    ``_general_evaluator``; DataError / ModelError for bad dev data.
    """
    e = config.eval
    if e is None:
        return None
    task = types.get(source.plan.task_type if source.plan is not None else source.split.task_type)
    metric = e.resolved_metric(general, task.name)
    if general != (metric == "loss") or (not general and metric not in task.metrics):
        raise ConfigError(
            f"{{eval_metric}} {metric}: "
            + (
                "a general-distillation run has no labels; its dev metric is the distillation loss: use loss"
                if general
                else f"a {task.name} run reports {', '.join(task.metrics)}: use one of them"
            ),
            field="eval_metric",
            value=metric,
        )
    if general:
        return _general_evaluator(config, source, loss_fn, device) if loss_fn is not None else None
    trained = source.manifest.data if config.cache is not None else config.data
    columns, label = trained.text_columns, trained.label_column
    max_length = source.manifest.max_length if config.cache is not None else config.data.max_length
    same = e.data == trained.source  # the dev split of the training file: read as it was, holdout included
    data = DataConfig(
        source=e.data,
        split=e.split,
        text_columns=e.text_columns or (tuple(columns) if columns else None),
        label_column=e.label_column or label,
        max_length=max_length,
        task_type=task.name,
        format=trained.format if same else None,
        holdout=trained.holdout if same else None,
        doc_stride=trained.doc_stride,
    )
    try:
        return Evaluator(
            data,
            source.tokenizer,
            source.label_names,
            every=e.every,
            metric=metric,
            batch_size=e.batch_size,
            precision=config.precision,
            device=config.device,
        )
    except DataError as err:  # the dev data's split is the evaluation's own setting
        if err.field != "split":
            raise
        raise DataError(err.template.replace("{split}", "{eval_split}"), field="eval_split", value=err.value) from None


def _general_evaluator(config: TrainConfig, source, loss_fn, device: str) -> DistillationEvaluator:
    """The dev distillation loss of a general run: from a cache, ``eval.data`` is a cache of
    held-out text with the training cache's spec, teacher and max length (``hsk extract`` with
    another ``--split``); online, a corpus split the same teacher reads.

    Raises: ConfigError (field ``eval_data``) when the dev cache is missing or was extracted with
    another spec, teacher or max length; CacheError for a damaged one.
    """
    e = config.eval
    if config.cache is None:
        data = replace(config.data, source=e.data, split=e.split, limit=None, corpus=True)
        dev = OnlineSource(
            config.online_teacher, data, config.spec, config.teacher_precision, device, teacher=source.teacher
        )
    else:
        try:
            dev = open_cache(
                e.data, memory_budget_bytes=config.memory_budget_bytes, storage_options=config.storage_options
            )
        except CacheError as err:
            if not (str(err).startswith("no cache at") or os.path.isfile(e.data)):
                raise  # a damaged dev cache is named as such
            raise ConfigError(
                f"{{eval_data}} {e.data!r} is not a cache: general distillation from a cache evaluates on a cache "
                "of held-out text; extract one with the training cache's command and another --split "
                "(e.g. hsk extract ... --data wikitext-2 --split valid --out DIR) and pass DIR",
                field="eval_data",
                value=e.data,
            ) from None
        trained, held_out = source.manifest, dev.manifest
        differs = [
            name
            for name, a, b in (
                ("spec", trained.spec.to_dict(), held_out.spec.to_dict()),
                ("teacher", trained.teacher.weights_sha256, held_out.teacher.weights_sha256),
                ("max length", trained.max_length, held_out.max_length),
                ("kind of data (a corpus)", trained.data.corpus, held_out.data.corpus),
            )
            if a != b
        ]
        if differs:
            raise ConfigError(
                f"{{eval_data}} {e.data!r} was extracted with another {' and '.join(differs)} than the training "
                "cache: extract the dev text with the training cache's command (only --split and --out changed)",
                field="eval_data",
                value=e.data,
            )
    return DistillationEvaluator(
        dev, loss_fn, every=e.every, batch_size=e.batch_size, precision=config.precision, device=config.device
    )


def distillation_loss(config: TrainConfig, student, source, stages) -> DistillationLoss | None:
    """The ``DistillationLoss`` of the run's distillation stages (None when none trains): the
    intermediate terms the source holds for the hidden stage, logits for the prediction stage.

    Raises: ConfigError if the hidden stage trains and the source has no intermediate knowledge,
    a map needs an unstored layer, or head counts differ without a usable ``head_map``.
    """
    kinds = {s.kind for s in stages}
    terms = []
    if "general" in kinds:
        terms = list(source.knowledge)
    if "hidden" in kinds:
        terms = [t for t in registry.stage_terms("hidden") if t in source.knowledge]
        if not terms:
            raise ConfigError(
                "the knowledge source has no hidden states, attention or value relation: "
                "set {stages.hidden.epochs} 0 or extract them",
                field="knowledge",
            )
    if "prediction" in kinds:
        terms += registry.stage_terms("prediction")
    if not terms:
        return None
    return DistillationLoss(
        source.stored,
        student.config,
        terms=terms,
        **asdict(config.loss_options()),
    )
