"""store.shards: the direct read of uncompressed local shard files, against zarr's own read."""

from pathlib import Path

import numpy as np
import pytest
import zarr

from hsk_cache.store import commits, shards
from hsk_cache.store.reader import CacheReader
from hsk_cache.store.writer import compressors


def _array(root, name, data, chunk_rows, shard_rows, codec="none", write_empty_chunks=True, fill_value=0):
    array = zarr.create_array(
        store=zarr.storage.LocalStore(root),
        name=name,
        shape=data.shape,
        chunks=(chunk_rows, *data.shape[1:]),
        shards=(shard_rows, *data.shape[1:]),
        dtype=data.dtype,
        fill_value=fill_value,
        compressors=compressors(codec),
        config={"write_empty_chunks": write_empty_chunks},
    )
    array[:] = data
    return array


def _direct(root, array, a, b):
    """Rows a..b read shard by shard with store.shards (what CacheReader.read_many does)."""
    layout = shards.direct_layout(array)
    out = np.empty((b - a, *array.shape[1:]), array.dtype)
    step = layout.shard_rows
    for lo in [a, *range((a // step + 1) * step, b, step)]:
        hi = min(b, (lo // step + 1) * step)
        path = f"{root}/{commits.shard_key(array, lo // step)}"
        shards.read_shard(path, layout, lo // step, lo, hi, out[lo - a : hi - a])
    return out


@pytest.mark.parametrize(
    "dtype,row_shape,chunk_rows,shard_rows",
    [("float16", (1, 3, 5), 8, 8), ("float16", (2, 4), 4, 16), ("int8", (7,), 5, 10), ("int64", (), 3, 12)],
)
def test_direct_read_equals_zarr(tmp_path, dtype, row_shape, chunk_rows, shard_rows):
    rng = np.random.default_rng(0)
    data = (rng.standard_normal((45, *row_shape)) * 50).astype(dtype)  # 45 rows: the last shard is partial
    array = _array(str(tmp_path), "x", data, chunk_rows, shard_rows)
    assert shards.direct_layout(array) == shards.DirectLayout(
        shard_rows, chunk_rows, int(np.prod(row_shape, dtype=int)) * np.dtype(dtype).itemsize
    )
    for a, b in [(0, 45), (3, 44), (shard_rows, 2 * shard_rows), (1, 2), (44, 45), (chunk_rows - 1, chunk_rows + 1)]:
        np.testing.assert_array_equal(_direct(str(tmp_path), array, a, b), data[a:b])


@pytest.mark.parametrize(
    "dtype,row_shape,chunk_rows,shard_rows,fill_value",
    [
        ("float16", (1, 3, 5), 8, 8, 0),
        ("float32", (2, 4), 4, 16, 0),
        ("int16", (7,), 5, 10, -1),
        ("int64", (), 3, 12, 0),
        ("uint8", (6,), 4, 8, 0),
    ],
)
def test_direct_write_is_byte_for_byte_zarr_s(tmp_path, dtype, row_shape, chunk_rows, shard_rows, fill_value):
    rng = np.random.default_rng(1)
    data = (rng.standard_normal((45, *row_shape)) * 50).astype(dtype)  # the last shard is partial
    data[:chunk_rows] = fill_value  # a chunk of fill values is stored all the same
    if data.dtype.kind == "f":
        data.reshape(len(data), -1)[chunk_rows, 0] = -0.0
    reference = _array(str(tmp_path / "zarr"), "x", data, chunk_rows, shard_rows, fill_value=fill_value)
    direct = _array(str(tmp_path / "direct"), "x", np.zeros_like(data), chunk_rows, shard_rows, fill_value=fill_value)
    layout = shards.direct_layout(direct)
    for shard in range(-(-len(data) // shard_rows)):
        path = f"{tmp_path}/direct/{commits.shard_key(direct, shard)}"
        shards.write_shard(path, layout, data[shard * shard_rows : (shard + 1) * shard_rows], fill_value)
        with open(path, "rb") as f, open(f"{tmp_path}/zarr/{commits.shard_key(reference, shard)}", "rb") as g:
            assert f.read() == g.read(), f"shard {shard}"
    np.testing.assert_array_equal(direct[:], data)  # and zarr reads it


def test_the_writer_writes_whole_local_shards_itself(tmp_path, tiny_teacher, toy_dir, monkeypatch):
    from hsk_cache.config.run import DataConfig
    from hsk_cache.extraction import extract
    from hsk_cache.knowledge.spec import ExtractSpec

    written = []
    direct_write = shards.write_shard
    monkeypatch.setattr(shards, "write_shard", lambda path, *a: written.append(path) or direct_write(path, *a))
    caches = {}
    for enabled in (True, False):
        monkeypatch.setattr(shards, "ENABLED", enabled)
        out = tmp_path / f"cache-{enabled}"
        extract.run(
            extract.ExtractConfig(
                teacher=tiny_teacher,
                data=DataConfig(source=toy_dir, max_length=16, limit=40),
                out=str(out),
                spec=ExtractSpec.parse("all", "topk:4", dtype="float16"),
                shard_examples=16,
            )
        )
        files = [p for p in sorted(out.rglob("*")) if p.is_file() and "c" in p.relative_to(out).parts]
        caches[enabled] = {p.relative_to(out): p.read_bytes() for p in files}
    direct = {Path(path).relative_to(tmp_path / "cache-True") for path in written}  # only when enabled
    assert direct <= set(caches[True]) and {f for f in caches[True] if f.parts[0] == "hidden_states"} <= direct
    assert caches[True] == caches[False]


def test_direct_layout_leaves_the_rest_to_zarr(tmp_path):
    data = np.arange(40, dtype=np.float32).reshape(20, 2)
    assert shards.direct_layout(_array(str(tmp_path), "zstd", data, 5, 10, codec="zstd")) is None
    split = zarr.create_array(  # chunks split along a second dimension
        store=zarr.storage.LocalStore(str(tmp_path)),
        name="split",
        shape=(20, 4),
        chunks=(5, 2),
        shards=(10, 4),
        dtype="float32",
        compressors=compressors("none"),
    )
    assert shards.direct_layout(split) is None
    memory = zarr.create_array(
        store=zarr.storage.MemoryStore(),
        shape=(20, 2),
        chunks=(5, 2),
        shards=(10, 2),
        dtype="float32",
        compressors=compressors("none"),
    )
    assert shards.direct_layout(memory) is None
    shards.ENABLED = False
    try:
        assert shards.direct_layout(_array(str(tmp_path), "off", data, 5, 10)) is None
    finally:
        shards.ENABLED = True


def _shard_file(root, array, shard):
    return f"{root}/{commits.shard_key(array, shard)}"


@pytest.mark.parametrize(
    "damage,message",
    [
        (lambda raw: raw.__setitem__(7, raw[7] ^ 0xFF), "chunk 0 fails its crc32c"),
        (lambda raw: raw.__setitem__(len(raw) - 10, raw[len(raw) - 10] ^ 0x01), "the shard index fails"),
        (lambda raw: raw.__delitem__(slice(0, len(raw) - 8)), "less than its"),
    ],
    ids=["chunk byte", "index byte", "truncated"],
)
def test_damaged_shards_are_named(tmp_path, damage, message):
    data = np.arange(80, dtype=np.float32).reshape(20, 4)
    array = _array(str(tmp_path), "x", data, 5, 10)
    path = _shard_file(str(tmp_path), array, 1)
    with open(path, "rb") as f:
        raw = bytearray(f.read())
    damage(raw)
    with open(path, "wb") as f:
        f.write(raw)
    np.testing.assert_array_equal(_direct(str(tmp_path), array, 0, 10), data[:10])  # shard 0 is intact
    with pytest.raises(shards.ShardDamage, match=message):
        _direct(str(tmp_path), array, 10, 20)


def test_an_unwritten_chunk_is_not_read_as_fill_values(tmp_path):
    data = np.ones((20, 3), np.float32)
    data[5:10] = 0  # all fill values: zarr skips the chunk without write_empty_chunks
    array = _array(str(tmp_path), "x", data, 5, 10, write_empty_chunks=False)
    np.testing.assert_array_equal(_direct(str(tmp_path), array, 0, 5), data[:5])
    with pytest.raises(shards.ShardDamage, match="chunk 1 was never written"):
        _direct(str(tmp_path), array, 0, 10)


def test_cache_reader_reads_a_cache_the_same_both_ways(tmp_path, tiny_teacher, toy_dir):
    """An extracted cache read by CacheReader.read_many with the direct read and with zarr's:
    every array equal, for the whole cache and for a range that starts and ends inside shards."""
    from hsk_cache.config.run import DataConfig
    from hsk_cache.extraction import extract
    from hsk_cache.knowledge.spec import ExtractSpec

    out = str(tmp_path / "cache")
    spec = ExtractSpec.parse("all", "topk:3", dtype="float16")
    data = DataConfig(source=toy_dir, limit=40)
    extract.run(extract.ExtractConfig(teacher=tiny_teacher, data=data, out=out, spec=spec, shard_examples=16))
    reader = CacheReader(out)
    names = [name for name, array in reader.group.arrays() if array.shards is not None]
    assert any(shards.direct_layout(reader.group[name]) for name in names)
    for start, stop in [(0, None), (5, 37)]:
        direct = reader.read_many(names, start, stop)
        shards.ENABLED = False
        try:
            plain = reader.read_many(names, start, stop)
        finally:
            shards.ENABLED = True
        for name in names:
            np.testing.assert_array_equal(direct[name], plain[name], err_msg=name)
