"""Distillation objectives: ``DistillationLoss`` over the knowledge kinds' loss terms, and training-step objectives."""
