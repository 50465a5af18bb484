"""Losses against their formulas, computed by hand."""

import math

import torch

from hsk_cache import losses


def test_hidden_mse_averages_over_kept_elements_only():
    student = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])
    teacher = torch.tensor([[[0.0, 0.0], [9.0, 9.0]]])
    mask = torch.tensor([[True, False]])
    assert losses.hidden_mse(student, teacher, mask).item() == (1 + 4) / 2
    assert losses.hidden_mse(student, teacher, torch.zeros(1, 2).bool()).item() == 0.0


def test_soft_cross_entropy_matches_formula():
    s = torch.tensor([[1.0, 2.0, 0.5]])
    t = torch.tensor([[0.3, -1.0, 2.0]])
    tau = 2.0
    p = [math.exp(x / tau) for x in t[0].tolist()]
    p = [x / sum(p) for x in p]
    z = [x / tau for x in s[0].tolist()]
    log_q = [x - math.log(sum(math.exp(y) for y in z)) for x in z]
    expected = -sum(pi * lq for pi, lq in zip(p, log_q)) * tau**2
    assert abs(losses.soft_cross_entropy(s, t, tau).item() - expected) < 1e-6


def test_soft_cross_entropy_is_minimized_by_the_teacher_logits():
    t = torch.randn(4, 5)
    at_teacher = losses.soft_cross_entropy(t, t)
    assert at_teacher < losses.soft_cross_entropy(t + torch.randn(4, 5), t)


def test_hard_cross_entropy():
    logits = torch.tensor([[2.0, 0.0]])
    expected = -math.log(math.exp(2) / (math.exp(2) + 1))
    assert abs(losses.hard_cross_entropy(logits, torch.tensor([0])).item() - expected) < 1e-6
