"""Training losses (pure functions of logits): TRADES (Zhang et al. 2019) as used by the paper
(paper App. A, beta = 6) and PGD adversarial training (Madry et al. 2018)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def smoothed_targets(labels: torch.Tensor, *, num_classes: int, smoothing: torch.Tensor) -> torch.Tensor:
    """Soft targets (1 - s) * onehot + s / K with a per-example smoothing s [B].

    The paper smooths generated labels only (s = 0.1) and keeps real labels one-hot (s = 0).
    """
    onehot = F.one_hot(labels, num_classes).to(smoothing.dtype)  # [B, K]
    s = smoothing[:, None]
    return (1 - s) * onehot + s / num_classes


def soft_cross_entropy_mean(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """mean_b -sum_k t_bk log softmax(z_b)_k."""
    return -(targets * F.log_softmax(logits.float(), dim=1)).sum(dim=1).mean()


def kl_clean_adv(clean_logits: torch.Tensor, adv_logits: torch.Tensor) -> torch.Tensor:
    """mean_b KL(p_clean || p_adv), summed over classes (PyTorch's 'batchmean')."""
    log_p = F.log_softmax(clean_logits.float(), dim=1)
    log_q = F.log_softmax(adv_logits.float(), dim=1)
    return (log_p.exp() * (log_p - log_q)).sum(dim=1).mean()


def trades_terms(clean_logits: torch.Tensor, adv_logits: torch.Tensor,
                 targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """TRADES' two terms: (CE(clean logits, targets), KL(p_clean || p_adv))."""
    return soft_cross_entropy_mean(clean_logits, targets), kl_clean_adv(clean_logits, adv_logits)


def trades_loss(clean_logits: torch.Tensor, adv_logits: torch.Tensor, targets: torch.Tensor,
                *, beta: float) -> torch.Tensor:
    """CE(clean logits, targets) + beta * KL(p_clean || p_adv); gradients flow through both sides."""
    natural, robust = trades_terms(clean_logits, adv_logits, targets)
    return natural + beta * robust


def pgd_at_loss(adv_logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Madry et al.: cross-entropy on the adversarial examples only."""
    return soft_cross_entropy_mean(adv_logits, targets)
