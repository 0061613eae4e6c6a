"""Flow-GRPO / AWM math against independent computations (torch.distributions, hand-worked numbers)."""
import math

import pytest
import torch

from promptecho.grpo import awm, sde


def test_sde_step_with_zero_noise_is_euler():
    x, v = torch.randn(3, 4, 5, 5), torch.randn(3, 4, 5, 5)
    x_next, mean = sde.sde_step(x, v, 0.6, 0.4, 0.0)
    assert torch.equal(mean, x_next)
    torch.testing.assert_close(x_next, x + (0.4 - 0.6) * v, rtol=0, atol=1e-6)


def test_sde_mean_matches_formula_by_hand():
    # sigma=0.5, next=0.25, a=0.7: std = 0.7 * sqrt(1) = 0.7; dt = -0.25
    std = sde.sde_std(0.5, 0.9, 0.7)
    assert std == pytest.approx(0.7)
    x, v = torch.tensor([[2.0]]), torch.tensor([[1.0]])
    mean = sde.sde_mean(x, v, 0.5, 0.25, std)
    want = 2.0 * (1 + 0.49 / 1.0 * -0.25) + 1.0 * (1 + 0.49 * 0.5 / 1.0) * -0.25
    assert float(mean) == pytest.approx(want)
    assert sde.step_scale(0.5, 0.25, std) == pytest.approx(0.7 * 0.5)


def test_sde_std_at_sigma_one_uses_next_finite_sigma():
    assert sde.sde_std(1.0, 0.8, 0.5) == pytest.approx(0.5 * math.sqrt(0.8 / 0.2))


def test_gaussian_log_prob_matches_torch_normal():
    mean = torch.randn(2, 3, 4)
    x = mean + 0.3 * torch.randn(2, 3, 4)
    lp = sde.gaussian_log_prob(x, mean, 0.3)
    ref = torch.distributions.Normal(mean, 0.3).log_prob(x).flatten(1).mean(1)
    torch.testing.assert_close(lp, ref)
    with pytest.raises(ValueError):
        sde.gaussian_log_prob(x, mean, 0.0)


def test_kl_matches_torch_kl():
    m1, m2 = torch.randn(2, 6), torch.randn(2, 6)
    kl = sde.kl_gaussian_same_std(m1, m2, 0.4)
    ref = torch.distributions.kl_divergence(torch.distributions.Normal(m1, 0.4), torch.distributions.Normal(m2, 0.4))
    torch.testing.assert_close(kl, ref.mean(1))
    assert float(sde.kl_gaussian_same_std(m1, m1, 0.4).abs().max()) == 0.0


def test_advantages_modes_and_scopes():
    r = torch.tensor([1.0, 3.0, 10.0, 10.0, 0.0, 4.0])
    g = torch.tensor([0, 0, 1, 1, 2, 2])
    a = sde.advantages(r, g, "mean", "prompt", clip=None)
    assert a.tolist() == [-1.0, 1.0, 0.0, 0.0, -2.0, 2.0]
    a = sde.advantages(r, g, "mean_std", "prompt", clip=None, eps=0.0 + 1e-12)
    torch.testing.assert_close(a[[0, 1, 4, 5]], torch.tensor([-1.0, 1.0, -1.0, 1.0]))
    assert a[2] == 0 and a[3] == 0  # flat group -> no signal, not NaN
    ag = sde.advantages(r, g, "mean", "global", clip=None)
    torch.testing.assert_close(ag, r - r.mean())
    assert float(sde.advantages(r * 100, g, "mean", "prompt", clip=5.0).abs().max()) == 5.0
    with pytest.raises(ValueError):
        sde.advantages(r, g, "median")
    spread = sde.group_reward_spread(r, g)
    assert spread.tolist() == [1.0, 0.0, 2.0]


def test_clipped_ratio_loss_known_values():
    adv = torch.tensor([1.0, -1.0])
    old = torch.zeros(2)
    loss, ratio = sde.clipped_ratio_loss(old.clone(), old, adv, 0.2)
    assert ratio.tolist() == [1.0, 1.0] and float(loss) == 0.0
    new = torch.log(torch.tensor([1.5, 1.5]))
    loss, _ = sde.clipped_ratio_loss(new, old, adv, 0.2)
    # A=+1: max(-1.5, -1.2) = -1.2 ; A=-1: max(1.5, 1.2) = 1.5 ; mean = 0.15
    assert float(loss) == pytest.approx(0.15)


def test_clipped_loss_gradient_sign_raises_logp_of_positive_advantage():
    lp = torch.zeros(2, requires_grad=True)
    loss, _ = sde.clipped_ratio_loss(lp, torch.zeros(2), torch.tensor([2.0, -2.0]), 0.2)
    loss.backward()
    assert lp.grad[0] < 0 < lp.grad[1]  # descent raises logp for A>0, lowers it for A<0


def test_awm_loss_weights_flow_matching_error():
    x0, noise = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    sigma = torch.tensor([0.25, 0.75])
    xt, target = awm.noisy_sample(x0, noise, sigma)
    torch.testing.assert_close(xt[1], 0.25 * x0[1] + 0.75 * noise[1])
    torch.testing.assert_close(target, noise - x0)
    v = target + 1.0  # FM error 1 everywhere
    loss, kl = awm.awm_loss(v, target, torch.tensor([2.0, -1.0]))
    assert float(loss) == pytest.approx((2.0 - 1.0) / 2)
    loss, kl = awm.awm_loss(v, target, torch.tensor([0.0, 0.0]), v_ref=target, kl_beta=0.5)
    assert kl.tolist() == [1.0, 1.0] and float(loss) == pytest.approx(0.5)


def test_awm_loss_applies_per_sample_weights():
    target = torch.zeros(3, 2, 2, 2)
    v = torch.stack([torch.full((2, 2, 2), e) for e in (1.0, 2.0, 3.0)])  # FM errors 1, 4, 9
    adv, w = torch.tensor([1.0, -0.5, 2.0]), torch.tensor([0.5, 1.0, 0.25])
    loss, _ = awm.awm_loss(v, target, adv, weight=w)
    assert float(loss) == pytest.approx((1 * 0.5 * 1 - 0.5 * 1.0 * 4 + 2 * 0.25 * 9) / 3)
    loss, kl = awm.awm_loss(v, target, torch.zeros(3), v_ref=target, kl_beta=2.0, weight=w)
    assert kl.tolist() == [1.0, 4.0, 9.0] and float(loss) == pytest.approx(2.0 * (0.5 + 4.0 + 2.25) / 3)


def test_shapesworld_awm_weight_gives_the_generators_training_loss():
    """For the x-predicting ShapesWorld generator, fm_weight * ||v - (noise - x0)||^2 equals train_generator's loss
    ||x0_hat - x0||^2 / max(sigma, floor)^2 per sample; other adapters keep plain flow matching (weight 1)."""
    from promptecho.grpo.adapters.base import FlowAdapter
    from promptecho.grpo.adapters.shapes import ShapesWorldAdapter
    from promptecho.shapes.generator import LOSS_SIGMA_FLOOR
    from fixtures.grpo import tiny_shapes_pipeline

    pipe = tiny_shapes_pipeline()
    ad = ShapesWorldAdapter(pipe)
    cond = ad.encode(["a small red circle", "two large blue squares"] * 2, 1.0)
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(4, 3, 48, 48, generator=g) * 2 - 1
    noise = torch.randn(4, 3, 48, 48, generator=g)
    sigma = torch.tensor([0.05, 0.2, 0.3, 0.9])
    xt, target = awm.noisy_sample(x0, noise, sigma)
    with torch.no_grad():
        v = ad.velocity(xt, sigma, cond, 1.0)
        x0_hat = pipe.predict_x0(xt, sigma, cond["embeds"], cond["pooled"])
    w = ad.fm_weight(sigma)
    mine = w * ((v - target) ** 2).flatten(1).mean(1)
    ref = (((x0_hat - x0) / sigma.clamp(min=LOSS_SIGMA_FLOOR).view(-1, 1, 1, 1)) ** 2).flatten(1).mean(1)
    torch.testing.assert_close(mine, ref, rtol=1e-4, atol=1e-6)
    assert w[2:].tolist() == [1.0, 1.0] and w[0] < w[1] < 1.0
    assert FlowAdapter.fm_weight(ad, sigma).tolist() == [1.0] * 4
