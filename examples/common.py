"""What the example loops share (imported by examples/*.py, which run as scripts beside it): the
command-line options of the student and the loss, and the student and ``DistillationLoss`` they
distil with."""

from __future__ import annotations

import argparse

import torch
from transformers import AutoModelForSequenceClassification

from hsk_cache import DistillationLoss, without_attention_dropout
from hsk_cache.models.students import student_from_config


def add_options(parser: argparse.ArgumentParser, epochs_type: type = int, loss_options: bool = True) -> None:
    """The options every example takes (cache, out, the student, epochs, batch size, lr, seed)
    and, with ``loss_options``, the loss's (warmup, temperature, terms) and ``--hsk-order``."""
    parser.add_argument("--cache", required=True, help="a complete cache made by hsk extract")
    parser.add_argument("--out", required=True, help="where the student (and losses.json) are saved")
    parser.add_argument(
        "--student", default=None, help="a saved classifier to distil into (default: build one of the teacher's family)"
    )
    parser.add_argument("--layers", type=int, default=2, help="layers of a built student (default: %(default)s)")
    parser.add_argument("--hidden", type=int, default=128, help="width of a built student (default: %(default)s)")
    parser.add_argument(
        "--heads", type=int, default=4, help="attention heads of a built student (default: %(default)s)"
    )
    parser.add_argument("--epochs", type=epochs_type, default=3, help="passes over the cache (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=32, help="examples per step (default: %(default)s)")
    parser.add_argument("--lr", type=float, default=1e-4, help="AdamW's peak learning rate (default: %(default)s)")
    parser.add_argument(
        "--seed", type=int, default=0, help="seeds the student, W_h, dropout and the order (default: %(default)s)"
    )
    if not loss_options:
        return
    parser.add_argument(
        "--warmup-ratio",
        type=float,
        default=0.1,
        help="fraction of the steps of linear warmup, then linear decay (default: %(default)s)",
    )
    parser.add_argument(
        "--temperature", type=float, default=1.0, help="softmax temperature of the logits term (default: %(default)s)"
    )
    parser.add_argument(
        "--terms",
        default=None,
        help="comma list of loss terms (hidden_states, attention_probs, "
        "value_relation, logits; default: every kind the cache holds)",
    )
    parser.add_argument(
        "--hsk-order", action="store_true", help="batches in hsk train's order for --seed (default: a seeded shuffle)"
    )


def build_student(cache, args):
    """``--student`` (eager attention), or a fresh student of the teacher's family built from the
    cache's teacher config with ``--layers``, ``--hidden``, ``--heads`` (FFN 4 × hidden)."""
    if args.student:
        return AutoModelForSequenceClassification.from_pretrained(args.student, attn_implementation="eager")
    # a fresh student of the teacher's family (each family names its options its own way)
    return student_from_config(
        cache.teacher_config,
        len(cache.label_names),
        args.layers,
        args.hidden,
        args.heads,
        4 * args.hidden,
        attention=True,
    )


def student_and_loss(cache, args):
    """(student, ``DistillationLoss``) after seeding with ``--seed``: attention dropout off when
    attention is distilled (undropped rows are compared), the loss over ``--terms`` at
    ``--temperature`` when the example takes them."""
    torch.manual_seed(args.seed)
    student = build_student(cache, args)
    if "attention_probs" in cache.knowledge:
        without_attention_dropout(student)
    terms = getattr(args, "terms", None)
    options = {"terms": terms.split(",") if terms else None, "temperature": getattr(args, "temperature", 1.0)}
    return student, DistillationLoss(cache.manifest, student.config, **options)
