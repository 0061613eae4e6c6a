"""Sampled layouts (config layout_sampling): a discrete layout per image from the ShapesWorld layout encoder, with
its log-prob trained by the same clipped-ratio objective as the SDE steps."""
import math

import pytest
import torch

from fixtures.grpo import brightness_reward, tiny_sd3_pipeline, tiny_shapes_pipeline
from promptecho.grpo.adapters import make_adapter
from promptecho.grpo.config import ConfigError, GRPOConfig
from promptecho.grpo.trainer import GRPOSession
from promptecho.shapes.generator import LAYOUT_HEADS, layout_log_prob, sample_layout, split_heads

PROMPTS = ["a red circle", "a blue square", "a green triangle"]
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _cfg(tmp_path, **kw):
    base = dict(adapter="shapesworld", train_steps=3, eval_steps=3, group_size=4, prompts_per_step=2,
                clip_range=0.2, lora_rank=2, lora_alpha=4.0, lr=3e-3, output_dir=str(tmp_path / "run"),
                max_steps=2, eval_every=0, checkpoint_every=0, layout_sampling=True, lora_extra=["layout_encoder"])
    base.update(kw)
    return GRPOConfig(**base)


def test_draws_follow_the_tempered_distribution_and_the_log_prob_is_the_manual_sum():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(1, 9, sum(n for _, n in LAYOUT_HEADS), generator=g) * 2
    t = 1.7
    n = 20000
    u = torch.rand(n, 9, len(LAYOUT_HEADS), generator=g)
    idx, fed = sample_layout(logits.expand(n, -1, -1), u, t)
    for k, h in enumerate(split_heads(logits[0])):  # empirical frequencies vs softmax(logits / t)
        p = (h / t).softmax(-1)
        freq = torch.stack([(idx[:, :, k] == c).float().mean(0) for c in range(h.shape[-1])], -1)
        assert torch.allclose(freq, p, atol=0.02), k
    # known answers of the inverse CDF: u = 0 picks the first class, u -> 1 the last
    lo, _ = sample_layout(logits, torch.zeros(1, 9, 4), t)
    hi, _ = sample_layout(logits, torch.full((1, 9, 4), 1 - 1e-7), t)
    assert (lo == 0).all() and all((hi[..., k] == nk - 1).all() for k, (_, nk) in enumerate(LAYOUT_HEADS))
    # the transformer gets exactly one-hot occupancy, and one-hot contents where a cell is occupied
    for k, h in enumerate(split_heads(fed[:50])):
        p = h.softmax(-1)
        chosen = p.gather(-1, idx[:50, :, k:k + 1]).squeeze(-1)
        mask = torch.ones_like(chosen, dtype=torch.bool) if k == 0 else idx[:50, :, 0] == 1
        assert torch.equal(chosen[mask], torch.ones_like(chosen[mask]))
    # log-prob: every cell's occupancy plus colour, shape, size of the occupied cells, from a plain log-softmax
    heads = split_heads(logits[0])
    for b in range(5):
        want = 0.0
        for c in range(9):
            for k, h in enumerate(heads):
                if k == 0 or idx[b, c, 0] == 1:
                    z = [float(v) / t for v in h[c]]
                    m = max(z)
                    want += z[int(idx[b, c, k])] - m - math.log(sum(math.exp(v - m) for v in z))
        assert float(layout_log_prob(logits, idx[b:b + 1], t)) == pytest.approx(want, abs=1e-4)


def test_session_samples_layouts_checks_the_ratio_and_trains_the_encoder(tmp_path):
    pipe = tiny_shapes_pipeline(layout=True)
    s = GRPOSession(_cfg(tmp_path, layout_temperature=3.0), make_adapter("shapesworld", pipe), brightness_reward,
                    train_prompts=PROMPTS).start()
    assert s.self_check_report["layout_ratio_max_dev"] == 0.0
    seen = {}

    def spy(adapter):
        real = adapter.sample_layout

        def sample(cond, u, t):
            cond, logp = real(cond, u, t)
            seen["idx"] = cond["layout_idx"]
            return cond, logp
        adapter.sample_layout = sample
    spy(s.adapter)
    m = s.step()
    assert m["ratio_dev"] == 0.0 and m["layout_ratio_dev"] == 0.0  # first update of the step: on-policy
    idx = seen["idx"]
    assert idx.shape == (8, 9, 4) and len({tuple(r.flatten().tolist()) for r in idx[:4]}) > 1  # a group differs
    lora_b = [p for n, p in pipe.layout_encoder.named_parameters() if "lora_B" in n]
    assert lora_b and max(float(p.detach().abs().max()) for p in lora_b) > 0
    # the draw is part of the step's reproducible randomness: the same step again draws the same layouts
    s2 = GRPOSession(_cfg(tmp_path / "b", layout_temperature=3.0), make_adapter("shapesworld", tiny_shapes_pipeline(layout=True)),
                     brightness_reward, train_prompts=PROMPTS, run_self_checks=False).start()
    spy(s2.adapter)
    s2.step()
    assert torch.equal(seen["idx"], idx)


def test_the_layout_update_moves_probability_toward_rewarded_layouts(tmp_path):
    """Advantage +1 for draws with the top-left cell occupied, -1 otherwise: P(occupied) there must rise."""
    pipe = tiny_shapes_pipeline(layout=True)
    s = GRPOSession(_cfg(tmp_path, lr=3e-2, layout_temperature=2.0), make_adapter("shapesworld", pipe),
                    brightness_reward, train_prompts=PROMPTS, run_self_checks=False).start()
    ad = s.adapter
    cond = ad.encode(["a red circle"] * 16, 1.0)

    def p_occ():
        with torch.no_grad():
            return float(pipe.layout_encoder(cond["embeds"])[0, 0, :2].div(2.0).softmax(-1)[1])
    before = p_occ()
    for step in range(10):
        drawn, old = ad.sample_layout(cond, ad.layout_uniforms(16, torch.Generator().manual_seed(step)), 2.0)
        adv = (drawn["layout_idx"][:, 0, 0] == 1).float() * 2 - 1
        stats = {}
        s._layout_update(drawn, old, adv, stats)
        s._optim_step()
    assert p_occ() > before + 0.1, (before, p_occ())


def test_layout_sampling_is_refused_where_it_cannot_work(tmp_path):
    with pytest.raises(ConfigError, match="add \"layout_encoder\" to lora_extra"):
        _cfg(tmp_path, lora_extra=[]).validate()
    with pytest.raises(ConfigError, match="layout_temperature"):
        _cfg(tmp_path, layout_temperature=0).validate()
    with pytest.raises(ConfigError, match="no layout to sample"):
        GRPOSession(_cfg(tmp_path, adapter="sd3"), make_adapter("sd3", tiny_sd3_pipeline()), brightness_reward,
                    train_prompts=PROMPTS)
    with pytest.raises(ConfigError, match="no layout to sample"):
        GRPOSession(_cfg(tmp_path), make_adapter("shapesworld", tiny_shapes_pipeline()), brightness_reward,
                    train_prompts=PROMPTS)
