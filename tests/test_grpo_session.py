"""GRPO sessions on tiny random-weight pipelines: self-checks, learning signal, stop/resume bit-identical."""
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch
from safetensors.torch import load_file

from fixtures.grpo import brightness_reward, tiny_sd3_pipeline, tiny_shapes_pipeline
from promptecho.grpo.adapters import AdapterError, make_adapter
from promptecho.grpo.config import ConfigError, GRPOConfig
from promptecho.grpo.trainer import GRPOSession, SelfCheckError

PROMPTS = ["a red circle", "a blue square", "a green triangle"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _cfg(tmp_path, **kw):
    base = dict(adapter="shapesworld", train_steps=3, eval_steps=3, group_size=2, prompts_per_step=2,
                clip_range=0.2, lora_rank=2, lora_alpha=4.0, lr=3e-3, output_dir=str(tmp_path / "run"),
                max_steps=2, eval_every=0, checkpoint_every=0)
    base.update(kw)
    return GRPOConfig(**base)


@pytest.fixture(scope="module")
def sd3_pipe():
    return tiny_sd3_pipeline()


@pytest.mark.parametrize("cfg_scale", [1.0, 3.0])
def test_sd3_self_checks_pass_with_and_without_cfg(tmp_path, sd3_pipe, cfg_scale):
    import copy
    pipe = copy.deepcopy(sd3_pipe)
    s = GRPOSession(_cfg(tmp_path, adapter="sd3", train_cfg=cfg_scale, kl_beta=0.1), make_adapter("sd3", pipe),
                    brightness_reward, train_prompts=PROMPTS).start()
    rep = s.self_check_report
    assert rep == {"pipeline_max_abs_diff": 0.0, "ratio_max_dev": 0.0, "kl_init": 0.0}
    m = s.step()  # first update: ratio exactly 1 on the first (and only) inner epoch
    assert m["ratio_dev"] == 0.0 and m["kl"] == 0.0 and m["flat_groups"] == 0


@pytest.mark.parametrize("cfg_scale", [1.0, 2.5])
def test_layout_generator_self_checks_are_exact_and_a_step_trains_the_transformer_only(tmp_path, cfg_scale):
    """The embedded generator's architecture (layout encoder + layout channels): the self-checks hold exactly (the
    layout encoder's attention gives the same bits with autograd on and off; torch's MultiheadAttention did not,
    and KL at init came out 1e-15), and an update moves the transformer's LoRA while the layout encoder is frozen."""
    pipe = tiny_shapes_pipeline(layout=True)
    before = {k: v.clone() for k, v in pipe.layout_encoder.state_dict().items()}
    s = GRPOSession(_cfg(tmp_path, train_cfg=cfg_scale, kl_beta=0.1), make_adapter("shapesworld", pipe),
                    brightness_reward, train_prompts=PROMPTS).start()
    assert s.self_check_report == {"pipeline_max_abs_diff": 0.0, "ratio_max_dev": 0.0, "kl_init": 0.0}
    m = s.step()
    assert m["ratio_dev"] == 0.0 and m["kl"] == 0.0
    lora_b = [p for n, p in s.adapter.transformer.named_parameters() if "lora_B" in n]
    assert lora_b and max(float(p.abs().max()) for p in lora_b) > 0
    assert all(torch.equal(before[k], v) for k, v in pipe.layout_encoder.state_dict().items())


def test_self_check_detects_a_sampler_that_differs_from_the_pipeline(tmp_path):
    ad = make_adapter("shapesworld", tiny_shapes_pipeline())
    ad.sigmas = lambda steps: torch.linspace(1, 0, steps + 1)  # not the scheduler's schedule
    s = GRPOSession(_cfg(tmp_path, train_cfg=2.0), ad, brightness_reward, train_prompts=PROMPTS)
    s.adapter.pipe.transformer.proj_out.bias.data += 0.5  # make the schedule matter
    with pytest.raises(SelfCheckError, match="noise level 0"):
        s.start()


def test_wrong_pipeline_type_is_refused():
    with pytest.raises(AdapterError, match="StableDiffusion3Pipeline"):
        make_adapter("sd3", tiny_shapes_pipeline())
    with pytest.raises(AdapterError, match="unknown adapter"):
        make_adapter("dalle", None)


def test_warns_when_rewards_do_not_vary_within_groups(tmp_path, caplog):
    s = GRPOSession(_cfg(tmp_path), make_adapter("shapesworld", tiny_shapes_pipeline()),
                    lambda ims, ps: [0.5] * len(ims), train_prompts=PROMPTS).start()
    with caplog.at_level(logging.WARNING, logger="promptecho.grpo"):
        m = s.step()
    assert m["flat_groups"] == 2 and "do not vary" in caplog.text


@pytest.mark.parametrize("algorithm", ["grpo", "awm"])
def test_training_moves_reward_up_on_a_toy_objective(tmp_path, algorithm):
    """Brightness reward: the mean reward of fixed-seed ODE samples must rise after a few steps."""
    # proj_out is a LoRA target here: the tiny random generator predicts x0 ~ 0 (grey images), and attention LoRAs
    # alone barely move that output; group of 8 so the SDE's noise does not drown the signal
    kw = dict(algorithm=algorithm, group_size=8, max_steps=10, lr=1e-2, adv_mode="mean_std",
              lora_targets=["to_q", "to_k", "to_v", "to_out.0", "proj_out"])
    if algorithm == "awm":
        kw.update(noise_level=0.0, max_steps=6, lr=3e-2)
    s = GRPOSession(_cfg(tmp_path, **kw), make_adapter("shapesworld", tiny_shapes_pipeline()), brightness_reward,
                    train_prompts=PROMPTS, eval_prompts=PROMPTS).start()
    before = s.evaluate(save_grid=False)["reward_mean"]
    s.run()
    after = s.evaluate()
    assert after["reward_mean"] > before + 5e-4, (before, after)  # random tiny nets move slowly; deterministic seeds
    assert os.path.isfile(after["grid"])
    assert (after["kl"] > 0) == (algorithm == "grpo")  # eval KL needs noise_level > 0


def test_stop_event_stops_and_saves(tmp_path):
    s = GRPOSession(_cfg(tmp_path, max_steps=100), make_adapter("shapesworld", tiny_shapes_pipeline()),
                    brightness_reward, train_prompts=PROMPTS).start()
    stop = threading.Event()
    seen = []

    def cb(m):
        seen.append(m)
        if len(seen) == 2:
            stop.set()
    s.run(stop, cb)
    assert s.step_count == 2 and s.latest_checkpoint().endswith("step-000002")


def _lora(path):
    return load_file(os.path.join(path, "lora.safetensors"))


@pytest.mark.slow
def test_kill_mid_run_then_resume_is_bit_identical(tmp_path):
    from fixtures.grpo_run import session
    script = os.path.join(os.path.dirname(__file__), "fixtures", "grpo_run.py")
    killed = str(tmp_path / "killed")
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, script, killed, "100000"], env=env)
    ck = os.path.join(killed, "checkpoints", "step-000002", "state.pt")
    t0 = time.time()
    while not os.path.isfile(ck):
        assert proc.poll() is None and time.time() - t0 < 120, "training subprocess did not reach step 2"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    # resume in a fresh process from the step-2 checkpoint up to step 4
    resumed = str(tmp_path / "resumed")
    subprocess.run([sys.executable, script, resumed, "4", os.path.join(killed, "checkpoints", "step-000002")],
                   env=env, check=True, timeout=120)
    # uninterrupted reference run 0 -> 4
    ref = session(str(tmp_path / "ref"), 4).start()
    ref.run()
    for step in (3, 4):
        a = _lora(os.path.join(resumed, "checkpoints", f"step-{step:06d}"))
        b = _lora(os.path.join(str(tmp_path / "ref"), "checkpoints", f"step-{step:06d}"))
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), (step, k)
    st_a = torch.load(os.path.join(resumed, "checkpoints", "step-000004", "state.pt"), weights_only=True)
    st_b = torch.load(os.path.join(str(tmp_path / "ref"), "checkpoints", "step-000004", "state.pt"), weights_only=True)
    strip = lambda h: [{k: v for k, v in m.items() if not k.startswith("time_")} for m in h]  # noqa: E731
    assert strip(st_a["history"]) == strip(st_b["history"])
    # no temp folders left behind by the atomic writes of the finished runs
    assert not [d for d in os.listdir(os.path.join(resumed, "checkpoints")) if d.startswith(".tmp")]


def test_resume_restores_lora_and_optimizer_in_process(tmp_path):
    a = GRPOSession(_cfg(tmp_path, max_steps=2), make_adapter("shapesworld", tiny_shapes_pipeline()),
                    brightness_reward, train_prompts=PROMPTS).start()
    a.run()
    ck = a.latest_checkpoint()
    b = GRPOSession(_cfg(tmp_path, max_steps=2, output_dir=str(tmp_path / "b")),
                    make_adapter("shapesworld", tiny_shapes_pipeline()), brightness_reward,
                    train_prompts=PROMPTS).start(resume=ck)
    assert b.step_count == 2
    for pa, pb in zip(a.params, b.params):
        assert torch.equal(pa, pb)
    sa, sb = a.opt.state_dict()["state"], b.opt.state_dict()["state"]
    assert all(torch.equal(sa[k]["exp_avg"], sb[k]["exp_avg"]) for k in sa)


def test_awm_negative_weight_scales_only_negative_advantages(tmp_path):
    """With awm_negative_weight 0 a batch whose advantages are all negative leaves the LoRA untouched, and mixed
    advantages give the loss of the positive terms alone (compared with weight 1 on the same samples and noise)."""
    def session(weight, sub):
        s = GRPOSession(_cfg(tmp_path, algorithm="awm", awm_negative_weight=weight, output_dir=str(tmp_path / sub)),
                        make_adapter("shapesworld", tiny_shapes_pipeline()), brightness_reward,
                        train_prompts=PROMPTS).start()
        cond = s.adapter.encode(["a red circle"] * 2, 1.0)
        traj = s.sample(cond, [1, 2], 3, 1.0, 0.0, set(), None, record=False, rows=(0, 2, 2))
        return s, cond, traj

    s, cond, traj = session(0.0, "zero")
    before = {n: p.detach().clone() for n, p in s.adapter.transformer.named_parameters() if p.requires_grad}
    m = s._update_awm(traj, cond, torch.tensor([-1.0, -0.5]), (0, 2, 2))
    assert m["loss"] == 0.0
    after = dict(s.adapter.transformer.named_parameters())
    assert all(torch.equal(before[n], after[n]) for n in before)
    pos_only = s._update_awm(traj, cond, torch.tensor([0.0, 1.0]), (0, 2, 2))["loss"]
    s1, cond1, traj1 = session(1.0, "one")
    mixed = s1._update_awm(traj1, cond1, torch.tensor([-3.0, 1.0]), (0, 2, 2))["loss"]
    s0, cond0, traj0 = session(0.0, "zero2")
    clipped = s0._update_awm(traj0, cond0, torch.tensor([-3.0, 1.0]), (0, 2, 2))["loss"]
    assert clipped == pytest.approx(pos_only, rel=1e-5) and mixed < clipped
    with pytest.raises(ValueError, match="awm_negative_weight"):
        _cfg(tmp_path, awm_negative_weight=1.5).validate()


def test_layout_encoder_lora_trains_checkpoints_and_exports_with_the_transformer(tmp_path):
    """lora_extra=["layout_encoder"]: both components get a LoRA, the self-checks stay exact, an update moves both,
    the base model (all LoRAs off) is untouched, a checkpoint restores both, and the exported file loads into a
    fresh pipeline (ShapesWorldPipeline.load_lora_weights) with identical output."""
    import copy
    base_pipe = tiny_shapes_pipeline(layout=True)
    pipe = copy.deepcopy(base_pipe)
    cfg = _cfg(tmp_path, lora_extra=["layout_encoder"], kl_beta=0.1, lr=3e-2)
    s = GRPOSession(cfg, make_adapter("shapesworld", pipe), brightness_reward, train_prompts=PROMPTS).start()
    assert s.self_check_report == {"pipeline_max_abs_diff": 0.0, "ratio_max_dev": 0.0, "kl_init": 0.0}
    wrapped = {n for n, m in pipe.layout_encoder.named_modules() if hasattr(m, "lora_A")}
    linears = {n for n, m in base_pipe.layout_encoder.named_modules() if isinstance(m, torch.nn.Linear)}
    assert wrapped == linears and wrapped  # every nn.Linear of the layout encoder, nothing else
    s.run()
    for module in (pipe.transformer, pipe.layout_encoder):
        lora_b = [p for n, p in module.named_parameters() if "lora_B" in n]
        assert lora_b and max(float(p.abs().max()) for p in lora_b) > 0, type(module).__name__
    ad_base = make_adapter("shapesworld", base_pipe)
    want_base = ad_base.pipeline_images(["a red circle"], [3], 3, 2.0)
    trained = s.adapter.pipeline_images(["a red circle"], [3], 3, 2.0)
    assert not torch.equal(trained, want_base)
    with s.base_model():
        assert torch.equal(s.adapter.pipeline_images(["a red circle"], [3], 3, 2.0), want_base)
    ckpt = s.latest_checkpoint()
    assert os.path.isfile(os.path.join(ckpt, "lora.layout_encoder.safetensors"))
    s2 = GRPOSession(cfg, make_adapter("shapesworld", copy.deepcopy(base_pipe)), brightness_reward,
                     train_prompts=PROMPTS, run_self_checks=False).start(resume="latest")
    assert s2.step_count == s.step_count
    assert torch.equal(s2.adapter.pipeline_images(["a red circle"], [3], 3, 2.0), trained)
    path = s.export_lora(str(tmp_path / "lora.safetensors"))
    fresh = copy.deepcopy(base_pipe)
    assert fresh.load_lora_weights(path) == ["transformer", "layout_encoder"]
    assert torch.equal(make_adapter("shapesworld", fresh).pipeline_images(["a red circle"], [3], 3, 2.0), trained)
    from promptecho.grpo.export import export_checkpoint
    again = export_checkpoint(ckpt, str(tmp_path / "from_ckpt.safetensors"))
    assert load_file(again).keys() == load_file(path).keys()


def test_lora_extra_names_what_the_adapter_can_adapt(tmp_path):
    with pytest.raises(AdapterError, match="cannot adapt 'text_encoder'.*layout_encoder"):
        GRPOSession(_cfg(tmp_path, lora_extra=["text_encoder"]), make_adapter("shapesworld", tiny_shapes_pipeline(layout=True)),
                    brightness_reward, train_prompts=PROMPTS).start()
    with pytest.raises(AdapterError, match="nothing besides the transformer"):
        GRPOSession(_cfg(tmp_path, lora_extra=["layout_encoder"]), make_adapter("shapesworld", tiny_shapes_pipeline()),
                    brightness_reward, train_prompts=PROMPTS).start()


def _record_velocity_inputs(session) -> list:
    """Wrap the session adapter's velocity so every call's (x_t, sigma) is appended to the returned list."""
    seen = []
    velocity = session.adapter.velocity
    session.adapter.velocity = lambda xt, sigma, *a: seen.append((xt.detach(), sigma)) or velocity(xt, sigma, *a)
    return seen


@pytest.mark.parametrize("group_noise", [True, False])
def test_awm_group_noise_gives_a_group_common_noise_so_identical_samples_cancel(tmp_path, group_noise):
    """awm_group_noise: every row of a prompt's group is noised with the same sigma and noise, different groups with
    different ones; a group of identical samples then contributes exactly nothing for advantages that sum to zero
    (per-row noise leaves a random, nonzero loss)."""
    s = GRPOSession(_cfg(tmp_path, algorithm="awm", awm_group_noise=group_noise, awm_timesteps=2),
                    make_adapter("shapesworld", tiny_shapes_pipeline()), brightness_reward,
                    train_prompts=PROMPTS).start()
    cond = s.adapter.encode(["a red circle"] * 2 + ["a blue square"] * 2, 1.0)
    traj = s.sample(cond, [1, 2, 3, 4], 3, 1.0, 0.0, set(), None, record=False, rows=(0, 4, 4))
    traj.x0 = traj.x0[[0, 0, 2, 2]]  # each group holds two copies of one sample
    seen = _record_velocity_inputs(s)
    m = s._update_awm(traj, cond, torch.tensor([1.0, -1.0, 0.5, -0.5]), (0, 4, 4))
    assert len(seen) == 2
    for xt, sigma in seen:
        same = [torch.equal(sigma[0], sigma[1]), torch.equal(sigma[2], sigma[3]), torch.equal(xt[0], xt[1]),
                torch.equal(xt[2], xt[3])]
        assert all(same) if group_noise else not any(same)
        assert not torch.equal(sigma[0], sigma[2]) and not torch.equal(xt[0], xt[2])
    if group_noise:
        assert abs(m["loss"]) < 1e-12
    else:
        assert abs(m["loss"]) > 1e-6


def test_awm_sigma_range_bounds_the_noise_levels_awm_trains_on(tmp_path):
    """awm_sigma_range: every noise level AWM draws lies in [low, high], and the draws fill it (not a constant)."""
    s = GRPOSession(_cfg(tmp_path, algorithm="awm", awm_sigma_range=[0.6, 0.9], awm_timesteps=8),
                    make_adapter("shapesworld", tiny_shapes_pipeline()), brightness_reward,
                    train_prompts=PROMPTS).start()
    cond = s.adapter.encode(["a red circle"] * 4, 1.0)
    traj = s.sample(cond, [1, 2, 3, 4], 3, 1.0, 0.0, set(), None, record=False, rows=(0, 4, 4))
    seen = _record_velocity_inputs(s)
    s._update_awm(traj, cond, torch.tensor([1.0, -1.0, 0.5, -0.5]), (0, 4, 4))
    sig = torch.cat([sigma for _, sigma in seen])
    assert len(sig) == 32 and float(sig.min()) >= 0.6 and float(sig.max()) <= 0.9
    assert float(sig.max() - sig.min()) > 0.15


@pytest.mark.parametrize("bad", [[0.0, 0.5], [0.5, 0.5], [0.7, 0.3], [0.2, 1.5], [0.5], ["0.2", 0.5], 0.5])
def test_awm_sigma_range_is_validated(bad):
    with pytest.raises(ConfigError, match="awm_sigma_range"):
        GRPOConfig(awm_sigma_range=bad).validate()


def test_awm_ema_kl_is_zero_at_first_and_the_average_follows_each_update(tmp_path):
    """ema_kl_beta: the moving average starts at the initial LoRA weights, so the first update's loss equals the
    plain AWM loss; after each optimiser step ema = decay * ema + (1 - decay) * weights (checked by hand); the
    velocity distance to it is positive once the weights have moved; a checkpoint restores it exactly."""
    def session(sub, **kw):
        cfg = _cfg(tmp_path / sub, algorithm="awm", awm_timesteps=2, **kw)
        return GRPOSession(cfg, make_adapter("shapesworld", tiny_shapes_pipeline()), brightness_reward,
                           train_prompts=PROMPTS, run_self_checks=False).start()
    plain, ema = session("plain"), session("ema", ema_kl_beta=0.5, ema_decay=0.75)
    assert all(torch.equal(e, p) for e, p in zip(ema.ema, ema.params))
    m_plain, m_ema = plain.step(), ema.step()
    assert m_ema["loss"] == m_plain["loss"] and m_ema["ema_kl"] == 0.0
    before = [e.clone() for e in ema.ema]
    m2 = ema.step()
    want = [0.75 * b + 0.25 * p.detach() for b, p in zip(before, ema.params)]
    assert all(torch.allclose(e, w, atol=1e-7, rtol=0) for e, w in zip(ema.ema, want))
    assert m2["ema_kl"] > 0
    assert not all(torch.equal(e, p) for e, p in zip(ema.ema, ema.params))
    ckpt = ema.save_checkpoint()
    again = session("ema", ema_kl_beta=0.5, ema_decay=0.75)
    again.load_checkpoint(ckpt)
    assert all(torch.equal(a, e) for a, e in zip(again.ema, ema.ema))
    with pytest.raises(ValueError, match="no moving average"):
        session("ema2", ema_kl_beta=0.5).load_checkpoint(plain.save_checkpoint())


def test_ema_kl_beta_is_validated():
    with pytest.raises(ConfigError, match="AWM option"):
        GRPOConfig(algorithm="grpo", ema_kl_beta=0.1).validate()
    with pytest.raises(ConfigError, match="ema_decay"):
        GRPOConfig(algorithm="awm", ema_kl_beta=0.1, ema_decay=1.0).validate()
