"""Models: loading from disk or the hub, encoder families, students, and the teacher's forward pass."""
