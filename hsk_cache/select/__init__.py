"""Selection strategies along depth (which layers), length (which tokens) and width (which
dimensions): pure tensor functions, looked up by name."""

# Bumped whenever a strategy keeps other tokens, dimensions or elements for the same spec and
# teacher; recorded in every cache manifest, and a resume into a cache written by another
# version is refused (shards of two algorithms must not mix).
# 1: first release. 2: magnitude width rounds its kept-element count one way (width.kept_elements)
# for the stored slots and the per-example masks.
SELECTION_VERSION = 2
