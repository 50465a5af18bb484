"""Distillation losses: pure functions of tensors.

Reductions are chosen so the loss scale does not depend on how many tokens a spec keeps: the
hidden-state MSE is a mean over the *kept* elements (masked positions excluded), summed over
layer pairs. Note the minimum-knowledge study's code takes a plain mean including dropped
elements, which shrinks the loss as fewer tokens are kept (Liu et al. 2021, released code).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def hidden_mse(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Masked mean squared error between student and teacher hidden states at kept tokens.

    L_hidn = Σ_{b,k: mask} ‖h_S W_h − h_T‖² / (n_kept · D)      (TinyBERT, Jiao et al. 2020, Eq. 7)

    Args:
        student: [B, K, D] float, already projected to the teacher width D (h_S W_h).
        teacher: [B, K, D] float. mask: [B, K] bool, True at kept tokens.
    Returns: scalar float32; 0 when nothing is kept.
    """
    weight = mask.to(student.dtype)[:, :, None]
    squared = (student.float() - teacher.float()).pow(2) * weight
    kept = weight.sum() * student.shape[-1]
    return squared.sum() / kept.clamp(min=1)


def soft_cross_entropy(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Prediction-layer distillation: cross-entropy against the teacher's softened distribution.

    L_pred = τ² · mean_b [ −Σ_c softmax(z_T/τ)_c · log softmax(z_S/τ)_c ]
    (Hinton et al. 2015, §2; the τ² factor keeps gradient scale independent of τ; TinyBERT Eq. 10
    is the τ = 1 case.)

    Args: student_logits, teacher_logits: [B, C] float. temperature: τ > 0.
    Returns: scalar float32.
    """
    targets = F.softmax(teacher_logits.float() / temperature, dim=-1)
    log_probs = F.log_softmax(student_logits.float() / temperature, dim=-1)
    return -(targets * log_probs).sum(dim=-1).mean() * temperature**2


def hard_cross_entropy(student_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against gold labels. student_logits: [B, C]; labels: [B] int64."""
    return F.cross_entropy(student_logits.float(), labels)
