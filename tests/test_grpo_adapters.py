"""The pipeline adapters (Z-Image, FLUX.1, Qwen-Image) on tiny random-weight pipelines, saved and reloaded with
from_pretrained. For every adapter: the GRPO sampler at noise level 0 reproduces the pipeline's own output (CFG off
and on, in fp32 and bf16), ratio 1 and KL 0 before the first update; the exported LoRA loads in diffusers with
identical output and uses keys ComfyUI maps for that model; velocity() takes one sigma per sample and an AWM step
moves the LoRA; other pipeline types and resolutions off the latent grid are refused. Below those, the checks
of what only one adapter has: Z-Image's CFG convention and velocity sign, FLUX.1-dev's embedded guidance and
FLUX.1-schnell's layout without it, Qwen-Image's padding masks with its norm-rescaled CFG.

The tiny pipelines: Z-Image with a Qwen3 text encoder; FLUX.1 dev layout (guidance embedding) and schnell layout
(none); Qwen-Image with a Qwen2.5-VL text encoder (2-layer 32-d language model, a 1-layer vision tower the text
path never runs)."""
import functools

import pytest
import torch

from fixtures.adapter_checks import (EXACT, PROMPTS, RES, AdapterSpec, awm_step_moves_lora, bf16_session_self_check,
                                     cfg, check_against_comfy_map, export_reload_equal, per_sample_sigma_matches_scalar,
                                     self_checked_session, trained_session)
from fixtures.grpo import brightness_reward, tiny_shapes_pipeline
from fixtures.tiny_pipelines import tiny_flux_pipeline, tiny_qwenimage_pipeline, tiny_zimage_pipeline
from promptecho.grpo.adapters import AdapterError, make_adapter
from promptecho.grpo.trainer import GRPOSession

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ------------------------------------------------------------------------------ ComfyUI's LoRA key maps
def comfy_zimage_map(tr):
    """ComfyUI's map for diffusers-format Z-Image LoRA keys ("transformer.<diffusers module>"), written out by hand
    from ComfyUI's Z-Image (Lumina2/NextDiT) layout: q, k, v are rows [0, dim), [dim, 2 dim), [2 dim, 3 dim) of the
    fused `attention.qkv`, `to_out.0` is `attention.out`, feed-forward and modulation keep their names."""
    n_layers, n_refiner, dim = len(tr.layers), len(tr.noise_refiner), tr.config.dim
    m = {}
    blocks = ([f"layers.{i}" for i in range(n_layers)] + [f"context_refiner.{i}" for i in range(n_refiner)]
              + [f"noise_refiner.{i}" for i in range(n_refiner)])
    for b in blocks:
        d, c = f"transformer.{b}.", f"diffusion_model.{b}."
        for j, q in enumerate("qkv"):
            m[d + f"attention.to_{q}"] = (c + "attention.qkv.weight", (j * dim, dim))
        m[d + "attention.to_out.0"] = (c + "attention.out.weight", None)
        for w in ("w1", "w2", "w3"):
            m[d + f"feed_forward.{w}"] = (c + f"feed_forward.{w}.weight", None)
        m[d + "adaLN_modulation.0"] = (c + "adaLN_modulation.0.weight", None)
    for dname, cname in [("all_final_layer.2-1.linear", "final_layer.linear"),
                         ("all_final_layer.2-1.adaLN_modulation.1", "final_layer.adaLN_modulation.1"),
                         ("all_x_embedder.2-1", "x_embedder"), ("cap_embedder.1", "cap_embedder.1"),
                         ("t_embedder.mlp.0", "t_embedder.mlp.0"), ("t_embedder.mlp.2", "t_embedder.mlp.2")]:
        m["transformer." + dname] = (f"diffusion_model.{cname}.weight", None)
    return m


def comfy_flux_map(tr):
    """ComfyUI's map for diffusers-format Flux LoRA keys ("transformer.<diffusers module>"), written out by hand from
    ComfyUI's Flux layout: double blocks fuse q,k,v into img_attn.qkv / txt_attn.qkv; single blocks fuse q, k, v and
    the MLP input into linear1 (rows [0,h), [h,2h), [2h,3h), [3h,7h)) and use linear2 as output projection."""
    n_double, n_single, hidden = len(tr.transformer_blocks), len(tr.single_transformer_blocks), tr.inner_dim
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


def comfy_qwenimage_map(tr):
    """ComfyUI's Qwen-Image model keeps diffusers' module names, and its LoRA loader maps "transformer.<name>" to
    "diffusion_model.<name>.weight" for every weight of that model. Its Linear layers, written out by hand from
    ComfyUI's Qwen-Image layout (no fused projections):"""
    names = ["img_in", "txt_in", "time_text_embed.timestep_embedder.linear_1",
             "time_text_embed.timestep_embedder.linear_2", "norm_out.linear", "proj_out"]
    for i in range(len(tr.transformer_blocks)):
        b = f"transformer_blocks.{i}."
        names += [b + n for n in ("img_mod.1", "txt_mod.1", "img_mlp.net.0.proj", "img_mlp.net.2",
                                  "txt_mlp.net.0.proj", "txt_mlp.net.2")]
        names += [b + "attn." + n for n in ("to_q", "to_k", "to_v", "add_q_proj", "add_k_proj", "add_v_proj",
                                            "to_out.0", "to_add_out")]
    return {f"transformer.{n}": (f"diffusion_model.{n}.weight", None) for n in names}


# ------------------------------------------------------------------------------------------- the adapters
ZIMAGE = AdapterSpec(
    # CFG: the trainer's w is the pipeline's guidance_scale w - 1
    name="zimage", build=tiny_zimage_pipeline, pipeline_class="ZImagePipeline",
    self_check_cases=((1.0, {}), (3.0, {})), bf16_cfg=3.0, bad_resolution=(40, 16),
    lora_targets=("to_q", "to_k", "to_v", "to_out.0", "w1", "w2", "w3"),  # attention + SwiGLU feed-forward
    comfy_map=comfy_zimage_map,
    # main layers and both refiners, 7 modules each
    n_lora_modules=lambda tr: 7 * (len(tr.layers) + 2 * len(tr.noise_refiner)))

FLUX_DEV = AdapterSpec(
    # CFG: true_cfg_scale (two passes); FLUX.1-dev's guidance is an input of the transformer, any value self-checks
    name="flux", build=functools.partial(tiny_flux_pipeline, guidance_embeds=True), pipeline_class="FluxPipeline",
    self_check_cases=((1.0, {"guidance": 3.5}), (3.0, {"guidance": 3.5}), (1.0, {"guidance": 1.5})),
    attrs={"guidance_embeds": True}, bf16_cfg=3.0, bad_resolution=(40, 16),
    lora_targets=("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out",
                  "proj_mlp", "ff.net.2"),
    comfy_map=comfy_flux_map,
    # double blocks: 8 attention projections + ff.net.2; single blocks: q, k, v (no to_out) + proj_mlp
    n_lora_modules=lambda tr: 9 * len(tr.transformer_blocks) + 4 * len(tr.single_transformer_blocks))

QWENIMAGE = AdapterSpec(
    # CFG: true_cfg_scale (two passes) with the pipeline's per-token norm rescale
    name="qwenimage", build=tiny_qwenimage_pipeline, pipeline_class="QwenImagePipeline",
    self_check_cases=((1.0, {}), (4.0, {})), bf16_cfg=4.0, bad_resolution=(36, 8),
    lora_targets=("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out",
                  "img_mlp.net.2", "txt_mod.1"),
    comfy_map=comfy_qwenimage_map, n_lora_modules=lambda tr: 10 * len(tr.transformer_blocks), export_cfg=4.0)

SPECS = [ZIMAGE, FLUX_DEV, QWENIMAGE]
over_adapters = pytest.mark.parametrize("spec", SPECS, ids=str)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """tiny(spec) -> (folder, pipeline): each tiny pipeline is built, saved and reloaded once for the module."""
    built = {}

    def get(spec: AdapterSpec):
        if spec.name not in built:
            folder = str(tmp_path_factory.mktemp(f"tiny-{spec.name}"))
            built[spec.name] = folder, spec.build(out_dir=folder)
        return built[spec.name]
    return get


# ------------------------------------------------------------------------------------------ shared checks
def _case_id(spec, cfg_scale, kw):
    return "-".join([spec.name, f"cfg{cfg_scale}"] + [f"{k}{v}" for k, v in kw.items()])


@pytest.mark.parametrize("spec,cfg_scale,adapter_kw", [
    pytest.param(s, c, kw, id=_case_id(s, c, kw)) for s in SPECS for c, kw in s.self_check_cases])
def test_self_checks(tmp_path, tiny, spec, cfg_scale, adapter_kw):
    _, pipe = tiny(spec)
    s, m = self_checked_session(tmp_path, spec.name, pipe, cfg_scale, adapter_kw=adapter_kw)
    for k, v in {**spec.attrs, **adapter_kw}.items():
        assert getattr(s.adapter, k) == v, k
    assert s.self_check_report == EXACT
    assert m["ratio_dev"] == 0.0 and m["kl"] == 0.0


@over_adapters
def test_refuses_other_pipelines_and_bad_resolution(tiny, spec):
    _, pipe = tiny(spec)
    res, multiple = spec.bad_resolution
    with pytest.raises(AdapterError, match=spec.pipeline_class):
        make_adapter(spec.name, tiny_shapes_pipeline())
    with pytest.raises(AdapterError, match=f"multiple of {multiple}"):
        make_adapter(spec.name, pipe, resolution=res)


@over_adapters
def test_lora_export_round_trip_and_comfyui_keys(tmp_path, tiny, spec):
    _, pipe = tiny(spec)
    s = trained_session(tmp_path, spec.name, pipe, spec.lora_targets)
    path = export_reload_equal(tmp_path, s, pipe, spec.name, cfg_scale=spec.export_cfg)
    tr = s.adapter.transformer
    mods = check_against_comfy_map(path, tr, spec.lora_targets, spec.comfy_map(tr))
    assert len(mods) == spec.n_lora_modules(tr)


@over_adapters
def test_self_checks_hold_in_bf16(tmp_path, tiny, spec):
    folder, _ = tiny(spec)
    assert bf16_session_self_check(tmp_path, spec.name, folder, spec.bf16_cfg) == EXACT


@over_adapters
def test_awm_per_sample_sigmas_and_step(tmp_path, tiny, spec):
    _, pipe = tiny(spec)
    per_sample_sigma_matches_scalar(spec.name, pipe)
    awm_step_moves_lora(tmp_path, spec.name, pipe)


# ------------------------------------------------------------------------------------ Z-Image only
def test_zimage_cfg_convention_and_velocity_sign(tiny):
    """The trainer's CFG scale w is Z-Image's guidance_scale w - 1; velocity() is d x / d sigma (the pipeline
    negates the model output): checked against the transformer called directly, an independent computation."""
    _, pipe = tiny(ZIMAGE)
    ad = make_adapter("zimage", pipe, resolution=RES)
    cond = ad.encode(["a red circle"], 3.0)
    x = ad.initial_noise([3])
    sig = ad.sigmas(4)
    with torch.no_grad():
        v = ad.velocity(x, sig[1], cond, 3.0)
        tr = pipe.transformer
        t = torch.tensor([1.0 - float(sig[1])])
        pos = tr([x[0].unsqueeze(1)], t, [cond["embeds"][0, :int(cond["lens"][0])]], return_dict=False)[0][0]
        neg = tr([x[0].unsqueeze(1)], t, [cond["neg_embeds"][0, :int(cond["neg_lens"][0])]], return_dict=False)[0][0]
    want = -(neg + 3.0 * (pos - neg)).squeeze(1)
    assert torch.allclose(v[0], want, atol=1e-5), float((v[0] - want).abs().max())
    # the scale really is applied: a different scale gives a different velocity
    with torch.no_grad():
        assert not torch.allclose(ad.velocity(x, sig[1], cond, 2.0), v)


# --------------------------------------------------------------------------------------- FLUX.1 only
def test_flux_guidance_is_an_input_not_a_second_pass(tiny):
    """FLUX.1-dev: the embedded guidance changes the velocity of a single forward pass; the pipeline at another
    guidance value gives other images, so the self-check's agreement above is not vacuous."""
    _, dev = tiny(FLUX_DEV)
    a, b = make_adapter("flux", dev, resolution=RES, guidance=3.5), make_adapter("flux", dev, resolution=RES, guidance=1.5)
    cond = a.encode(["a red circle"], 1.0)
    x, sig = a.initial_noise([4]), a.sigmas(3)
    with torch.no_grad():
        assert not torch.allclose(a.velocity(x, sig[0], cond, 1.0), b.velocity(x, sig[0], cond, 1.0))
    assert not torch.equal(a.pipeline_images(["a red circle"], [4], 3, 1.0), b.pipeline_images(["a red circle"], [4], 3, 1.0))


def test_flux_session_from_a_config_alone_loads_the_folder_and_uses_its_guidance(tmp_path, tiny):
    """The path a user takes: a config naming the pipeline folder; the config's guidance reaches the adapter."""
    dev_dir, _ = tiny(FLUX_DEV)
    s = GRPOSession(cfg(tmp_path, "flux", pipeline=dev_dir, guidance=2.0), reward_fn=brightness_reward,
                    train_prompts=PROMPTS).start()
    assert type(s.adapter.pipe).__name__ == "FluxPipeline" and s.adapter.guidance == 2.0
    assert s.self_check_report["pipeline_max_abs_diff"] == 0.0


def test_flux_schnell_layout_without_guidance_embedding(tmp_path):
    pipe = tiny_flux_pipeline(seed=1, guidance_embeds=False)
    s, m = self_checked_session(tmp_path, "flux", pipe, 2.0)
    assert not s.adapter.guidance_embeds
    assert s.self_check_report == EXACT


# ----------------------------------------------------------------------------------- Qwen-Image only
def test_qwenimage_mixed_prompt_lengths_match_the_pipeline(tiny):
    """Prompts of different lengths in one batch: the padding mask goes to the transformer as in __call__, and
    sampling with the norm-rescaled CFG equals the pipeline's output exactly."""
    _, pipe = tiny(QWENIMAGE)
    ad = make_adapter("qwenimage", pipe, resolution=RES)
    prompts, seeds = ["a cat", "a blue square on the left of a small red house"], [1, 2]
    cond = ad.encode(prompts, 4.0)
    assert "mask" in cond and not bool(cond["mask"].all())
    x, sig = ad.initial_noise(seeds), ad.sigmas(3)
    with torch.no_grad():
        for i in range(3):
            x = x + (sig[i + 1] - sig[i]) * ad.velocity(x, sig[i], cond, 4.0)
        ours = ad.decode(x)
    ref = ad.pipeline_images(prompts, seeds, 3, 4.0)
    assert torch.equal(ours, ref)
    assert float(sig[-2]) == pytest.approx(0.02)  # the scheduler's terminal stretch is part of the schedule
