"""The cache on disk: a Zarr v3 group. layout.py is pure (names, shapes, chunking, manifest
identity); writer.py and reader.py are the only modules that import zarr."""
