"""Flow-GRPO math against independent computations."""
import math

import pytest
import torch

from promptecho.grpo.sde import (clipped_policy_loss, gaussian_logprob, group_advantages, kl_to_reference,
                                 sde_std, sde_step)


def test_noise_level_zero_is_the_euler_step():
    x, v = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    nxt, mean, std = sde_step(x, v, 0.8, 0.6, 0.0)
    assert torch.allclose(nxt, x - 0.2 * v) and float(std) == 0


def test_sde_step_matches_the_formula_and_its_noise():
    torch.manual_seed(0)
    x, v, eps = torch.randn(1, 3, 2, 2), torch.randn(1, 3, 2, 2), torch.randn(1, 3, 2, 2)
    s, sn, a = 0.7, 0.5, 0.7
    nxt, mean, std = sde_step(x, v, s, sn, a, noise=eps)
    st = a * math.sqrt(s / (1 - s))
    dt = sn - s
    want_mean = x * (1 + st ** 2 / (2 * s) * dt) + v * (1 + st ** 2 * (1 - s) / (2 * s)) * dt
    assert torch.allclose(mean, want_mean, atol=1e-6)
    assert float(std) == pytest.approx(st * math.sqrt(-dt))
    assert torch.allclose(nxt, want_mean + st * math.sqrt(-dt) * eps, atol=1e-6)


def test_sigma_one_uses_sigma_max():
    assert float(sde_std(torch.tensor(1.0), 0.7, sigma_max=0.9)) == pytest.approx(0.7 * math.sqrt(9))


def test_logprob_equals_torch_normal():
    mean, x = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4)
    std = torch.tensor(0.37)
    want = torch.distributions.Normal(mean, std).log_prob(x).flatten(1).mean(1)
    assert torch.allclose(gaussian_logprob(x, mean, std), want, atol=1e-5)


def test_kl_is_zero_for_identical_policies_and_matches_closed_form():
    m = torch.randn(2, 3, 4, 4)
    assert torch.all(kl_to_reference(m, m, torch.tensor(0.5)) == 0)
    p = torch.distributions.Normal(m, 0.5)
    q = torch.distributions.Normal(m + 0.3, 0.5)
    want = torch.distributions.kl_divergence(p, q).flatten(1).mean(1)
    assert torch.allclose(kl_to_reference(m, m + 0.3, torch.tensor(0.5)), want, atol=1e-6)


def test_group_advantages():
    r = [1.0, 2.0, 3.0, 10.0, 10.0, 13.0]
    g = ["a", "a", "a", "b", "b", "b"]
    adv = group_advantages(r, g, "mean", clip=None)
    assert adv.tolist() == pytest.approx([-1, 0, 1, -1, -1, 2])
    std = group_advantages(r, g, "mean_std", clip=None)
    assert std[:3].tolist() == pytest.approx([-1.2247, 0, 1.2247], abs=1e-3)
    assert group_advantages(r, g, "mean", scope="global", clip=None).sum().abs() < 1e-5
    assert group_advantages(r, g, "mean", clip=0.5).abs().max() <= 0.5
    with pytest.raises(ValueError):
        group_advantages(r, g, "zscore")


def test_ratio_is_one_and_loss_is_minus_mean_advantage_before_any_update():
    lp = torch.randn(6)
    adv = torch.randn(6)
    loss, ratio = clipped_policy_loss(lp, lp.clone(), adv, 1e-4)
    assert torch.equal(ratio, torch.ones(6))
    assert float(loss) == pytest.approx(float(-adv.mean()), abs=1e-6)


def test_clipping_removes_the_incentive_beyond_the_range():
    old = torch.zeros(2)
    lp = torch.tensor([0.5, -0.5], requires_grad=True)  # ratios e^0.5 and e^-0.5
    loss, _ = clipped_policy_loss(lp, old, torch.tensor([1.0, -1.0]), 0.2)
    loss.backward()
    # positive advantage with ratio above 1+e, negative with ratio below 1-e: both clipped, no gradient
    assert torch.all(lp.grad == 0)
