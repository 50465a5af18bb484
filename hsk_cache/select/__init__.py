"""Selection strategies along depth (which layers), length (which tokens) and width (which
dimensions): pure tensor functions, looked up by name."""
