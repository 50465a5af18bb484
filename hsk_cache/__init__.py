"""hsk-cache: extract a fine-tuned teacher's knowledge once into a Zarr v3 cache, then train
students from the cache without the teacher (Liu et al., ACL 2021, "Marginal Utility
Diminishes: Exploring the Minimum Knowledge for BERT Knowledge Distillation")."""

__version__ = "0.1.0"
