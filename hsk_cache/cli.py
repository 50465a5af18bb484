"""The ``hsk`` command: finetune, extract, train, eval, info, verify.

Every error the library raises on purpose (``HskError``) becomes one line on stderr and exit
status 2; argparse's own usage errors also exit 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from hsk_cache.config import (
    DEFAULT_SAVE_EVERY,
    EVAL_METRICS,
    DataConfig,
    ExtractSpec,
    StageConfig,
    check_device,
    check_precision,
    parse_storage_options,
)
from hsk_cache.errors import ConfigError, HskError
from hsk_cache.families import FAMILIES
from hsk_cache.progress import bar as _bar
from hsk_cache.progress import quiet_libraries

TEACHER_HELP = "teacher: a saved model directory, a hub name, or minilm-l6 (the bundled all-MiniLM-L6-v2)"


def _add_data(p: argparse.ArgumentParser, split: str) -> None:
    g = p.add_argument_group("data")
    g.add_argument(
        "--data",
        default="bbc-news",
        help="bbc-news, a GLUE task directory, a csv/tsv/jsonl/parquet file "
        "or a directory of <split>.<ext> files, or a hub dataset name (default: %(default)s)",
    )
    g.add_argument(
        "--split",
        default=split,
        help="split to use: train, dev (or validation, valid) or test; "
        "a GLUE test split has no labels and is refused (default: %(default)s)",
    )
    g.add_argument(
        "--text-columns",
        default=None,
        help="text column, or two comma-separated for sentence pairs (default: the source's own, else 'text')",
    )
    g.add_argument("--label-column", default=None, help="label column (default: the source's own, else 'label')")
    g.add_argument("--max-length", type=int, default=128, help="truncate to this many tokens (default: %(default)s)")
    g.add_argument("--limit", type=int, default=None, help="use only the first N examples (default: all)")


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
    )


def _add_spec(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("knowledge to extract")
    g.add_argument(
        "--layers",
        default="last",
        help="depth: hidden-state layers, 0 = embedding output: last, all, "
        "uniform:K (round(l·L/K), l=1..K), top:K, bottom:K, or a comma list like 2,4,6 (default: %(default)s)",
    )
    g.add_argument(
        "--tokens",
        default="all",
        help="length: all, cls, or left|random|topk:K — K a count or P%% of each "
        "example's real length; topk ranks by the attention tokens receive from [CLS] (mean over heads); "
        "padding and [SEP] are never kept unless the +sep variant, e.g. topk+sep:10 (default: %(default)s)",
    )
    g.add_argument(
        "--dims",
        default="all",
        help="width, P in (0, 1]: all, uniform:P, random:P (same dimensions for "
        "every token) or magnitude:P (top-P of each example-layer's elements by |h|, stored sparsely) "
        "(default: %(default)s)",
    )
    g.add_argument(
        "--knowledge",
        default="hidden_states,logits",
        help="comma list of hidden_states, attention_probs, value_relation, logits (default: %(default)s)",
    )
    g.add_argument(
        "--attention-layers",
        default="last",
        help="teacher layers (1..L) whose attention rows of the "
        "kept query tokens are stored: last, all, top:K, or a list (default: %(default)s)",
    )
    g.add_argument(
        "--value-relation-layer",
        default="last",
        help="teacher layer (1..L) of the MiniLM value relation softmax(V·Vᵀ/√d_head) (default: %(default)s)",
    )
    g.add_argument(
        "--importance-layer",
        default="same",
        help="layer whose [CLS] attention ranks top-k tokens: same "
        "(the stored layer's own; layer 1's for the embeddings) or a number (default: %(default)s)",
    )
    g.add_argument(
        "--dtype",
        default="float16",
        help="stored precision: float32, float16, bfloat16, or int8 with a per-row absmax scale (default: %(default)s)",
    )
    g.add_argument(
        "--codec",
        default="none",
        help="lossless compression of knowledge arrays: none, zstd, blosc "
        "(default: %(default)s; real float states compress only ~1.08×)",
    )
    g.add_argument(
        "--selection-seed",
        dest="spec_seed",
        type=int,
        default=0,
        help="seed of random token and dimension choices (default: %(default)s)",
    )


def _spec(a) -> ExtractSpec:
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
    )


def _precision(p, name="--precision", what="forward passes") -> None:
    p.add_argument(
        name,
        default="fp32",
        choices=("fp32", "bf16", "fp16"),
        help=f"fp32 (the reference), bf16 autocast, or fp16 autocast (--device cuda) for {what} (default: %(default)s)",
    )


def _device(p, what: str) -> None:
    p.add_argument("--device", default="cpu", help=f"where {what}: cpu, cuda or cuda:N (default: %(default)s)")


def _storage(p) -> None:
    p.add_argument(
        "--storage-options",
        default=None,
        metavar="JSON",
        help="fsspec options for a cache URL (s3://, gs://, memory://), e.g. "
        '\'{"client_kwargs": {"endpoint_url": "http://127.0.0.1:9000"}}\'; credentials can also come from '
        "the filesystem's environment variables (default: none)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hsk",
        description="Extract a teacher's knowledge once into a Zarr cache; train students from it without the teacher.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log library details (default: off)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "finetune",
        help="fine-tune a teacher on a task",
        description="Fine-tune a classifier on a task's labels with cross-entropy and save it with save_pretrained.",
    )
    p.add_argument("--model", default="minilm-l6", help=f"{TEACHER_HELP} (default: %(default)s)")
    p.add_argument("--out", required=True, help="directory to save the fine-tuned model to (required)")
    _add_data(p, "train")
    p.add_argument("--epochs", type=float, default=3.0, help="epochs (default: %(default)s)")
    p.add_argument("--lr", type=float, default=5e-5, help="peak learning rate (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=32, help="examples per step (default: %(default)s)")
    p.add_argument(
        "--seed", type=int, default=0, help="seed for the head init, order and dropout (default: %(default)s)"
    )
    _precision(p, what="training")
    _device(p, "the model trains")

    p = sub.add_parser(
        "extract",
        help="run the teacher once and write its knowledge to a cache",
        description="Run the teacher (eval mode, no dropout, no autograd) over a split and write the "
        "selected knowledge to a Zarr v3 cache. Rerunning resumes an interrupted extraction.",
    )
    p.add_argument("--teacher", required=True, help=f"{TEACHER_HELP} (required)")
    p.add_argument("--out", required=True, help="cache directory or fsspec URL such as s3://bucket/cache (required)")
    _storage(p)
    _add_data(p, "train")
    _add_spec(p)
    p.add_argument("--batch-size", type=int, default=32, help="teacher batch size (default: %(default)s)")
    _precision(p, what="the teacher")
    p.add_argument(
        "--shard-examples",
        type=int,
        default=None,
        help="examples per shard, a power of two (default: sized to ~32 MiB)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing cache with another spec, teacher or data (default: refuse)",
    )
    _device(p, "the teacher runs (under torchrun: cuda means each rank's cuda:LOCAL_RANK)")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="predict the stored bytes and exit, writing nothing; the "
        "teacher runs only on a 64-example sample, and only with a compressing --codec (default: off)",
    )

    p = sub.add_parser(
        "train",
        help="train a student from a cache (or online, as a baseline)",
        description="Distil a student: stage 1 hidden-state MSE on mapped layers at cached tokens, "
        "stage 2 soft cross-entropy on teacher logits. --from-cache never loads the teacher; the data and "
        "knowledge options apply to --online only (a cache already fixes them).",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--from-cache",
        dest="cache",
        help="a complete cache made by hsk extract, a directory or fsspec URL (required: this or --online)",
    )
    src.add_argument(
        "--online",
        dest="online_teacher",
        help=f"run this teacher at every step instead; {TEACHER_HELP} (required: this or --from-cache)",
    )
    p.add_argument("--out", required=True, help="directory to save the student to (required)")
    _storage(p)
    _add_data(p, "train")
    _add_spec(p)
    g = p.add_argument_group("student")
    g.add_argument("--student-layers", type=int, default=4, help="transformer layers L_S (default: %(default)s)")
    g.add_argument(
        "--student-hidden",
        type=int,
        default=312,
        help="hidden width; ignored with --student-from (default: %(default)s)",
    )
    g.add_argument("--student-heads", type=int, default=12, help="attention heads (default: %(default)s)")
    g.add_argument("--student-ffn", type=int, default=1200, help="feed-forward width (default: %(default)s)")
    g.add_argument(
        "--student-from",
        default=None,
        help="initialize from this teacher's weights, DistilBERT-style "
        "(copies embeddings and --init-layers; default: random init from the shape options)",
    )
    g.add_argument(
        "--init-layers",
        default=None,
        help="comma list of teacher layers (1-based) to copy with "
        "--student-from (default: round(l·L/L_S) for l = 1..L_S)",
    )
    g.add_argument(
        "--student-pretrained", default=None, help="load this saved classifier as the student (default: none)"
    )
    g.add_argument(
        "--student-family",
        default=None,
        choices=FAMILIES,
        help="build the student (from --student-layers "
        "etc.) as this encoder family instead of the teacher's; it shares the teacher's tokenizer "
        "(default: the teacher's family)",
    )
    g = p.add_argument_group("optimization")
    g.add_argument(
        "--hidden-epochs", type=float, default=3.0, help="hidden-state stage epochs; 0 skips it (default: %(default)s)"
    )
    g.add_argument(
        "--hidden-lr", type=float, default=1e-4, help="hidden-state stage learning rate (default: %(default)s)"
    )
    g.add_argument(
        "--hidden-batch-size", type=int, default=32, help="hidden-state stage batch size (default: %(default)s)"
    )
    g.add_argument(
        "--pred-epochs", type=float, default=3.0, help="prediction stage epochs; 0 skips it (default: %(default)s)"
    )
    g.add_argument("--pred-lr", type=float, default=5e-5, help="prediction stage learning rate (default: %(default)s)")
    g.add_argument("--pred-batch-size", type=int, default=32, help="prediction stage batch size (default: %(default)s)")
    g.add_argument(
        "--warmup-ratio", type=float, default=0.1, help="linear warmup fraction of each stage (default: %(default)s)"
    )
    g.add_argument(
        "--layer-map",
        default="uniform",
        help="hidden-state layer map: uniform or uniform:L_top "
        "(g(l) = round(l·L_top/L_S), L_top = teacher depth by default; pairs over cached layers) or "
        "student:teacher pairs like 1:2,2:4,3:6 (default: %(default)s)",
    )
    g.add_argument(
        "--attention-map", default="uniform", help="the same for cached attention layers (default: %(default)s)"
    )
    g.add_argument(
        "--keep-top-pairs",
        type=int,
        default=None,
        help="keep only the k mapped pairs with the highest student layers (default: all)",
    )
    g.add_argument(
        "--width-target",
        default="zero",
        choices=("zero", "ignore"),
        help="dropped dimensions of kept tokens: compared with zero (as the study) or ignored (default: %(default)s)",
    )
    g.add_argument(
        "--attention-loss",
        default="kl",
        choices=("kl", "mse"),
        help="attention loss: KL (MiniLM) or MSE (TinyBERT) (default: %(default)s)",
    )
    g.add_argument(
        "--head-map",
        default="strict",
        choices=("strict", "mean", "relation"),
        help="student and teacher "
        "head counts: strict (must match), mean (compare head-averaged maps), relation (value relation: "
        "split the student's values into the teacher's heads) (default: %(default)s)",
    )
    g.add_argument(
        "--temperature",
        type=float,
        default=1.0,
        help="softmax temperature τ of the prediction loss (default: %(default)s)",
    )
    g.add_argument(
        "--hard-label-weight",
        type=float,
        default=0.0,
        help="weight of gold-label cross-entropy added to the prediction loss (default: %(default)s)",
    )
    g.add_argument("--seed", type=int, default=0, help="seed for init, order and dropout (default: %(default)s)")
    _precision(p, what="the student")
    _precision(p, "--teacher-precision", "the online teacher")
    g = p.add_argument_group("performance")
    g.add_argument(
        "--device",
        default="cpu",
        help="where the student (and an online teacher) run: cpu, cuda or cuda:N; under torchrun, cuda "
        "means each rank's cuda:LOCAL_RANK (default: %(default)s)",
    )
    g.add_argument(
        "--num-workers",
        type=int,
        default=1,
        help="batches assembled ahead in a background thread; 0 assembles them inline (default: %(default)s)",
    )
    g.add_argument(
        "--memory-budget-gb",
        type=float,
        default=4.0,
        help="cache knowledge held in memory: the whole "
        "cache if it fits (full shuffle), else a window of shards (shard-window shuffle) (default: %(default)s)",
    )
    g = p.add_argument_group("checkpoints and dev evaluation")
    g.add_argument(
        "--save-every",
        default=DEFAULT_SAVE_EVERY,
        help="checkpoint interval: optimizer steps (500), a duration (90s, "
        "5min, 2h), or 0 for stage ends only; a checkpoint is also written at every stage end. Rerunning the "
        "same command on the same --out resumes from the latest one (default: %(default)s)",
    )
    g.add_argument(
        "--resume",
        action="store_true",
        help="require a checkpoint in --out to resume from (default: "
        "resume when there is one, start when there is none)",
    )
    g.add_argument(
        "--overwrite",
        action="store_true",
        help="discard a run (of any config) already in --out and start over (default: refuse another config)",
    )
    g.add_argument(
        "--eval-data",
        default=None,
        help="evaluate on this data source during training, logging accuracy "
        "and MCC to <out>/metrics.jsonl and keeping the best model of the last stage in <out>/best "
        "(default: no evaluation)",
    )
    g.add_argument("--eval-split", default="dev", help="split of --eval-data (default: %(default)s)")
    g.add_argument(
        "--eval-every",
        type=int,
        default=0,
        help="evaluate every N optimizer steps as well as at stage ends; 0: at stage ends only (default: %(default)s)",
    )
    g.add_argument(
        "--eval-metric",
        default="accuracy",
        choices=EVAL_METRICS,
        help="the metric that picks the best model (default: %(default)s)",
    )

    p = sub.add_parser(
        "eval",
        help="accuracy and Matthews correlation on a split",
        description="Evaluate a saved classifier: accuracy and Matthews correlation (CoLA's metric).",
    )
    p.add_argument("model", help="a saved model directory")
    _add_data(p, "dev")
    p.add_argument("--batch-size", type=int, default=64, help="examples per forward (default: %(default)s)")
    _precision(p, what="the model")
    _device(p, "the model runs")
    p.add_argument("--json", action="store_true", help="print the metrics as one JSON line (default: text)")

    p = sub.add_parser(
        "info",
        help="print a cache's manifest and size",
        description="Print the manifest, stored "
        "bytes, bytes per example, the ratio to the full float32 hidden states, and completeness.",
    )
    p.add_argument("cache", help="a cache directory or fsspec URL")
    _storage(p)
    p.add_argument("--json", action="store_true", help="print one JSON object (default: text)")

    p = sub.add_parser(
        "verify",
        help="check every shard of a cache (missing files, sizes, checksums)",
        description="Check every committed shard file of a cache against the size and crc32c recorded "
        "when it was written, and the small global arrays against their chunk checksums. Prints a table "
        "of bad shards; exit status 1 when any is bad or the cache is incomplete. Rerunning the hsk "
        "extract command that made the cache re-extracts exactly the bad shards.",
    )
    p.add_argument("cache", help="a cache directory or fsspec URL")
    _storage(p)
    p.add_argument("--json", action="store_true", help="print one JSON object (default: text)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(name)s: %(message)s", force=True
    )
    if not args.verbose:
        quiet_libraries()
    try:
        return COMMANDS[args.command](args)
    except HskError as err:
        print(f"hsk: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as stop:
        detail = f"{stop}; a checkpoint was written" if str(stop) else "interrupted"
        print(f"hsk: {detail} (rerun the same command to resume)", file=sys.stderr)
        return 128 + getattr(stop, "signum", 2)  # the shell's convention: 130 for SIGINT, 143 for SIGTERM
    finally:
        if args.command in ("extract", "train") and "torch.distributed" in sys.modules:
            from hsk_cache import distributed

            distributed.shutdown()


def _finetune(a) -> int:
    from hsk_cache import finetune

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
    from hsk_cache import extract

    config = extract.ExtractConfig(
        teacher=a.teacher,
        data=_data_config(a),
        out=a.out,
        spec=_spec(a),
        batch_size=a.batch_size,
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
    r = extract.run(config, _bar if main_rank else None)
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


def _verify(a) -> int:
    from dataclasses import asdict

    from hsk_cache.store import verify

    options = parse_storage_options(a.storage_options)
    r = verify.verify(
        a.cache, lambda description, total, initial: _bar(description, total, initial, unit="shard"), options
    )
    if a.json:
        print(json.dumps({**asdict(r), "bad_shards": r.bad_shards, "ok": r.ok}))
        return 0 if r.ok else 1
    if r.problems:
        print(verify.table(r))
    state = "complete" if r.complete else f"incomplete ({r.committed}/{r.num_shards} shards extracted)"
    bad_globals = sum(p.shard is None for p in r.problems)
    verdict = "ok" if not r.problems else f"{len(r.bad_shards)} bad shards, {bad_globals} bad global arrays"
    print(f"verify: {verdict}; {r.committed} shards checked ({_size(r.checked_bytes)}), {state}, {r.elapsed_s:.1f} s")
    if r.problems:
        from hsk_cache.store.reader import CacheReader

        print(f"repair: {CacheReader(a.cache, options).repair_command}")
    return 0 if r.ok else 1


def _train(a) -> int:
    from hsk_cache import train

    if a.student_from and a.student_pretrained:
        raise ConfigError("give at most one of --student-from and --student-pretrained")
    init_layers = _int_list(a.init_layers, "--init-layers") if a.init_layers else None
    if a.student_pretrained:
        student = train.StudentConfig(kind="pretrained", path=a.student_pretrained, family=a.student_family)
    elif a.student_from:
        student = train.StudentConfig(
            kind="teacher-layers",
            path=a.student_from,
            layers=a.student_layers,
            init_layers=init_layers,
            family=a.student_family,
        )
    else:
        student = train.StudentConfig(
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
    if a.eval_data:
        evaluation = train.EvalConfig(
            data=a.eval_data,
            split=a.eval_split,
            text_columns=_columns(a),
            label_column=a.label_column,
            every=a.eval_every,
            metric=a.eval_metric,
        )
    config = train.TrainConfig(
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
    r = _with_stop_handlers(lambda: train.run(config, _bar if main_rank else None))
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
    """Run ``fn`` with SIGTERM and SIGINT asking training to checkpoint and stop (session.request_stop)."""
    import signal

    from hsk_cache import session

    previous = {sig: signal.signal(sig, session.request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        return fn()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _eval(a) -> int:
    from hsk_cache import evaluate

    check_device(a.device)
    check_precision(a.precision, a.device)
    r = evaluate.run(a.model, _data_config(a), a.batch_size, a.precision, _bar, device=a.device)
    if a.json:
        print(json.dumps({"model": a.model, "accuracy": r.accuracy, "mcc": r.mcc, "examples": r.examples}))
    else:
        print(
            f"eval: accuracy {r.accuracy:.4f}, mcc {r.mcc:.4f} on {r.examples} {a.split} examples, {r.elapsed_s:.1f} s"
        )
    return 0


def _info(a) -> int:
    from hsk_cache.info import cache_info

    info = cache_info(a.cache, parse_storage_options(a.storage_options))
    if a.json:
        print(json.dumps(info, indent=2))
        return 0
    m = info["manifest"]
    print(json.dumps(m, indent=2, default=str))
    print(
        f"stored: {_size(info['stored_bytes'])} ({_size(info['bytes_per_example'])}/example) for "
        f"{m['data']['num_examples']} examples; full float32 hidden states would be "
        f"{_size(info['full_hidden_bytes_per_example'])}/example: {info['ratio_to_full']:.1f}× smaller"
    )
    print(
        f"complete: {'yes' if info['complete'] else 'no'} "
        f"({info['committed_shards']}/{m['layout']['num_shards']} shards)"
    )
    return 0


def _int_list(text: str, option: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise ConfigError(f"{option} {text!r}: use a comma list of integers like 2,4,6") from None


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n:.0f} B"
        n /= 1000
    return f"{n:.1f} GB"


COMMANDS = {
    "finetune": _finetune,
    "extract": _extract,
    "train": _train,
    "eval": _eval,
    "info": _info,
    "verify": _verify,
}

if __name__ == "__main__":
    sys.exit(main())
