"""Advantage-weighted flow matching (AWM, arXiv 2509.25050): the flow-matching loss on the policy's own final
samples, weighted by their advantage. Needs only final latents x0, no per-step log-probs.

Positive advantages pull the velocity field toward the sample (lower FM loss), negative push it away; the
advantage is clipped and an optional KL-like term (velocity distance to the frozen base) keeps it bounded.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch


def noisy_sample(x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """x_sigma = (1 - sigma) x0 + sigma * noise and its flow-matching target v = noise - x0."""
    s = sigma.reshape(-1, *([1] * (x0.dim() - 1))).to(x0.dtype)
    return (1 - s) * x0 + s * noise, noise - x0


def velocity_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-sample mean squared distance [B] between two velocity (or target) batches, in float32."""
    return ((a.float() - b.float()) ** 2).flatten(1).mean(1)


def sample_weight(weight: Optional[torch.Tensor], like: torch.Tensor) -> torch.Tensor:
    """The per-sample loss weight as a [B] tensor matching `like` (a per-sample distance); None = all ones."""
    if weight is None:
        return torch.ones_like(like)
    return weight.to(like.device, like.dtype).reshape(-1).expand_as(like)


def awm_loss(v_pred: torch.Tensor, target: torch.Tensor, adv: torch.Tensor, v_ref: Optional[torch.Tensor] = None,
             kl_beta: float = 0.0, weight: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """mean_i(A_i * w_i * ||v_i - target_i||^2) (+ beta * w_i * ||v_i - v_ref_i||^2); returns (loss, per-sample KL).

    w_i (default 1) is the pipeline's own pre-training weight at sample i's noise level (FlowAdapter.fm_weight), so
    that AWM optimises the objective the model was trained with."""
    fm = velocity_distance(v_pred, target)
    w = sample_weight(weight, fm)
    loss = (adv.float() * w * fm).mean()
    kl = torch.zeros_like(fm)
    if v_ref is not None:
        kl = velocity_distance(v_pred, v_ref)
        loss = loss + kl_beta * (w * kl).mean()
    return loss, kl
