"""Golden caches: a fixed matrix of extraction specs on a tiny seeded teacher, hashed file by file.

``tests/golden/cache_hashes.json`` holds the sha256 of every file of every array of each cache
(chunks and shard files, and each array's ``zarr.json``) and of the manifest with its
machine-dependent fields (paths, versions) blanked. It was computed on the code before the
knowledge-kind registry (issue 18) and must not change unless the cache format changes on purpose:

    python -m tests.golden            # compare with the committed hashes (what the test does)
    python -m tests.golden --write    # record them anew (only for an intended format change)

The teacher's floats depend on the CPU's kernels and the thread count: everything runs on one
thread, and ``teacher_sha256`` fingerprints the raw fp32 outputs, so a machine computing other
floats is told so instead of reporting a format change.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import random
import sys
import tempfile
from pathlib import Path

import torch

GOLDEN = Path(__file__).parent / "golden" / "cache_hashes.json"
WORDS = "good great fine lovely superb happy bad awful poor dreadful grim sad dark cold".split()
SPECS = {  # name → (data, ExtractSpec.parse keywords, shard_examples)
    "hidden_all_float32": (
        "single",
        dict(layers="all", tokens="all", dims="all", knowledge="hidden_states,logits", dtype="float32"),
        4,
    ),
    "hidden_topk_uniform_float16_zstd": (
        "single",
        dict(layers="1,2", tokens="topk:4", dims="uniform:0.25", dtype="float16", codec="zstd"),
        8,
    ),
    "hidden_random_random_bfloat16_blosc": (
        "single",
        dict(layers="last", tokens="random:3", dims="random:0.5", dtype="bfloat16", codec="blosc", seed=3),
        None,
    ),
    "hidden_left_magnitude_int8": (
        "single",
        dict(layers="uniform:1", tokens="left:5", dims="magnitude:0.2", dtype="int8"),
        4,
    ),
    "hidden_topksep_percent_magnitude_float16": (
        "single",
        dict(layers="top:2", tokens="topk+sep:25%", dims="magnitude:0.1", dtype="float16", codec="zstd"),
        8,
    ),
    "hidden_cls_bottom_float32": (
        "single",
        dict(layers="bottom:1", tokens="cls", knowledge="hidden_states", dtype="float32"),
        None,
    ),
    "attention_value_topk_int8": (
        "single",
        dict(
            tokens="topk:3",
            knowledge="attention_probs,value_relation,logits",
            attention_layers="all",
            dtype="int8",
        ),
        4,
    ),
    "attention_cls_bfloat16": (
        "single",
        dict(tokens="cls", knowledge="attention_probs", attention_layers="1", dtype="bfloat16", codec="blosc"),
        None,
    ),
    "value_relation_layer1_importance2_float32": (
        "single",
        dict(
            tokens="topk:4",
            knowledge="value_relation",
            value_relation_layer="1",
            importance_layer="2",
            dtype="float32",
        ),
        8,
    ),
    "logits_float16": ("single", dict(knowledge="logits", dtype="float16"), None),
    "pair_every_kind_magnitude_int8": (
        "pair",
        dict(
            layers="all",
            tokens="topk:6",
            dims="magnitude:0.3",
            knowledge="hidden_states,attention_probs,value_relation,logits",
            attention_layers="2",
            dtype="int8",
            codec="zstd",
        ),
        4,
    ),
    "pair_hidden_uniform_float16": (
        "pair",
        dict(layers="0,2", tokens="left:50%", dims="uniform:0.5", dtype="float16"),
        None,
    ),
}
# manifest fields that name this machine's paths or the package version, not the format
VOLATILE = (
    ("teacher", "path"),
    ("teacher", "config", "_name_or_path"),
    ("tokenizer", "name_or_path"),
    ("data", "source"),
    ("data", "resolved_source"),
    ("hsk_cache_version",),
)
# integrity records added after the golden hashes were recorded (issue 22), left out of the hash:
# the manifest's own sha256 covers the volatile fields, and the tokenizer's file records the
# tokenizer's bytes, which depend on the transformers version; tests/test_manifest_integrity.py
# checks both
INTEGRITY = (("manifest_sha256",), ("tokenizer", "files"))


def _module(name: str, before: str):
    """Module ``name``, or ``before`` (its place before the package was laid out by stage), so the
    hashes can be recorded on the code before a change and compared after it."""
    try:
        return importlib.import_module(name)
    except ImportError:
        return importlib.import_module(before)


def _write_data(root: Path) -> dict[str, Path]:
    rng = random.Random(7)
    sentence = lambda: " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 14)))
    single, pair = root / "single.csv", root / "pair.csv"
    single.write_text("text,label\n" + "".join(f"{sentence()},{'pos' if i % 2 else 'neg'}\n" for i in range(20)))
    pair.write_text(
        "premise,hypothesis,label\n"
        + "".join(f"{sentence()},{sentence()},{'pos' if i % 3 else 'neg'}\n" for i in range(18))
    )
    return {"single": single, "pair": pair}


def _teacher(root: Path) -> tuple[str, str]:
    """A saved 2-layer, 32-wide, 4-head random BERT classifier; and the sha256 of its fp32 outputs."""
    from transformers import BertConfig, BertForSequenceClassification

    models = _module("hsk_cache.models.hub", "hsk_cache.models")

    tokenizer = models.load_tokenizer(models.BUNDLED_TEACHER)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        num_labels=2,
        id2label={0: "neg", 1: "pos"},
        label2id={"neg": 0, "pos": 1},
        attn_implementation="eager",
    )
    torch.manual_seed(1234)
    model = BertForSequenceClassification(config).eval()
    path = root / "teacher"
    models.save(model, tokenizer, path)
    ids = tokenizer(["good bad sad warm", "fine"], padding=True, return_tensors="pt")
    with torch.no_grad():
        out = model(**ids, output_hidden_states=True, output_attentions=True)
    digest = hashlib.sha256()
    for tensor in (*out.hidden_states, *out.attentions, out.logits):
        digest.update(tensor.float().contiguous().numpy().tobytes())
    return str(path), digest.hexdigest()


def _file_hashes(cache: Path) -> dict[str, str]:
    out = {}
    for path in sorted(p for p in cache.rglob("*") if p.is_file()):
        relative = path.relative_to(cache).as_posix()
        if relative == "zarr.json" or relative.startswith("tokenizer/"):
            continue  # the manifest is hashed with its volatile fields blanked; the tokenizer is the package's
        out[relative] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def stored_manifest(cache: Path) -> dict:
    """The manifest exactly as the cache's root ``zarr.json`` stores it (key order kept)."""
    return json.loads((cache / "zarr.json").read_text())["attributes"]["hsk_cache"]


def _manifest_hash(cache: Path) -> str:
    manifest = stored_manifest(cache)
    for keys in VOLATILE:
        target = manifest
        for key in keys[:-1]:
            target = target[key]
        target[keys[-1]] = None
    for keys in INTEGRITY:
        target = manifest
        for key in keys[:-1]:
            target = target[key]
        target.pop(keys[-1])
    return hashlib.sha256(json.dumps(manifest).encode()).hexdigest()


def compute(root: Path) -> dict:
    """Extract every spec of ``SPECS`` under ``root``; returns {"teacher_sha256", "caches": {name: hashes}}."""
    from hsk_cache.config import DataConfig

    ExtractSpec = _module("hsk_cache.knowledge.spec", "hsk_cache.config").ExtractSpec
    extract = _module("hsk_cache.extraction.extract", "hsk_cache.extract")

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # float results depend on the thread count: hash what one thread computes
    try:
        return _compute(root, extract, DataConfig, ExtractSpec)
    finally:
        torch.set_num_threads(threads)


def _compute(root: Path, extract, DataConfig, ExtractSpec) -> dict:
    teacher, teacher_sha = _teacher(root)
    data = _write_data(root)
    caches = {}
    for name, (which, spec, shard) in SPECS.items():
        columns = ("text",) if which == "single" else ("premise", "hypothesis")
        out = root / name
        extract.run(
            extract.ExtractConfig(
                teacher=teacher,
                data=DataConfig(source=str(data[which]), text_columns=columns, label_column="label", max_length=24),
                out=str(out),
                spec=ExtractSpec.parse(**spec),
                batch_size=5,
                shard_examples=shard,
            )
        )
        caches[name] = {"manifest": _manifest_hash(out), "files": _file_hashes(out)}
    return {"teacher_sha256": teacher_sha, "caches": caches}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="record the hashes in tests/golden/cache_hashes.json")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        result = compute(Path(tmp))
    if args.write:
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
        files = sum(len(c["files"]) for c in result["caches"].values())
        print(f"wrote {GOLDEN}: {len(result['caches'])} caches, {files} files")
        return 0
    golden = json.loads(GOLDEN.read_text())
    differ = [n for n in golden["caches"] if golden["caches"][n] != result["caches"].get(n)]
    print("same" if not differ else f"differ: {differ}")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
