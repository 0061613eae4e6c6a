"""FLUX.1 adapter on tiny random-weight FluxPipelines (dev layout with a guidance embedding, schnell layout
without; saved and reloaded with from_pretrained): noise-level-0 sampling reproduces the pipeline's own output
(true CFG off and on, any embedded guidance value), ratio 1 and KL 0 before the first update; the exported LoRA
loads in diffusers with identical output and uses keys ComfyUI maps for Flux."""
import pytest
import torch

from fixtures.adapter_checks import (RES, awm_step_moves_lora, bf16_session_self_check, per_sample_sigma_matches_scalar,
                                     check_against_comfy_map, export_reload_equal, self_checked_session,
                                     trained_session)
from fixtures.tiny_pipelines import tiny_flux_pipeline
from promptecho.grpo.adapters import AdapterError, make_adapter

TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out", "proj_mlp",
           "ff.net.2"]


def comfy_flux_map(n_double, n_single, hidden):
    """ComfyUI's map for diffusers-format Flux LoRA keys ("transformer.<diffusers module>"), written out by hand from
    ComfyUI's Flux layout: double blocks fuse q,k,v into img_attn.qkv / txt_attn.qkv; single blocks fuse q, k, v and
    the MLP input into linear1 (rows [0,h), [h,2h), [2h,3h), [3h,7h)) and use linear2 as output projection."""
    m = {}
    for i in range(n_double):
        d, c = f"transformer.transformer_blocks.{i}.", f"diffusion_model.double_blocks.{i}."
        for j, q in enumerate("qkv"):
            m[d + f"attn.to_{q}"] = (c + "img_attn.qkv.weight", (j * hidden, hidden))
            m[d + f"attn.add_{q}_proj"] = (c + "txt_attn.qkv.weight", (j * hidden, hidden))
        for dn, cn in [("attn.to_out.0", "img_attn.proj"), ("attn.to_add_out", "txt_attn.proj"),
                       ("ff.net.0.proj", "img_mlp.0"), ("ff.net.2", "img_mlp.2"), ("ff_context.net.0.proj", "txt_mlp.0"),
                       ("ff_context.net.2", "txt_mlp.2"), ("norm1.linear", "img_mod.lin"),
                       ("norm1_context.linear", "txt_mod.lin")]:
            m[d + dn] = (c + cn + ".weight", None)
    for i in range(n_single):
        d, c = f"transformer.single_transformer_blocks.{i}.", f"diffusion_model.single_blocks.{i}."
        for j, q in enumerate("qkv"):
            m[d + f"attn.to_{q}"] = (c + "linear1.weight", (j * hidden, hidden))
        m[d + "proj_mlp"] = (c + "linear1.weight", (3 * hidden, 4 * hidden))
        m[d + "proj_out"] = (c + "linear2.weight", None)
        m[d + "norm.linear"] = (c + "modulation.lin.weight", None)
    for dn, cn in [("proj_out", "final_layer.linear"), ("x_embedder", "img_in"), ("context_embedder", "txt_in")]:
        m["transformer." + dn] = (f"diffusion_model.{cn}.weight", None)
    return m


@pytest.fixture(autouse=True)
def _threads():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def dev_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tiny-flux-dev"))


@pytest.fixture(scope="module")
def dev(dev_dir):
    return tiny_flux_pipeline(guidance_embeds=True, out_dir=dev_dir)


@pytest.mark.parametrize("cfg_scale,guidance", [(1.0, 3.5), (3.0, 3.5), (1.0, 1.5)])
def test_flux_dev_self_checks(tmp_path, dev, cfg_scale, guidance):
    s, m = self_checked_session(tmp_path, "flux", dev, cfg_scale, adapter_kw={"guidance": guidance})
    assert s.adapter.guidance == guidance and s.adapter.guidance_embeds
    assert s.self_check_report == {"pipeline_max_abs_diff": 0.0, "ratio_max_dev": 0.0, "kl_init": 0.0}
    assert m["ratio_dev"] == 0.0 and m["kl"] == 0.0


def test_flux_guidance_is_an_input_not_a_second_pass(dev):
    """FLUX.1-dev: the embedded guidance changes the velocity of a single forward pass; the pipeline at another
    guidance value gives other images, so the self-check's agreement above is not vacuous."""
    a, b = make_adapter("flux", dev, resolution=RES, guidance=3.5), make_adapter("flux", dev, resolution=RES, guidance=1.5)
    cond = a.encode(["a red circle"], 1.0)
    x, sig = a.initial_noise([4]), a.sigmas(3)
    with torch.no_grad():
        assert not torch.allclose(a.velocity(x, sig[0], cond, 1.0), b.velocity(x, sig[0], cond, 1.0))
    assert not torch.equal(a.pipeline_images(["a red circle"], [4], 3, 1.0), b.pipeline_images(["a red circle"], [4], 3, 1.0))


def test_flux_session_from_a_config_alone_loads_the_folder_and_uses_its_guidance(tmp_path, dev, dev_dir):
    """The path a user takes: a config naming the pipeline folder; the config's guidance reaches the adapter."""
    from fixtures.adapter_checks import PROMPTS, cfg
    from fixtures.grpo import brightness_reward
    from promptecho.grpo.trainer import GRPOSession
    s = GRPOSession(cfg(tmp_path, "flux", pipeline=dev_dir, guidance=2.0), reward_fn=brightness_reward,
                    train_prompts=PROMPTS).start()
    assert type(s.adapter.pipe).__name__ == "FluxPipeline" and s.adapter.guidance == 2.0
    assert s.self_check_report["pipeline_max_abs_diff"] == 0.0


def test_flux_schnell_layout_without_guidance_embedding(tmp_path):
    pipe = tiny_flux_pipeline(seed=1, guidance_embeds=False)
    s, m = self_checked_session(tmp_path, "flux", pipe, 2.0)
    assert not s.adapter.guidance_embeds
    assert s.self_check_report == {"pipeline_max_abs_diff": 0.0, "ratio_max_dev": 0.0, "kl_init": 0.0}


def test_flux_refuses_other_pipelines_and_bad_resolution(dev):
    from fixtures.grpo import tiny_shapes_pipeline
    with pytest.raises(AdapterError, match="FluxPipeline"):
        make_adapter("flux", tiny_shapes_pipeline())
    with pytest.raises(AdapterError, match="multiple of 16"):
        make_adapter("flux", dev, resolution=40)


def test_flux_lora_export_round_trip_and_comfyui_keys(tmp_path, dev):
    s = trained_session(tmp_path, "flux", dev, TARGETS)
    path = export_reload_equal(tmp_path, s, dev, "flux")
    tr = s.adapter.transformer
    cmap = comfy_flux_map(len(tr.transformer_blocks), len(tr.single_transformer_blocks), tr.inner_dim)
    mods = check_against_comfy_map(path, tr, TARGETS, cmap)
    # double blocks: 8 attention projections + ff.net.2; single blocks: q, k, v (no to_out) + proj_mlp
    assert len(mods) == 9 * len(tr.transformer_blocks) + 4 * len(tr.single_transformer_blocks)


def test_flux_self_checks_hold_in_bf16(tmp_path, dev, dev_dir):
    rep = bf16_session_self_check(tmp_path, "flux", dev_dir, 3.0)
    assert rep == {"pipeline_max_abs_diff": 0.0, "ratio_max_dev": 0.0, "kl_init": 0.0}


def test_flux_awm_per_sample_sigmas_and_step(tmp_path, dev):
    per_sample_sigma_matches_scalar("flux", dev)
    awm_step_moves_lora(tmp_path, "flux", dev)
