"""float8_e4m3 storage: FP8 E4M3 bytes with a per-row absmax scale, end to end.

The bound (``knowledge/quantize.py``): |x̂ − x| ≤ 2^-4 · |x| + s · 2^-9 per element, s = max|x| / 448.
"""

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from hsk_cache.config.run import DataConfig, StageConfig
from hsk_cache.data.cache import open_cache
from hsk_cache.errors import ConfigError
from hsk_cache.extraction import extract
from hsk_cache.knowledge import quantize
from hsk_cache.knowledge.spec import ExtractSpec
from hsk_cache.models import students
from hsk_cache.store.info import cache_info
from hsk_cache.store.reader import CacheReader
from hsk_cache.training import configs, train

E4M3 = "float8_e4m3"
KNOWLEDGE = "hidden_states,attention_probs,logits"


def within_bound(decoded: np.ndarray, x: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Elementwise |x̂ − x| ≤ 2^-4 · |x| + s · 2^-9, s [...] broadcast over the last axis."""
    return np.abs(decoded - x) <= 2.0**-4 * np.abs(x) + scale[..., None] * 2.0**-9


def round_trip(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    stored, scale = quantize.encode(x, E4M3)
    return stored, scale, quantize.decode(stored, scale, E4M3)


def test_hand_computed_bytes_and_values():
    # s = 448 / 448 = 1: 448 = 0 1111 110 (0x7E); 1 = 0 0111 000 (0x38); −3.3 → −3.25 = 1 1000 101 (0xC5)
    # (ulp 0.25 in [2, 4)); 17 ties between 16 and 18 → 16 (even mantissa); 2^-10 ties between 0 and
    # 2^-9 → 0; 3·2^-10 ties between 2^-9 and 2^-8 → 2^-8 (subnormals 001 and 010: even wins)
    x = np.array([[448.0, 1.0, -3.3, 17.0, 2.0**-10, 3 * 2.0**-10, 0.0]], dtype=np.float32)
    stored, scale, decoded = round_trip(x)
    assert stored.dtype == np.uint8 and scale.dtype == np.float32 and scale.tolist() == [1.0]
    assert stored[0, :3].tolist() == [0x7E, 0x38, 0xC5]
    np.testing.assert_array_equal(decoded, [[448.0, 1.0, -3.25, 16.0, 0.0, 2.0**-8, 0.0]])


@pytest.mark.parametrize("shape", [(4, 384), (2, 3, 5, 32), (7, 1)])
def test_random_rows_round_trip_within_the_bound(shape):
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(shape) * np.exp(rng.uniform(-8, 8, shape[:-1] + (1,)))).astype(np.float32)
    stored, scale, decoded = round_trip(x)
    assert stored.shape == x.shape and scale.shape == x.shape[:-1] and decoded.dtype == np.float32
    np.testing.assert_allclose(scale, np.abs(x).max(-1) / 448, rtol=1e-6)
    assert within_bound(decoded, x, scale).all()
    if shape[-1] == 1:  # a row's max is stored exactly: x / s = ±448
        np.testing.assert_array_equal(decoded, x)
    else:  # the rest round to 3 mantissa bits
        assert not np.array_equal(decoded, x)


def test_adversarial_rows_round_trip_within_the_bound():
    rows = np.zeros((6, 16), dtype=np.float32)
    rows[1, 3] = 3e38  # one huge value: the rest are zeros
    rows[2] = -np.linspace(1, 100, 16)  # all negative
    rows[3] = [1.0] + [2.0**-e for e in range(6, 21)]  # scaled values deep in the subnormals and below
    rows[4] = np.float32(1e-30) * np.arange(16)  # tiny but normal float32 magnitudes
    rows[5, :2] = [7.0, -7.0]  # the max at both signs: x / s = ±448 exactly, nothing saturates to NaN
    stored, scale, decoded = round_trip(rows)
    assert np.isfinite(decoded).all() and within_bound(decoded, rows, scale).all()
    assert scale[0] == 0 and (decoded[0] == 0).all()  # a zero row decodes to zeros
    assert decoded[1, 3] == pytest.approx(3e38, rel=1e-6) and (decoded[1, np.arange(16) != 3] == 0).all()
    assert (decoded[2] < 0).all() and decoded[5, :2].tolist() == [7.0, -7.0]
    # scaled values below half the smallest subnormal (2^-10) flush to 0; the bound's s·2^-9 covers them
    small = rows[3, 1:] / scale[3]
    assert (decoded[3, 1:][small < 2.0**-10] == 0).all() and (decoded[3, 1:][small > 2.0**-10] > 0).all()


def test_values_that_round_past_the_max_saturate():
    x = np.array([[448.0, 464.0, 1e4, -1e4]], dtype=np.float32)  # one scale for the row: s = 1e4 / 448
    stored, scale, decoded = round_trip(x)
    assert np.isfinite(decoded).all() and np.abs(decoded).max() == pytest.approx(1e4, rel=1e-6)
    scaled = np.array([[460.0, -1e6]], dtype=np.float32)  # past 448 (E4M3 has no inf: 0x7F is NaN)
    assert quantize.encode_float8(scaled, E4M3).tolist() == [[0x7E, 0xFE]]  # clamped to ±448


def test_empty_rows_and_the_dtype_lists():
    stored, scale = quantize.encode(np.zeros((3, 0), np.float32), E4M3)
    assert stored.shape == (3, 0) and scale.tolist() == [0.0, 0.0, 0.0]
    assert quantize.STORAGE_DTYPE[E4M3] == "uint8" and quantize.needs_scale(E4M3)
    assert ExtractSpec.parse("last", "all", dtype=E4M3).dtype == E4M3
    with pytest.raises(ConfigError, match="float8_e4m3"):  # the error lists the dtypes, float8_e4m3 among them
        ExtractSpec.parse("last", "all", dtype="float8_e5m2")


def _extract(tiny_teacher, toy_dir, out: Path, dtype: str) -> str:
    spec = ExtractSpec.parse("all", "all", knowledge=KNOWLEDGE, dtype=dtype, attention_layers="all")
    data = DataConfig(source=toy_dir, split="train", max_length=32)
    extract.run(extract.ExtractConfig(teacher=tiny_teacher, data=data, out=str(out), spec=spec, batch_size=16))
    return str(out)


@pytest.fixture(scope="module")
def caches(tiny_teacher, toy_dir, tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("float8")
    return {dtype: _extract(tiny_teacher, toy_dir, root / dtype, dtype) for dtype in ("float32", E4M3)}


@pytest.mark.parametrize("name", ["hidden_states", "attention_probs"])
def test_cache_stores_uint8_bytes_that_decode_close_to_float32(caches, name):
    fp8, f32 = CacheReader(caches[E4M3]), CacheReader(caches["float32"])
    assert fp8.manifest.spec.dtype == E4M3
    meta = json.loads((Path(caches[E4M3]) / "zarr.json").read_text())
    assert E4M3 in json.dumps(meta["attributes"])  # the manifest names the dtype for any reader
    x, stored, scale = f32.read(name), fp8.read(name), fp8.read(f"{name}_scale")
    assert stored.dtype == np.uint8 and scale.dtype == np.float32 and scale.shape == stored.shape[:-1]
    np.testing.assert_allclose(scale, np.abs(x).max(-1) / 448, rtol=1e-6)
    decoded = quantize.decode(stored, scale, E4M3)
    assert within_bound(decoded, x, scale).all()
    assert (decoded[scale == 0] == 0).all() and (scale == 0).any()  # padding rows stay zero

    # another Zarr v3 reader sees plain uint8 bytes and float32 scales: FP8 E4M3 by the manifest's name
    raw = zarr.open_array(str(Path(caches[E4M3]) / name), mode="r")
    raw_scale = zarr.open_array(str(Path(caches[E4M3]) / f"{name}_scale"), mode="r")
    assert raw.dtype == np.uint8 and raw_scale.dtype == np.float32
    values = torch.from_numpy(np.ascontiguousarray(raw[:])).view(torch.float8_e4m3fn).float().numpy()
    np.testing.assert_array_equal(values * raw_scale[:][..., None], decoded)


def test_batches_decode_within_the_bound(caches):
    index = np.arange(8)
    fp8, f32 = open_cache(caches[E4M3]), open_cache(caches["float32"])
    a, b = fp8.batch(index), f32.batch(index)
    scale = CacheReader(caches[E4M3]).read("hidden_states_scale")[index]  # [B, L, K]
    hidden, reference = a["hidden_states"].numpy(), b["hidden_states"].numpy()  # [B, L, K_b, D]
    assert hidden.shape == reference.shape
    assert within_bound(hidden, reference, scale[:, :, : hidden.shape[2]]).all()
    np.testing.assert_array_equal(a["input_ids"], b["input_ids"])


def _train(cache: str, out: Path):
    config = configs.TrainConfig(
        out=str(out),
        cache=cache,
        student=students.StudentConfig(layers=1, hidden=16, heads=4, ffn=32),
        stages=(StageConfig(kind="hidden", epochs=2, lr=3e-3, batch_size=8),),
        seed=1,
        save_every="0",
    )
    return train.run(config).stages[0].losses


def test_training_from_a_float8_cache_follows_the_float32_one(caches, tmp_path):
    fp8, f32 = _train(caches[E4M3], tmp_path / "fp8"), _train(caches["float32"], tmp_path / "f32")
    assert len(fp8) == len(f32) == 16 and all(math.isfinite(x) and x > 0 for x in fp8)
    assert np.mean(fp8[-4:]) < np.mean(fp8[:4])  # it learns
    # same student, seed and batches: the targets differ only by the rounding
    np.testing.assert_allclose(fp8, f32, rtol=0.05)


def test_dry_run_predicts_float8_bytes_within_10_percent(tiny_teacher, toy_dir, tmp_path):
    spec = ExtractSpec.parse("all", "topk:10%", knowledge=KNOWLEDGE, dtype=E4M3)
    config = extract.ExtractConfig(
        teacher=tiny_teacher,
        data=DataConfig(source=toy_dir, max_length=32),
        out=str(tmp_path / "cache"),
        spec=spec,
        shard_examples=16,
    )
    predicted = extract.dry_run(config)
    assert not (tmp_path / "cache").exists()
    extract.run(config)
    real = cache_info(str(tmp_path / "cache"))["stored_bytes"]
    assert abs(predicted.total_bytes - real) <= 0.10 * real, (predicted.total_bytes, real)
    # one byte a value: half the float16 prediction of the same array (less the fixed metadata)
    half = extract.dry_run(replace(config, spec=replace(spec, dtype="float16"))).arrays["hidden_states"]
    assert 1.8 < half / predicted.arrays["hidden_states"] < 2.0
