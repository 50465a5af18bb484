"""Training: the run (stages, data parallel), its directory (session, checkpoints), evaluation and fine-tuning."""
