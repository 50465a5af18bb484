"""The ``hsk`` subcommands: each turns parsed options into a config, runs a stage and prints its
summary line."""

from __future__ import annotations

import json

from hsk_cache.cli.progress import bar as _bar
from hsk_cache.cli.reports import info as _info
from hsk_cache.cli.reports import size as _size
from hsk_cache.cli.reports import verify as _verify
from hsk_cache.config.run import DataConfig, StageConfig, check_device, check_precision, parse_storage_options
from hsk_cache.errors import ConfigError
from hsk_cache.knowledge.spec import ExtractSpec


def _columns(a) -> tuple[str, ...] | None:
    return tuple(c.strip() for c in a.text_columns.split(",")) if a.text_columns else None


def _data_config(a) -> DataConfig:
    return DataConfig(
        source=a.data,
        split=a.split,
        text_columns=_columns(a),
        label_column=a.label_column,
        max_length=a.max_length,
        limit=a.limit,
        corpus=getattr(a, "corpus", False) or (getattr(a, "data_format", None) is None and _is_corpus(a.data)),
        task_type=getattr(a, "task", None),
        format=getattr(a, "data_format", None),
        holdout=getattr(a, "holdout", None),
        doc_stride=getattr(a, "doc_stride", None),
    )


def _is_corpus(source: str) -> bool:
    from hsk_cache.data.corpus import is_corpus_source

    return is_corpus_source(source)


KIND_OPTIONS = ("relation_layer", "relation_heads", "mlm_probability", "mlm_topk", "mlm_temperature")


def _presets(a) -> None:
    """Fill the options a ``--recipe`` presets (argparse default None): the recipe's value, else
    the option's own default. Explicit options win."""
    from hsk_cache.cli.options import PRESET_DEFAULTS
    from hsk_cache.knowledge.recipes import recipe

    r = recipe(a.recipe) if getattr(a, "recipe", None) else None
    preset = {}
    if r is not None:
        preset.update({k: v for k, v in r.spec.items() if k != "options"})
        preset.update(r.loss)
        preset.update({"hidden_lr": r.stage["lr"], "warmup_ratio": r.stage["warmup_ratio"], "schedule": r.schedule})
        for name, value in dict(r.spec.get("options", {})).items():
            if getattr(a, name, None) is None:
                setattr(a, name, value)
    for dest, default in PRESET_DEFAULTS.items():
        if hasattr(a, dest) and getattr(a, dest) is None:
            setattr(a, dest, preset.get(dest, default))
    if isinstance(getattr(a, "term_weights", None), str):
        a.term_weights = _term_weights(a.term_weights)


def _term_weights(text: str) -> tuple[tuple[str, float], ...]:
    out = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        name, _, value = part.partition("=")
        try:
            out.append((name.strip(), float(value)))  # no "=" leaves value empty: refused here too
        except ValueError:
            raise ConfigError(
                f"--term-weights {text!r}: use term=weight pairs such as mlm_soft=5,mlm=2", field="term_weights"
            ) from None
    return tuple(out)


def _spec(a) -> ExtractSpec:
    options = {name: getattr(a, name) for name in KIND_OPTIONS if getattr(a, name, None) is not None}
    return ExtractSpec.parse(
        a.layers,
        a.tokens,
        a.dims,
        a.knowledge,
        a.dtype,
        a.codec,
        a.attention_layers,
        a.value_relation_layer,
        a.importance_layer,
        a.spec_seed,
        options,
        getattr(a, "key_topk", 0),
    )


def _finetune(a) -> int:
    from hsk_cache.training import finetune

    config = finetune.FinetuneConfig(
        model=a.model,
        data=_data_config(a),
        out=a.out,
        epochs=a.epochs,
        lr=a.lr,
        batch_size=a.batch_size,
        seed=a.seed,
        precision=a.precision,
        device=a.device,
    )
    r = finetune.run(config, _bar)
    s = r.stage
    print(
        f"finetune: {s.steps} steps, loss {s.losses[0]:.4f} → {s.losses[-1]:.4f}, {s.examples_per_s:.1f} ex/s, "
        f"{r.elapsed_s:.1f} s → {r.out}"
        if s.steps
        else f"finetune: 0 steps → {r.out}"
    )
    return 0


def _extract(a) -> int:
    from hsk_cache.extraction import extract

    _presets(a)
    config = extract.ExtractConfig(
        teacher=a.teacher,
        data=_data_config(a),
        out=a.out,
        spec=_spec(a),
        batch_size=a.batch_size,
        sort_by_length=a.sort_by_length,
        precision=a.precision,
        overwrite=a.overwrite,
        shard_examples=a.shard_examples,
        device=a.device,
        storage_options=parse_storage_options(a.storage_options),
    )
    if a.dry_run:
        e = extract.dry_run(config)
        for name, size in sorted(e.arrays.items(), key=lambda item: -item[1]):
            print(f"  {name:<22} {_size(size):>10}")
        print(
            f"extract --dry-run: {e.examples} examples, predicted {_size(e.total_bytes)} "
            f"({_size(e.bytes_per_example)}/example); nothing written"
        )
        return 0
    main_rank = _launch(a.device)
    import signal

    from hsk_cache.training.stop import raise_stopped

    previous = signal.signal(signal.SIGTERM, raise_stopped("the shards committed so far are kept"))
    try:
        r = extract.run(config, _bar if main_rank else None)
    finally:
        signal.signal(signal.SIGTERM, previous)
    if not main_rank:
        return 0
    from hsk_cache.store.reader import CacheReader

    stored = CacheReader(a.out, config.storage_options).stored_bytes()
    n = r.manifest.counts["examples"]
    repaired = f" ({r.shards_repaired} damaged, re-extracted)" if r.shards_repaired else ""
    print(
        f"extract: {n} examples, {r.shards_written} shards written{repaired}, {r.shards_skipped} resumed, "
        f"{r.elapsed_s:.1f} s → {a.out} ({_size(stored)}, {_size(stored / n)}/example)"
    )
    return 0


def _train(a) -> int:
    from hsk_cache.models import students
    from hsk_cache.training import configs, train

    _presets(a)
    if a.student_from and a.student_pretrained:
        raise ConfigError("give at most one of --student-from and --student-pretrained")
    init_layers = _int_list(a.init_layers, "--init-layers") if a.init_layers else None
    if a.student_pretrained:
        student = students.StudentConfig(kind="pretrained", path=a.student_pretrained, family=a.student_family)
    elif a.student_from:
        student = students.StudentConfig(
            kind="teacher-layers",
            path=a.student_from,
            layers=a.student_layers,
            init_layers=init_layers,
            family=a.student_family,
        )
    else:
        student = students.StudentConfig(
            kind="config",
            layers=a.student_layers,
            hidden=a.student_hidden,
            heads=a.student_heads,
            ffn=a.student_ffn,
            family=a.student_family,
        )
    stages = (
        StageConfig(
            kind="hidden",
            epochs=a.hidden_epochs,
            lr=a.hidden_lr,
            batch_size=a.hidden_batch_size,
            warmup_ratio=a.warmup_ratio,
        ),
        StageConfig(
            kind="prediction",
            epochs=a.pred_epochs,
            lr=a.pred_lr,
            batch_size=a.pred_batch_size,
            warmup_ratio=a.warmup_ratio,
        ),
    )
    online = a.online_teacher is not None
    evaluation = None
    if not a.eval_data:  # evaluation options without data to evaluate on would be ignored
        given = [
            (name, value)
            for name, value, default in (("eval_every", a.eval_every, 0), ("eval_metric", a.eval_metric, None))
            + (("eval_split", a.eval_split, "dev"),)
            if value != default
        ]
        if given:
            name, value = given[0]
            raise ConfigError(
                f"{{{name}}} {value} needs {{eval_data}}: name the dev data to evaluate on, or drop {{{name}}}",
                field=name,
                value=value,
            )
    if a.eval_data:
        evaluation = configs.EvalConfig(
            data=a.eval_data,
            split=a.eval_split,
            text_columns=_columns(a),
            label_column=a.label_column,
            every=a.eval_every,
            metric=a.eval_metric,
        )
    config = configs.TrainConfig(
        out=a.out,
        student=student,
        cache=a.cache,
        online_teacher=a.online_teacher,
        data=_data_config(a) if online else None,
        spec=_spec(a) if online else ExtractSpec(),
        stages=stages,
        layer_map=a.layer_map,
        attention_map=a.attention_map,
        keep_top_pairs=a.keep_top_pairs,
        width_target=a.width_target,
        attention_loss=a.attention_loss,
        head_map=a.head_map,
        temperature=a.temperature,
        hard_label_weight=a.hard_label_weight,
        hidden_loss=a.hidden_loss,
        term_weights=a.term_weights,
        schedule=a.schedule,
        seed=a.seed,
        precision=a.precision,
        teacher_precision=a.teacher_precision,
        device=a.device,
        num_workers=a.num_workers,
        memory_budget_bytes=int(a.memory_budget_gb * (1 << 30)),
        eval=evaluation,
        save_every=a.save_every,
        overwrite=a.overwrite,
        resume=a.resume,
        storage_options=parse_storage_options(a.storage_options),
    )
    main_rank = _launch(a.device)
    r = _with_stop_handlers(lambda stop: train.run(config, _bar if main_rank else None, stop))
    if not main_rank:
        return 0
    if r.already_finished:
        print(f"train: {r.out} already holds this finished run; nothing to do (pass --overwrite to train again)")
        return 0
    if r.resumed_from:
        print(f"train: resumed from {r.resumed_from}")
    for s in r.stages:
        if s.steps:
            print(
                f"train {s.kind}: {s.steps} steps, loss {s.losses[0]:.4f} → {s.losses[-1]:.4f}, "
                f"{s.examples_per_s:.1f} ex/s, {s.elapsed_s:.1f} s"
            )
    maps = f"layer map {r.layer_map or '-'}" + (f", attention map {r.attention_map}" if r.attention_map else "")
    best = (
        f", best {r.best['metric']} {r.best['value']:.4f} (stage {r.best['stage']} step {r.best['step']}) → "
        f"{r.out}/best"
        if r.best
        else ""
    )
    print(f"train: {maps}, {r.checkpoints} checkpoints ({r.checkpoint_s:.1f} s){best}, {r.elapsed_s:.1f} s → {r.out}")
    return 0


def _launch(device: str) -> bool:
    """Join torchrun's process group when launched with several processes; True on rank 0
    (the one that prints and shows progress)."""
    from hsk_cache import distributed

    if not distributed.launched():
        return True
    return distributed.init(device).is_main


def _with_stop_handlers(fn):
    """Run ``fn(stop)`` with SIGTERM and SIGINT asking training to checkpoint and stop: a fresh
    ``StopRequest`` for this command, its handler installed until ``fn`` returns."""
    import signal

    from hsk_cache.training.stop import StopRequest

    stop = StopRequest()
    previous = {sig: signal.signal(sig, stop.handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        return fn(stop)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _eval(a) -> int:
    from hsk_cache.training import evaluate

    check_device(a.device)
    check_precision(a.precision, a.device)
    r = evaluate.run(a.model, _data_config(a), a.batch_size, a.precision, _bar, device=a.device)
    if a.json:
        print(json.dumps({"model": a.model, "task": r.task_type, **r.metrics, "examples": r.examples}))
    else:
        found = ", ".join(f"{name} {value:.4f}" for name, value in r.metrics.items())
        print(f"eval: {found} on {r.examples} {a.split} examples, {r.elapsed_s:.1f} s")
    return 0


def _augment(a) -> int:
    from hsk_cache.data import augment

    config = augment.AugmentConfig(
        data=_data_config(a),
        out=a.out,
        copies=a.copies,
        p=a.p,
        candidates=a.candidates,
        mlm=a.mlm,
        vectors=a.vectors,
        teacher=a.teacher,
        pair_side=a.pair_side,
        seed=a.seed,
        shard_examples=a.shard_examples,
        batch_size=a.batch_size,
        precision=a.precision,
        device=a.device,
        overwrite=a.overwrite,
    )
    r = augment.run(config, _bar)
    paths = r.word_paths
    words = sum(paths.values()) or 1
    if not a.mlm:
        print(
            "augment: no --mlm: every word took the nearest-neighbour path (TinyBERT uses a masked LM for "
            "words of one piece)"
        )
    print(
        f"augment: {r.examples} examples → {r.rows} rows ({r.rows / max(r.examples, 1):.1f} per example), "
        f"{r.shards_written} shards written, {r.shards_skipped} resumed, {r.elapsed_s:.1f} s → {r.out}"
    )
    print(
        f"augment: replaceable words: {paths['mlm'] / words:.1%} masked LM, {paths['neighbours'] / words:.1%} "
        f"neighbours ({r.neighbours_from}), {paths['none'] / words:.1%} without candidates"
    )
    return 0


def _int_list(text: str, option: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise ConfigError(f"{option} {text!r}: use a comma list of integers like 2,4,6") from None


COMMANDS = {
    "finetune": _finetune,
    "extract": _extract,
    "train": _train,
    "eval": _eval,
    "info": _info,
    "verify": _verify,
    "augment": _augment,
}
