"""Sparse distribution rows: what keeping a teacher row's top-k keys and its rest mass costs.

    python -m benchmarks.sparse_rows [--sequences 64] [--batch 16] [--quick] [--out DIR]

Real teacher rows: the bundled MiniLM-L6 teacher (6 × 384, 12 heads; fp32, eval mode, no grad)
over the first 64 WikiText-2 train sequences packed to T = 128 tokens (packing leaves no padding;
padded keys and queries would be masked), batch 16. Three row kinds of the teacher's last layer,
[B, 12, T, T] with a query row at every real token: the attention probabilities, the value
relation (``self_attention_relation`` of the value projection, 12 heads) and the MiniLMv2 Q-Q
relation (of the query projection, 12 relation heads). Two students q of the same shape: a
randomly initialised 4 × 312 BERT (12 heads, FFN 1200, the teacher's vocabulary, eager
attention, seed 0; its last layer), the start of training; the teacher's own layer L − 1, a
student close to the teacher. Student rows are q = softmax(z) of a leaf z = log q (−1e4 where
q = 0; padded keys masked), so gradients are taken with respect to pre-softmax scores.

For each k: the teacher's mean rest mass r over valid rows and heads; the dense loss
``distribution_kl`` and the sparse loss ``sparse_distribution_kl`` (teacher rows ``sparsify``-ed,
float32 values: the truncation alone, no float16 quantization), means over batches; the relative
gap (dense − sparse) / dense; the cosine of the two losses' gradients in z, over the whole batch
(mean over batches) and per row (mean over valid rows and heads), in float64; the bytes per stored row
(sparse 4k + 4: float16 values, int16 keys, a float32 rest; dense 2T: float16) and dense ÷
sparse. The identity dense − sparse ≥ 0 is checked on every batch (its minimum is reported).
``--quick``: 4 sequences, T = 64, batch 2, k in (4, 16): a smoke run. Results go to
``<out>/sparse_rows.md`` and ``.json`` (default ``benchmarks/results``), with the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks.common import RESULTS, machine
from hsk_cache.cli.progress import quiet_libraries
from hsk_cache.config.run import DataConfig
from hsk_cache.data.corpus import load_corpus
from hsk_cache.knowledge.losses import distribution_kl, sparse_distribution_kl
from hsk_cache.knowledge.relations import self_attention_relation
from hsk_cache.knowledge.sparse_rows import sparsify
from hsk_cache.models import hub
from hsk_cache.models.hooks import capture_projections

KINDS = ("attention_probs", "value_relation", "qq_relation")
STUDENTS = ("random 4x312", "teacher layer L-1")
HEADS = 12  # attention heads of both models, and the Q-Q relation heads


@dataclass(frozen=True)
class Setup:
    """One benchmark mode: sequences, their length T, the batch size and the k values."""

    sequences: int
    length: int
    batch: int
    ks: tuple[int, ...]


FULL = Setup(sequences=64, length=128, batch=16, ks=(1, 2, 4, 8, 16, 32, 64))
QUICK = Setup(sequences=4, length=64, batch=2, ks=(4, 16))


def batches(tokenizer, setup: Setup) -> list[dict]:
    """WikiText-2 train packed to ``setup.length``, in batches: input_ids, token_type_ids and
    attention_mask [B, T] int64 (right-padded with 0 where a sequence is shorter)."""
    data = DataConfig(source="wikitext-2", split="train", max_length=setup.length, limit=setup.sequences)
    corpus = load_corpus(data, tokenizer, setup.length)
    out = []
    for start in range(0, len(corpus), setup.batch):
        rows = corpus[start : start + setup.batch]
        width = max(len(ids) for ids in rows["input_ids"])
        batch = {key: torch.zeros(len(rows["input_ids"]), width, dtype=torch.long) for key in ("input_ids", "mask")}
        batch["token_type_ids"] = torch.zeros_like(batch["input_ids"])
        for i, ids in enumerate(rows["input_ids"]):
            batch["input_ids"][i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            batch["mask"][i, : len(ids)] = 1
        batch["attention_mask"] = batch.pop("mask")
        out.append(batch)
    return out


def layer_rows(model, batch: dict, layers: tuple[int, ...]) -> dict[int, dict[str, torch.Tensor]]:
    """The three row kinds of ``model``'s layers (1-based) on ``batch``, no grad: layer → kind →
    [B, 12, T, T] float32 probability rows (0 at padded keys)."""
    wanted = {(projection, layer) for layer in layers for projection in ("query", "value")}
    mask = batch["attention_mask"]
    with torch.no_grad(), capture_projections(model, wanted) as projections:
        out = model(**batch, output_attentions=True)
    return {
        layer: {
            "attention_probs": out.attentions[layer - 1].float(),
            "value_relation": self_attention_relation(projections[("value", layer)], HEADS, mask),
            "qq_relation": self_attention_relation(projections[("query", layer)], HEADS, mask),
        }
        for layer in layers
    }


def random_student(teacher):
    """A 4 × 312 BERT (12 heads, FFN 1200) with the teacher's vocabulary, positions and token
    types, random weights (seed 0), eager attention, eval mode."""
    from transformers import BertConfig, BertModel

    t = teacher.config
    config = BertConfig(
        vocab_size=t.vocab_size,
        max_position_embeddings=t.max_position_embeddings,
        type_vocab_size=t.type_vocab_size,
        pad_token_id=t.pad_token_id,
        hidden_size=312,
        num_hidden_layers=4,
        num_attention_heads=HEADS,
        intermediate_size=1200,
        attn_implementation="eager",
    )
    torch.manual_seed(0)
    return BertModel(config).eval()


def compare(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor, ks: tuple[int, ...]) -> dict:
    """One batch of one row kind and student: the dense and, per k, the sparse loss and gradient.

    Args: student, teacher: [B, H, T, T] float32 rows. mask: [B, T] int (1 = real token); every
        real token's query row is valid. ks: the k values.
    Returns: {"dense": float, "rows": int (valid rows × heads), "k": {k: {"sparse", "rest_sum",
        "cosine", "row_cosine_sum"}}} (sums over valid rows and heads, the rest per batch).
    """
    valid = mask.bool()
    keys = valid[:, None, None, :]
    z = torch.where(student > 0, student.clamp(min=1e-38).log(), torch.full_like(student, -1e4))
    z = z.detach().requires_grad_(True)
    weight = valid[:, None, :].expand(student.shape[:3])

    def loss_and_grad(loss_fn, target):
        loss = loss_fn(torch.softmax(z.masked_fill(~keys, -torch.inf), -1), target, valid)
        (grad,) = torch.autograd.grad(loss, z)
        return float(loss.detach()), grad

    dense, dense_grad = loss_and_grad(distribution_kl, teacher)
    dense_grad = dense_grad.double()
    out = {"dense": dense, "rows": int(weight.sum()), "k": {}}
    for k in ks:
        rows = sparsify(teacher, k)
        sparse, grad = loss_and_grad(sparse_distribution_kl, rows)
        grad = grad.double()  # a float32 cosine of 3M-element vectors drifts past 1 (seen: 1.0004)
        row_cosine = F.cosine_similarity(dense_grad, grad, dim=-1, eps=1e-30)
        out["k"][k] = {
            "sparse": sparse,
            "rest_sum": float((rows.rest * weight).sum()),
            "cosine": float(F.cosine_similarity(dense_grad.flatten(), grad.flatten(), dim=0, eps=1e-30)),
            "row_cosine_sum": float((row_cosine * weight).sum()),
        }
    return out


def summarize(parts: list[dict], ks: tuple[int, ...], length: int) -> dict:
    """Per-batch ``compare`` results → the mean dense loss and one entry per k (see the docstring)."""
    rows = sum(p["rows"] for p in parts)
    dense = sum(p["dense"] for p in parts) / len(parts)
    entries = []
    for k in ks:
        sparse = sum(p["k"][k]["sparse"] for p in parts) / len(parts)
        sparse_bytes, dense_bytes = 4 * k + 4, 2 * length
        entries.append(
            {
                "k": k,
                "rest_mass": sum(p["k"][k]["rest_sum"] for p in parts) / rows,
                "dense_loss": dense,
                "sparse_loss": sparse,
                "relative_gap": (dense - sparse) / dense,
                "min_batch_gap": min(p["dense"] - p["k"][k]["sparse"] for p in parts),
                "grad_cosine": sum(p["k"][k]["cosine"] for p in parts) / len(parts),
                "row_grad_cosine": sum(p["k"][k]["row_cosine_sum"] for p in parts) / rows,
                "sparse_bytes_per_row": sparse_bytes,
                "dense_bytes_per_row": dense_bytes,
                "bytes_ratio": dense_bytes / sparse_bytes,
            }
        )
    return {"dense_loss": dense, "valid_rows": rows, "per_k": entries}


def run(setup: Setup) -> dict:
    """Teacher and random student over the corpus; returns kind → student → ``summarize``."""
    tokenizer = hub.load_tokenizer("minilm-l6")
    teacher = hub.load_encoder("minilm-l6", attention=True).float().eval()
    student = random_student(teacher)
    last = teacher.config.num_hidden_layers
    parts = {kind: {name: [] for name in STUDENTS} for kind in KINDS}
    for i, batch in enumerate(batches(tokenizer, setup)):
        target = layer_rows(teacher, batch, (last - 1, last))
        students = {STUDENTS[0]: layer_rows(student, batch, (4,))[4], STUDENTS[1]: target[last - 1]}
        for kind in KINDS:
            for name in STUDENTS:
                parts[kind][name].append(
                    compare(students[name][kind], target[last][kind], batch["attention_mask"], setup.ks)
                )
        print(f"batch {i + 1}: {batch['input_ids'].shape[0]} sequences", flush=True)
    return {kind: {name: summarize(parts[kind][name], setup.ks, setup.length) for name in STUDENTS} for kind in KINDS}


def table(results: dict) -> str:
    """One markdown table per row kind: every student and k."""
    lines = []
    for kind, by_student in results.items():
        lines += [
            f"### {kind}",
            "",
            "| student | k | rest mass | dense loss | sparse loss | relative gap | grad cosine (batch) | "
            "grad cosine (row mean) | bytes/row sparse | bytes/row dense | dense ÷ sparse |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for name, summary in by_student.items():
            for e in summary["per_k"]:
                lines.append(
                    f"| {name} | {e['k']} | {e['rest_mass']:.4f} | {e['dense_loss']:.4f} | {e['sparse_loss']:.4f} | "
                    f"{e['relative_gap']:.4f} | {e['grad_cosine']:.4f} | {e['row_grad_cosine']:.4f} | "
                    f"{e['sparse_bytes_per_row']} | {e['dense_bytes_per_row']} | {e['bytes_ratio']:.2f}× |"
                )
        lines.append("")
    gap = min(e["min_batch_gap"] for s in results.values() for r in s.values() for e in r["per_k"])
    lines.append(f"Identity check: min over kinds, students, k and batches of dense − sparse = {gap:.2e} (≥ 0).")
    return "\n".join(lines)


def main(argv=None) -> int:
    """Run the benchmark (module docstring); returns 0."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sequences", type=int, default=None, help="sequences (default 64; quick 4)")
    parser.add_argument("--batch", type=int, default=None, help="batch size (default 16; quick 2)")
    parser.add_argument("--quick", action="store_true", help="4 sequences, T = 64, k in (4, 16): a smoke run")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where sparse_rows.md/.json go")
    args = parser.parse_args(argv)
    quiet_libraries()
    base = QUICK if args.quick else FULL
    setup = Setup(args.sequences or base.sequences, base.length, args.batch or base.batch, base.ks)
    started, load_start = time.perf_counter(), os.getloadavg()[0]
    results = run(setup)
    text = table(results)
    command = ["python", "-m", "benchmarks.sparse_rows", *(argv if argv is not None else [])]
    payload = {
        "benchmark": "sparse_rows",
        "command": " ".join(shlex.quote(a) for a in command),
        "machine": machine(),
        "description": __doc__.split("\n\n", 2)[2].strip(),
        "teacher": "minilm-l6 (6 x 384, 12 heads), fp32, eval",
        "sequences": setup.sequences,
        "length": setup.length,
        "batch": setup.batch,
        "ks": list(setup.ks),
        "quick": args.quick,
        "elapsed_s": time.perf_counter() - started,
        "load_average_1min": {"start": load_start, "end": os.getloadavg()[0]},
        "results": results,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "sparse_rows.json").write_text(json.dumps(payload, indent=2))
    m = payload["machine"]
    header = (
        f"# sparse_rows\n\nCommand: `{payload['command']}`\n\nMachine: {m['cpu']}, {m['cores']} cores, "
        f"{m['torch_threads']} torch threads, torch {m['torch']}; 1-minute load average {load_start:.1f} at the "
        f"start, {payload['load_average_1min']['end']:.1f} at the end; {payload['elapsed_s']:.0f} s in all\n\n"
        f"{payload['description']}\n\nThis run: {setup.sequences} sequences, T = {setup.length}, batch {setup.batch}, "
        f"k in {setup.ks}.\n\n"
    )
    (args.out / "sparse_rows.md").write_text(header + text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    import sys

    raise SystemExit(main(sys.argv[1:]))
