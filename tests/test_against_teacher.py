"""hsk verify --against-teacher: a seeded sample recomputed with the live teacher and compared
kind by kind within the stored dtype's bound; it passes on intact caches and fails, naming the
kind, on another teacher, another tokenizer, and bytes rewritten with plausible wrong values
whose checksums (chunks and commit records) were recomputed, in float32 and int8."""

import json

import numpy as np
import pytest
import zarr

from hsk_cache.cli import main
from hsk_cache.models import hub as models
from hsk_cache.store import commits, layout
from tests.conftest import fails, tiny_bert

KNOWLEDGE = "hidden_states,attention_probs,value_relation,logits"


@pytest.fixture(scope="module", params=["float32", "int8"])
def cache(request, tiny_teacher, toy_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp(f"against_{request.param}") / "cache"
    argv = ["extract", "--teacher", tiny_teacher, "--data", toy_dir, "--out", str(out), "--max-length", "32",
            "--layers", "all", "--tokens", "topk:5", "--knowledge", KNOWLEDGE, "--dtype", request.param,
            "--shard-examples", "16"]  # fmt: skip
    assert main(argv) == 0
    return out


def _against(capsys, cache, teacher, *extra):
    capsys.readouterr()
    status = main(["verify", str(cache), "--against-teacher", str(teacher), "--json", *extra])
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    return status, report["against_teacher"]


def test_an_intact_cache_matches_its_teacher(cache, tiny_teacher, capsys):
    status, check = _against(capsys, cache, tiny_teacher, "--sample", "24", "--seed", "3")
    assert status == 0 and check["ok"] and check["mismatches"] == [] and check["same_weights"], check
    assert check["sample"] == 24 and not check["selection_differs"]
    keys = {(k["kind"], k["key"]) for k in check["keys"]}
    assert {("hidden_states", "hidden_states"), ("hidden_states", "token_index"), ("logits", "logits")} <= keys
    assert {("attention_probs", "attention_probs"), ("value_relation", "value_relation")} <= keys
    assert all(k["examples"] == 24 and k["worst"] <= 1.0 for k in check["keys"])
    capsys.readouterr()
    assert main(["verify", str(cache), "--against-teacher", tiny_teacher, "--sample", "8"]) == 0
    out = capsys.readouterr().out
    assert "| hidden_states | hidden_states | 8 |" in out and "against teacher: matches; 8 examples" in out


def test_another_teacher_is_a_mismatch_naming_the_kinds(cache, tokenizer, tmp_path, capsys):
    other = tmp_path / "other"
    models.save(tiny_bert(tokenizer, seed=1), tokenizer, other)  # same shape, other weights
    status, check = _against(capsys, cache, other, "--sample", "16")
    assert status == 1 and not check["ok"] and not check["same_weights"]
    named = {line.split(":")[0] for line in check["mismatches"]}
    assert {"hidden_states", "attention_probs", "value_relation", "logits"} <= named, check["mismatches"]
    capsys.readouterr()
    assert main(["verify", str(cache), "--against-teacher", str(other), "--sample", "4"]) == 1
    assert "mismatch: logits: logits differs by up to" in capsys.readouterr().out


def test_a_teacher_of_another_shape_is_a_mismatch(cache, tokenizer, tmp_path, capsys):
    wider = tmp_path / "wider"
    models.save(tiny_bert(tokenizer, hidden=48, heads=4), tokenizer, wider)
    status, check = _against(capsys, cache, wider)
    assert status == 1 and check["mismatches"] == [
        "teacher: it has 2 layers × 48 dims × 4 heads, the cache's teacher had 2 × 32 × 4"
    ]


def test_another_tokenizer_is_a_mismatch(cache, tiny_teacher, tokenizer, tmp_path, capsys):
    """The same weights saved with a vocabulary where two of the data's words swapped ids."""
    from transformers import BertTokenizerFast

    vocab = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    words = [word for word, _ in vocab]
    a, b = words.index("good"), words.index("bad")
    words[a], words[b] = words[b], words[a]
    (tmp_path / "vocab.txt").write_text("\n".join(words) + "\n")
    swapped = BertTokenizerFast(vocab_file=str(tmp_path / "vocab.txt"), do_lower_case=True)
    teacher = tmp_path / "swapped"
    models.save(models.load_classifier(tiny_teacher), swapped, teacher)
    status, check = _against(capsys, cache, teacher, "--sample", "32")
    assert status == 1 and len(check["mismatches"]) == 1, check
    assert check["mismatches"][0].startswith("input_ids: the teacher's tokenizer encodes")


def _rewrite(cache, name, change):
    """``change`` the array ``name`` in place through zarr (chunk checksums recomputed), then
    rewrite the commit rows' sizes and crc32c of every shard, as a writer would have."""
    group = zarr.open_group(str(cache), mode="r+")
    group[name][...] = change(group[name][...])
    names = commits.commit_names(group)
    rows = group[layout.COMMIT_ARRAY][...]
    for shard in range(rows.shape[0]):
        found = commits.records(group, [commits.shard_key(group[n], shard) for n in names])
        rows[shard] = [(r.nbytes, r.crc32c) for r in found]
    group[layout.COMMIT_ARRAY][...] = rows


def test_plausible_wrong_values_with_valid_checksums_are_a_mismatch(cache, tiny_teacher, tmp_path, capsys):
    import shutil

    damaged = tmp_path / "cache"
    shutil.copytree(cache, damaged)
    dtype = json.loads((cache / "zarr.json").read_text())["attributes"]["hsk_cache"]["spec"]["dtype"]
    if dtype == "int8":  # every hidden state 3% larger: the per-row scales
        _rewrite(damaged, "hidden_states_scale", lambda s: (s * np.float32(1.03)).astype(np.float32))
    else:
        _rewrite(damaged, "hidden_states", lambda h: (h * np.float32(1.03)).astype(np.float32))
    _rewrite(damaged, "logits", lambda x: x[::-1].copy())  # logits of other examples
    capsys.readouterr()
    assert main(["verify", str(damaged)]) == 0  # every checksum agrees
    status, check = _against(capsys, damaged, tiny_teacher, "--sample", "16")
    assert status == 1
    assert sorted(line.split(":")[0] for line in check["mismatches"]) == ["hidden_states", "logits"], check
    assert check["same_weights"]


def test_bad_sample_is_one_line(cache, tiny_teacher, capsys):
    fails(capsys, ["verify", str(cache), "--against-teacher", tiny_teacher, "--sample", "0"], "--sample 0")
    fails(capsys, ["verify", str(cache), "--against-teacher", tiny_teacher, "--batch-size", "0"], "--batch-size 0")


def test_a_general_distillation_cache_matches_its_teacher(tokenizer, tmp_path, capsys):
    """A corpus cache of every general kind (mlm soft targets at static masks, hidden states,
    attention, value relation): the recompute feeds the teacher the stored masked input_ids and
    mask positions, as extraction did."""
    import random

    from tests.test_general import WORDS, tiny_encoder

    rng = random.Random(0)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(" ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 60))) for _ in range(24)))
    teachers = {}
    for seed in (0, 1):
        teachers[seed] = tmp_path / f"mlm{seed}"
        models.save(tiny_encoder(tokenizer, mlm=True, seed=seed), tokenizer, teachers[seed])
    cache = tmp_path / "cache"
    argv = ["extract", "--teacher", str(teachers[0]), "--data", str(corpus), "--out", str(cache), "--max-length",
            "32", "--knowledge", "mlm,hidden_states,attention_probs,value_relation", "--tokens", "topk:4"]  # fmt: skip
    assert main(argv) == 0
    status, check = _against(capsys, cache, teachers[0], "--sample", "16")
    assert status == 0 and check["ok"], check
    assert {"mlm", "hidden_states", "attention_probs", "value_relation"} <= {k["kind"] for k in check["keys"]}
    status, check = _against(capsys, cache, teachers[1], "--sample", "16")
    assert status == 1 and "mlm" in {line.split(":")[0] for line in check["mismatches"]}, check
