"""Option groups several ``hsk`` subcommands share: data, knowledge spec, precision, device, storage."""

from __future__ import annotations

import argparse

TEACHER_HELP = "teacher: a saved model directory, a hub name, or minilm-l6 (the bundled all-MiniLM-L6-v2)"
PRESET_DEFAULTS: dict[str, object] = {}  # dest → default of options a --recipe presets (their argparse default is None)


def _preset(g, flag: str, default, help: str, **kw) -> None:
    """An option a ``--recipe`` may preset: argparse default None, resolved by ``commands._presets``."""
    dest = kw.pop("dest", flag.lstrip("-").replace("-", "_"))
    PRESET_DEFAULTS[dest] = default
    g.add_argument(flag, dest=dest, default=None, help=f"{help} (default: {default}, or the --recipe's)", **kw)


def _recipe(p: argparse.ArgumentParser) -> None:
    from hsk_cache.knowledge.recipes import RECIPES

    p.add_argument(
        "--recipe",
        default=None,
        choices=tuple(RECIPES),
        help="general distillation preset (docs/general.md): its knowledge, loss terms and weights; "
        "explicit options override it (default: none)",
    )


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
    g.add_argument(
        "--label-column",
        default=None,
        help="label column: class, score or tags (default: the source's own, else 'label'; tags: 'tags' or 'ner_tags')",
    )
    g.add_argument(
        "--task",
        default=None,
        help="the task type: classification, regression, token_classification, multi_label_classification or "
        "question_answering (default: inferred from the data: scores are regression, a CoNLL file or tokens/tags "
        "columns token classification, a list of labels per text multi-label, a SQuAD .json file question "
        "answering; eval: the model's own head)",
    )
    g.add_argument(
        "--data-format",
        default=None,
        help="read --data in this format whatever its extension: csv, tsv, json, parquet, conll, squad or text "
        "(e.g. tsv for the VADER *_GroundTruth.txt files, conll for token<TAB>tag files; default: from the "
        "extension)",
    )
    g.add_argument(
        "--holdout",
        type=float,
        default=None,
        help="hold out this fraction of a source without a dev split as its dev split (seed 42): --split train "
        "is the rest, --split dev the held-out part (default: none)",
    )
    g.add_argument(
        "--doc-stride",
        type=int,
        default=None,
        help="question answering: tokens shared by consecutive windows of a context longer than --max-length "
        "(default: a quarter of --max-length)",
    )
    g.add_argument(
        "--max-length",
        type=int,
        default=128,
        help="truncate to this many tokens; a corpus is packed into sequences of it (default: %(default)s)",
    )
    g.add_argument("--limit", type=int, default=None, help="use only the first N examples (default: all)")
    g.add_argument(
        "--corpus",
        action="store_true",
        help="the data is unlabeled text for general distillation, packed into --max-length sequences "
        "(automatic for wikitext-2 and .txt/.txt.gz files; give it for jsonl/parquet/csv/datasets dirs "
        "with --text-columns) (default: off)",
    )


def _add_spec(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("knowledge to extract")
    _preset(
        g,
        "--layers",
        "last",
        "depth: hidden-state layers, 0 = embedding output: last, all, "
        "uniform:K (round(l·L/K), l=1..K), top:K, bottom:K, or a comma list like 2,4,6",
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
    _preset(
        g,
        "--knowledge",
        "hidden_states,logits",
        "comma list of hidden_states, attention_probs, value_relation, attention_relations (MiniLMv2), "
        "logits, mlm (DistilBERT's masked-LM soft targets)",
    )
    _preset(
        g,
        "--attention-layers",
        "last",
        "teacher layers (1..L) whose attention rows of the kept query tokens are stored: last, all, top:K, or a list",
    )
    _preset(
        g,
        "--value-relation-layer",
        "last",
        "teacher layer (1..L) of the MiniLM value relation softmax(V·Vᵀ/√d_head)",
    )
    g.add_argument(
        "--relation-layer",
        type=int,
        default=None,
        help="attention_relations: the teacher layer (1..L) of the MiniLMv2 Q-Q/K-K/V-V relations (default: last)",
    )
    g.add_argument(
        "--relation-heads",
        type=int,
        default=None,
        help="attention_relations: relation heads R; student and teacher widths must be multiples "
        "(default: the teacher's attention heads)",
    )
    g.add_argument(
        "--mlm-probability",
        type=float,
        default=None,
        help="mlm: fraction of real tokens masked at extraction, 80%% [MASK] / 10%% random / 10%% kept, "
        "seeded per sequence by --selection-seed (default: 0.15)",
    )
    g.add_argument(
        "--mlm-topk",
        type=int,
        default=None,
        help="mlm: teacher masked-LM probabilities kept per masked token, plus the mass of the rest (default: 16)",
    )
    g.add_argument(
        "--mlm-temperature",
        type=float,
        default=None,
        help="mlm: temperature τ of the stored soft targets (default: 2.0, DistilBERT's)",
    )
    g.add_argument(
        "--key-topk",
        type=int,
        default=0,
        help="sparse rows: keep each attention_probs / value_relation / attention_relations row as its K "
        "largest probabilities, their key positions and the remaining mass (loss: KL of the kept keys "
        "plus a rest bin); 0 keeps rows over all keys (default: %(default)s)",
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
        help="stored precision: float32, float16, bfloat16, or int8 or float8_e4m3 (FP8 E4M3, 1 byte) with a "
        "per-row absmax scale (default: %(default)s)",
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
