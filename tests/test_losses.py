"""Losses against their formulas, computed by hand."""

import math

import torch

from hsk_cache.knowledge import losses


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


def test_distribution_kl_matches_formula_and_skips_invalid_rows():
    teacher = torch.tensor([[[[0.5, 0.5, 0.0], [0.2, 0.3, 0.5]]]])  # [B=1, H=1, K=2, T=3]
    student = torch.tensor([[[[0.25, 0.75, 0.0], [0.9, 0.05, 0.05]]]])
    row0 = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)  # 0·log 0 = 0
    row1 = sum(t * math.log(t / s) for t, s in zip([0.2, 0.3, 0.5], [0.9, 0.05, 0.05]))
    both = losses.distribution_kl(student, teacher, torch.tensor([[True, True]]))
    assert abs(both.item() - (row0 + row1) / 2) < 1e-6
    first = losses.distribution_kl(student, teacher, torch.tensor([[True, False]]))
    assert abs(first.item() - row0) < 1e-6
    assert losses.distribution_kl(teacher, teacher, torch.tensor([[True, True]])).item() == 0.0


def test_distribution_mse_sums_keys_and_averages_rows_and_heads():
    teacher = torch.zeros(1, 2, 1, 2)
    student = torch.tensor([[[[1.0, 1.0]], [[0.0, 2.0]]]])  # head 0: 1+1 = 2, head 1: 0+4 = 4
    assert losses.distribution_mse(student, teacher, torch.tensor([[True]])).item() == 3.0


def test_hidden_mse_with_an_element_mask():
    student, teacher = torch.ones(1, 1, 4), torch.zeros(1, 1, 4)
    teacher[0, 0, 0] = 3.0
    mask = torch.tensor([[[True, False, False, True]]])
    assert losses.hidden_mse(student, teacher, mask).item() == (4 + 1) / 2
