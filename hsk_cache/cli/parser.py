"""The ``hsk`` command line: every subcommand's options (``build_parser``)."""

from __future__ import annotations

import argparse

from hsk_cache.cli.options import TEACHER_HELP, _add_data, _add_spec, _device, _precision, _preset, _recipe, _storage
from hsk_cache.config.run import DEFAULT_SAVE_EVERY, EVAL_METRICS
from hsk_cache.models.families import FAMILIES


def build_parser() -> argparse.ArgumentParser:
    """The ``hsk`` argument parser: ``-v/--verbose`` and one subcommand (finetune, extract, train,
    eval, info, verify, augment), its name in ``args.command``."""
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
    _recipe(p)
    _add_data(p, "train")
    _add_spec(p)
    p.add_argument("--batch-size", type=int, default=32, help="teacher batch size (default: %(default)s)")
    p.add_argument(
        "--sort-by-length",
        action="store_true",
        help="batch each shard's examples longest first, so a batch pads to its own lengths (short "
        "texts: ~2-3x fewer teacher tokens); stored order kept, floats may differ in the last bits "
        "(default: stored order)",
    )
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
    _recipe(p)
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
    _preset(g, "--hidden-lr", 1e-4, "hidden-state stage (a corpus cache's general stage) learning rate", type=float)
    g.add_argument(
        "--hidden-batch-size", type=int, default=32, help="hidden-state stage batch size (default: %(default)s)"
    )
    g.add_argument(
        "--pred-epochs", type=float, default=3.0, help="prediction stage epochs; 0 skips it (default: %(default)s)"
    )
    g.add_argument("--pred-lr", type=float, default=5e-5, help="prediction stage learning rate (default: %(default)s)")
    g.add_argument("--pred-batch-size", type=int, default=32, help="prediction stage batch size (default: %(default)s)")
    _preset(g, "--warmup-ratio", 0.1, "linear warmup fraction of each stage", type=float)
    _preset(
        g,
        "--layer-map",
        "uniform",
        "hidden-state layer map: uniform or uniform:L_top "
        "(g(l) = round(l·L_top/L_S), L_top = teacher depth by default; pairs over cached layers) or "
        "student:teacher pairs like 1:2,2:4,3:6",
    )
    _preset(g, "--attention-map", "uniform", "the same for cached attention layers")
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
    _preset(g, "--attention-loss", "kl", "attention loss: KL (MiniLM) or MSE (TinyBERT)", choices=("kl", "mse"))
    _preset(
        g, "--hidden-loss", "mse", "hidden-state loss: MSE (TinyBERT) or cosine (DistilBERT)", choices=("mse", "cosine")
    )
    _preset(
        g,
        "--head-map",
        "strict",
        "student and teacher head counts: strict (must match), mean (compare head-averaged maps), "
        "relation (value relation: split the student's values into the teacher's heads)",
        choices=("strict", "mean", "relation"),
    )
    _preset(g, "--temperature", 1.0, "softmax temperature τ of the prediction loss", type=float)
    _preset(
        g,
        "--term-weights",
        "",
        "weights of loss terms as term=weight pairs, e.g. mlm_soft=5,mlm=2,hidden_states=1 (others 1)",
    )
    _preset(
        g,
        "--schedule",
        "joint",
        "general distillation: joint (every term at once) or progressive (MobileBERT: one stage per "
        "student layer, the others frozen)",
        choices=("joint", "progressive"),
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
        "and MCC to <out>/metrics.jsonl and keeping the best model of the last stage in <out>/best; for "
        "general distillation from a cache, a cache of held-out text extracted with the same spec and "
        "teacher (online: a corpus), logging the dev distillation loss (default: no evaluation)",
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
        default=None,
        choices=EVAL_METRICS,
        help="the metric that picks the best model, one the task reports: accuracy or mcc (classification), "
        "pearson or spearman (regression), f1 (token classification, QA), exact_match (QA), micro_f1 or "
        "macro_f1 (multi-label); loss (the dev distillation loss, lowest best) for general distillation "
        "(default: the task's first; loss for general distillation)",
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

    _add_augment(sub)

    p = sub.add_parser(
        "verify",
        help="check every shard of a cache (missing files, sizes, checksums)",
        description="Check every committed shard file of a cache against the size and crc32c recorded "
        "when it was written, the small global arrays against their chunk checksums, the manifest against "
        "its sha256 and the tokenizer's files against their records. Prints a table of problems; exit "
        "status 1 when any is found or the cache is incomplete. Rerunning the hsk extract command that made "
        "the cache re-extracts exactly the bad shards. --against-teacher also recomputes a seeded sample of "
        "examples with the live teacher and compares every stored kind within its dtype's bound.",
    )
    p.add_argument("cache", help="a cache directory or fsspec URL")
    _storage(p)
    p.add_argument("--json", action="store_true", help="print one JSON object (default: text)")
    p.add_argument(
        "--against-teacher",
        default=None,
        metavar="TEACHER",
        help="recompute a sample with this teacher (a saved model or name) and compare (default: off)",
    )
    p.add_argument("--sample", type=int, default=64, help="examples recomputed (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sample (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=16, help="examples per teacher forward (default: %(default)s)")
    p.add_argument("--device", default="cpu", help="teacher device: cpu, cuda, cuda:N (default: %(default)s)")
    return parser


def _add_augment(sub) -> None:
    p = sub.add_parser(
        "augment",
        help="expand a task's data with TinyBERT's augmentation",
        description="TinyBERT's data augmentation (Jiao et al., 2020, Algorithm 1): each replaceable word "
        "(alphabetic, not a stop word) is replaced with probability --p by one of --candidates candidates: a "
        "masked LM's top predictions for words of one word piece (--mlm), nearest neighbours in a word-embedding "
        "space for the others (--vectors, else the teacher's input embeddings in place of GloVe). --copies tries "
        "per example; duplicates are dropped and the original is kept. Writes Parquet shards plus the source's "
        "dev split into --out, a data source for extract, train --online and finetune; rerun the same command "
        "to resume.",
    )
    p.add_argument("--out", required=True, help="directory for the augmented data (required)")
    _add_data(p, "train")
    p.add_argument("--copies", type=int, default=20, help="variants tried per example (default: %(default)s)")
    p.add_argument("--p", type=float, default=0.4, help="probability of replacing a word (default: %(default)s)")
    p.add_argument("--candidates", type=int, default=15, help="candidates per word, K (default: %(default)s)")
    p.add_argument(
        "--mlm",
        default=None,
        metavar="DIR_OR_NAME",
        help="masked language model for words of one word piece (default: none: every word takes the neighbour path)",
    )
    p.add_argument(
        "--vectors",
        default=None,
        metavar="FILE",
        help="GloVe or word2vec text file for nearest neighbours (default: the teacher's input embeddings)",
    )
    p.add_argument(
        "--teacher",
        default="minilm-l6",
        help="model whose input embeddings give neighbours without --vectors, and whose tokenizer splits "
        f"words without --mlm; {TEACHER_HELP} (default: %(default)s)",
    )
    p.add_argument(
        "--pair-side",
        default="both",
        choices=("both", "first", "second"),
        help="for sentence pairs: augment both texts of each variant, or only one (default: %(default)s)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the replacements (default: %(default)s)")
    p.add_argument(
        "--shard-examples", type=int, default=1000, help="source examples per output shard (default: %(default)s)"
    )
    p.add_argument("--batch-size", type=int, default=64, help="masked sentences per MLM forward (default: %(default)s)")
    _precision(p, what="the MLM's forward passes")
    _device(p, "the MLM runs")
    p.add_argument(
        "--overwrite", action="store_true", help="replace an existing augmentation in --out (default: resume it)"
    )
