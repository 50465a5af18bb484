"""Storage of general-distillation caches: bytes per sequence of each recipe, projected to a
Wikipedia + BookCorpus-sized corpus (docs/general/storage.md).

    python -m pipelines.general_storage [--out docs/general/storage.md] [--limit 64]

Writes ``<out>`` and, beside it, ``storage.json`` (the rows and the projection), which
``pipelines.storage_table`` renders into docs/storage.md.

For each recipe (minilm, minilmv2, tinybert, distilbert, mobilebert; spec as
``pipelines.general.spec_for``: TinyBERT keeps the embedding output and the teacher layers the
uniform map of a 4-layer student reaches, 0,3,6,9,12, and their attention; MobileBERT every layer),
at T = 128 and T = 512, under two selections, every token (``tokens all``) and the study's
(``topk:32`` at T = 128, ``topk:128`` at T = 512: a quarter of the positions), and for the recipes
with attention-like rows the study's with sparse rows (``key_topk`` T/8), float16, no codec.
The teacher is BERT-base shaped (12 × 768, 12 heads, FFN 3072, ``BertForMaskedLM`` so that
DistilBERT's ``mlm`` soft targets apply) with the bundled tokenizer (bert-base-uncased's
WordPiece vocabulary, 30,522 entries); only its config is written, no weights.

Bytes come from the size estimate, not from an extraction: ``extract.dry_run`` over the first
``--limit`` (64) packed sequences of WikiText-2 train (all of them full length), which for an
uncompressed spec reads only the teacher's config and sizes every array exactly (the token ids,
lengths and MLM arrays are compressed as the writer always does). Bytes per sequence leave out the
fixed metadata of a cache (its group and array ``zarr.json`` files), which do not grow with N.

Projection: 3.3e9 words (BooksCorpus 800M + English Wikipedia 2,500M, Devlin et al. 2019 §3.1) ×
r tokens per word / (T − 2) packed sequences per epoch (``[CLS]`` + T − 2 tokens + ``[SEP]``), with
r measured on WikiText-2 train: the content tokens of ``corpus.load_corpus`` (every packed token
but [CLS], [SEP] and the one separator between documents) over the whitespace-split words of the
same documents' text. KB = 10³ bytes, GB = 10⁹, TB = 10¹²; one epoch stores every sequence once.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

from hsk_cache.cli.progress import quiet_libraries
from hsk_cache.config.run import DataConfig
from hsk_cache.config.specs import TokenSpec
from hsk_cache.data import corpus
from hsk_cache.extraction import estimate, extract
from hsk_cache.knowledge.spec import ROW_KINDS
from hsk_cache.models import hub
from pipelines.general import spec_for

RECIPES = ("minilm", "minilmv2", "tinybert", "distilbert", "mobilebert")
LENGTHS = {128: "topk:32", 512: "topk:128"}  # T → the study's selection
KEY_TOPK = {128: 16, 512: 64}  # T → sparse rows' kept keys (T / 8), on top of the study's selection
WORDS = 3.3e9  # BooksCorpus (800M words) + English Wikipedia (2,500M words), BERT's pre-training corpus
OUT = Path(__file__).resolve().parents[1] / "docs" / "general" / "storage.md"


def make_teacher(work: str) -> str:
    """A BERT-base-shaped ``BertForMaskedLM`` config and the bundled tokenizer in ``work``
    (no weights: an uncompressed dry run reads only the config)."""
    from transformers import BertConfig

    tokenizer = hub.load_tokenizer("minilm-l6")
    config = BertConfig(
        vocab_size=len(tokenizer),
        num_hidden_layers=12,
        hidden_size=768,
        num_attention_heads=12,
        intermediate_size=3072,
        architectures=["BertForMaskedLM"],
    )
    config.save_pretrained(work)
    tokenizer.save_pretrained(work)
    return work


def tokens_per_word(tokenizer) -> dict:
    """WikiText-2 train's tokens per word with ``tokenizer``: content tokens of the packed corpus
    (``load_corpus`` at T = 128, less [CLS]/[SEP] per sequence and one separator between
    documents) over the whitespace-split words of the same documents. Also the ratio over words
    holding a letter or digit (WikiText splits punctuation off and writes hyphens as ``@-@``, so
    its whitespace words include punctuation that running text attaches to a word)."""
    import numpy as np
    import pyarrow.compute as pc

    config = DataConfig(source="wikitext-2", split="train", max_length=128)
    packed = corpus.load_corpus(config, tokenizer, 128)
    lengths = np.asarray(packed.data.column("input_ids").combine_chunks().value_lengths())
    documents, columns, _ = corpus._documents(config)  # the same text load_corpus packs
    words = pc.utf8_split_whitespace(documents.data.column(columns[0]).combine_chunks())
    per_document = np.asarray(pc.list_value_length(words).fill_null(0))
    flat = pc.list_flatten(words)
    alnum = int(pc.sum(pc.match_substring_regex(flat, r"[A-Za-z0-9]")).as_py())
    separators = int((per_document > 0).sum()) - 1
    content = int(lengths.sum()) - 2 * len(lengths) - separators
    total_words = int(per_document.sum())
    return {
        "sequences": len(lengths),
        "documents": int((per_document > 0).sum()),
        "tokens": content,
        "words": total_words,
        "alnum_words": alnum,
        "tokens_per_word": content / total_words,
        "tokens_per_alnum_word": content / alnum,
    }


def measure(teacher: str, limit: int, work: str) -> list[dict]:
    """One row per (recipe, T, selection): the dry run's bytes per sequence and per array."""
    rows = []
    for name in RECIPES:
        base = spec_for(name, teacher)
        for length, study in LENGTHS.items():
            sparse = any(kind in ROW_KINDS for kind in base.knowledge)
            for selection in ("all", study, *([f"{study}, key-topk:{KEY_TOPK[length]}"] if sparse else [])):
                tokens, _, keys = selection.partition(", key-topk:")
                spec = dataclasses.replace(base, tokens=TokenSpec.parse(tokens), key_topk=int(keys or 0))
                data = DataConfig(source="wikitext-2", split="train", max_length=length, limit=limit)
                config = extract.ExtractConfig(teacher=teacher, data=data, out=f"{work}/unused", spec=spec)
                e = extract.dry_run(config)
                fixed = estimate.GROUP_METADATA_BYTES + estimate.ARRAY_METADATA_BYTES * (len(e.arrays) + 1)
                per_sequence = (e.total_bytes - fixed) / e.examples
                rows.append(
                    {
                        "recipe": name,
                        "length": length,
                        "selection": selection,
                        "layers": spec.layers.describe(),
                        "knowledge": list(spec.knowledge),
                        "examples": e.examples,
                        "bytes_per_sequence": per_sequence,
                        "dry_run_bytes_per_example": e.bytes_per_example,
                        "arrays_per_sequence": {k: v / e.examples for k, v in e.arrays.items()},
                    }
                )
                print(f"{name} T={length} {selection}: {per_sequence / 1e3:.1f} KB/sequence", flush=True)
    return rows


def size(value: float) -> str:
    """Bytes as TB (≥ 1 TB) or GB, decimal units."""
    return f"{value / 1e12:.2f} TB" if value >= 1e12 else f"{value / 1e9:.1f} GB"


def report(rows: list[dict], ratio: dict, command: str, elapsed: float) -> str:
    """The markdown of docs/general/storage.md."""
    r = ratio["tokens_per_word"]
    lines = [
        "# Cache storage of general distillation, projected to BERT's pre-training corpus",
        "",
        f"Produced by `{command}` ({elapsed:.0f} s; `pipelines/general_storage.py`, whose docstring has the method).",
        "",
        "Teacher BERT-base shaped (12 × 768, 12 heads, FFN 3072, masked-LM head for DistilBERT's soft targets), "
        "student 4 × 312 (TinyBERT's layer map: teacher layers 0,3,6,9,12); float16, no codec; bytes from "
        f"`extract.dry_run` over the first {rows[0]['examples']} packed sequences of WikiText-2 train (fixed "
        "cache metadata left out). Selections: `all` keeps every token; the study's keeps `topk:32` of T = 128 "
        "and `topk:128` of T = 512 (the positions receiving the most [CLS] attention; a quarter of them); "
        "`key-topk` adds sparse rows (each attention / relation row as its top T/8 keys, their int16 positions "
        "and a float32 rest mass: docs/general.md, Sparse rows).",
        "",
        f"Tokens per word, WikiText-2 train with the bundled (bert-base-uncased WordPiece) tokenizer: "
        f"{ratio['tokens']:,} tokens / {ratio['words']:,} whitespace-split words = **{r:.3f}** "
        f"({ratio['documents']} articles). Projection: {WORDS:.1e} words (BooksCorpus + English Wikipedia) × "
        f"{r:.3f} = {WORDS * r:.3g} tokens → {WORDS:.1e} × {r:.3f} / (T − 2) sequences per epoch.",
        "",
        "| recipe | T | selection | KB / sequence | sequences per epoch | per epoch |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        sequences = WORDS * r / (row["length"] - 2)
        lines.append(
            f"| {row['recipe']} | {row['length']} | {row['selection']} | {row['bytes_per_sequence'] / 1e3:,.1f} | "
            f"{sequences / 1e6:.1f} M | {size(sequences * row['bytes_per_sequence'])} |"
        )
    alnum = ratio["tokens_per_alnum_word"]
    lines += [
        "",
        "Notes:",
        "",
        f"- WikiText is word-tokenized: punctuation stands apart and hyphens are written ` @-@ `, so its whitespace "
        f"words include {ratio['words'] - ratio['alnum_words']:,} without a letter or digit. Counting only words with "
        f"one gives {alnum:.3f} tokens per word: {100 * (alnum / r - 1):.0f}% more sequences and bytes than the "
        "table. Word counts of running text (BERT's 3.3e9) attach punctuation to its word, so this ratio is likely "
        "the closer one and the table's figures the lower bound (hyphenated compounds still count as several "
        "words here, which pulls it slightly low too).",
        "- Per-sequence bytes do not depend on the corpus size; an epoch's bytes scale linearly with it.",
        "- MLM arrays (DistilBERT: 15% masked positions, their top-16 teacher ids and probabilities) and token ids "
        "are compressed by the writer whatever the codec; every knowledge array here is stored raw.",
    ]
    biggest = {}
    for row in rows:
        if row["selection"] == LENGTHS[128] and row["length"] == 128:
            name, value = max(row["arrays_per_sequence"].items(), key=lambda item: item[1])
            biggest[row["recipe"]] = f"{name} {value / 1e3:,.1f} KB"
    lines.append(
        "- The largest array per sequence at T = 128, topk:32: " + "; ".join(f"{k}: {v}" for k, v in biggest.items())
    )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    """Measure, project, write ``--out`` and print the table; returns 0."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--limit", type=int, default=64, help="packed sequences the dry run tokenizes")
    args = parser.parse_args(argv)
    quiet_libraries()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="hsk-general-storage-") as work:
        teacher = make_teacher(f"{work}/teacher")
        rows = measure(teacher, args.limit, work)
        ratio = tokens_per_word(hub.load_tokenizer(teacher))
    command = "python -m pipelines.general_storage" + "".join(f" {a}" for a in (argv or []))
    text = report(rows, ratio, command, time.perf_counter() - started)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    summary = [
        {**{k: row[k] for k in ("recipe", "length", "selection", "bytes_per_sequence")},
         "epoch_bytes": WORDS * ratio["tokens_per_word"] / (row["length"] - 2) * row["bytes_per_sequence"]}
        for row in rows
    ]  # fmt: skip
    payload = {"command": command, "words": WORDS, "tokens_per_word": ratio["tokens_per_word"], "rows": summary}
    args.out.with_suffix(".json").write_text(json.dumps(payload, indent=1) + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
