"""Option groups several ``hsk`` subcommands share: data, knowledge spec, precision, device, storage."""

from __future__ import annotations

import argparse

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
