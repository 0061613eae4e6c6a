"""Pure Flow-GRPO math: SDE step, Gaussian log-prob, advantages, clipped-ratio loss, KL (design.md §4).

Flow convention (diffusers flow-matching schedulers): x_sigma = (1 - sigma) x0 + sigma * noise, v = noise - x0,
sigma runs from 1 (noise) to 0 (image); an ODE Euler step is x_next = x + (sigma_next - sigma) * v.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch


def sde_std(sigma: float, sigma_max_finite: float, noise_level: float) -> float:
    """std_t = a * sqrt(sigma / (1 - sigma)); at sigma == 1 the next lower sigma stands in (it would be infinite)."""
    s = float(sigma)
    if s >= 1.0:
        s = float(sigma_max_finite)
    return noise_level * math.sqrt(s / (1.0 - s)) if s > 0 else 0.0


def sde_mean(x: torch.Tensor, v: torch.Tensor, sigma: float, sigma_next: float, std_t: float) -> torch.Tensor:
    """Mean of the Flow-GRPO reverse SDE step; equals the ODE Euler step when std_t == 0."""
    dt = float(sigma_next) - float(sigma)
    s = max(float(sigma), 1e-12)
    return x * (1 + std_t ** 2 / (2 * s) * dt) + v * (1 + std_t ** 2 * (1 - s) / (2 * s)) * dt


def step_scale(sigma: float, sigma_next: float, std_t: float) -> float:
    """Standard deviation of x_next given x: std_t * sqrt(-dt)."""
    return std_t * math.sqrt(max(float(sigma) - float(sigma_next), 0.0))


def sde_step(x, v, sigma, sigma_next, std_t, noise: Optional[torch.Tensor] = None, generator=None
             ) -> Tuple[torch.Tensor, torch.Tensor]:
    """One SDE step. Returns (x_next, mean). With std_t == 0 it is exactly the Euler ODE step."""
    mean = sde_mean(x, v, sigma, sigma_next, std_t)
    scale = step_scale(sigma, sigma_next, std_t)
    if scale == 0.0:
        return mean, mean
    if noise is None:
        noise = torch.randn(x.shape, generator=generator, dtype=torch.float32).to(x.device, x.dtype)
    return mean + scale * noise, mean


def gaussian_log_prob(x_next: torch.Tensor, mean: torch.Tensor, scale: float) -> torch.Tensor:
    """log N(x_next; mean, scale^2 I), averaged over all non-batch dims (one value per sample)."""
    if scale <= 0:
        raise ValueError("log-prob needs a positive step scale (noise level > 0 inside the SDE window)")
    x_next, mean = x_next.float(), mean.float()
    lp = -((x_next - mean) ** 2) / (2 * scale ** 2) - math.log(scale) - 0.5 * math.log(2 * math.pi)
    return lp.flatten(1).mean(1)


def kl_gaussian_same_std(mean: torch.Tensor, ref_mean: torch.Tensor, scale: float) -> torch.Tensor:
    """KL(N(mean, s^2) || N(ref_mean, s^2)) averaged over non-batch dims = (mean - ref)^2 / (2 s^2)."""
    return (((mean.float() - ref_mean.float()) ** 2) / (2 * scale ** 2)).flatten(1).mean(1)


def advantages(rewards: torch.Tensor, group_ids: torch.Tensor, mode: str = "mean_std", scope: str = "prompt",
               clip: Optional[float] = 5.0, eps: float = 1e-4) -> torch.Tensor:
    """Group-relative advantages.

    mode: "mean" (A = R - mean, as in the PromptEcho paper) or "mean_std" (A = (R - mean) / (std + eps), Flow-GRPO).
    scope: "prompt" (statistics within each prompt's group) or "global" (over the whole batch).
    """
    if mode not in ("mean", "mean_std"):
        raise ValueError(f"advantage mode must be 'mean' or 'mean_std', got {mode!r}")
    if scope not in ("prompt", "global"):
        raise ValueError(f"advantage scope must be 'prompt' or 'global', got {scope!r}")
    r = rewards.double()
    out = torch.empty_like(r)
    groups = [torch.ones_like(group_ids, dtype=torch.bool)] if scope == "global" else \
        [group_ids == g for g in torch.unique(group_ids)]
    for m in groups:
        g = r[m]
        a = g - g.mean()
        if mode == "mean_std":
            a = a / (g.std(unbiased=False) + eps)
        out[m] = a
    if clip is not None:
        out = out.clamp(-clip, clip)
    return out.float()


def group_reward_spread(rewards: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    """Per-group reward std (population); zero means the group carries no learning signal."""
    return torch.stack([rewards[group_ids == g].double().std(unbiased=False) for g in torch.unique(group_ids)]).float()


def clipped_ratio_loss(log_prob: torch.Tensor, old_log_prob: torch.Tensor, adv: torch.Tensor, clip_range: float
                       ) -> Tuple[torch.Tensor, torch.Tensor]:
    """PPO-style loss mean(max(-A r, -A clamp(r, 1-e, 1+e))); returns (loss, ratio)."""
    ratio = torch.exp(log_prob - old_log_prob)
    unclipped = -adv * ratio
    clipped = -adv * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    return torch.maximum(unclipped, clipped).mean(), ratio
