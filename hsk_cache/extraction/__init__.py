"""Extraction: run the teacher once over a split and write the selected knowledge into a cache; predict its size."""
