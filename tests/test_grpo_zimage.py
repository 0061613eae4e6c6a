"""Z-Image adapter on a tiny random-weight ZImagePipeline (saved and reloaded with from_pretrained): the GRPO
sampler at noise level 0 reproduces the pipeline's own output (with and without CFG), ratio 1 and KL 0 before the
first update; the exported LoRA loads in diffusers with identical output and uses keys ComfyUI maps for Z-Image."""
import pytest
import torch

from fixtures.adapter_checks import (RES, awm_step_moves_lora, bf16_session_self_check, per_sample_sigma_matches_scalar,
                                     check_against_comfy_map, export_reload_equal, self_checked_session,
                                     trained_session)
from fixtures.tiny_pipelines import tiny_zimage_pipeline
from promptecho.grpo.adapters import AdapterError, make_adapter

TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "w1", "w2", "w3"]  # attention + SwiGLU feed-forward


def comfy_zimage_map(n_layers, n_refiner, dim):
    """ComfyUI's map for diffusers-format Z-Image LoRA keys ("transformer.<diffusers module>"), written out by hand
    from ComfyUI's Z-Image (Lumina2/NextDiT) layout: q, k, v are rows [0, dim), [dim, 2 dim), [2 dim, 3 dim) of the
    fused `attention.qkv`, `to_out.0` is `attention.out`, feed-forward and modulation keep their names."""
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


@pytest.fixture(autouse=True)
def _threads():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tiny-zimage"))


@pytest.fixture(scope="module")
def pipe(folder):
    return tiny_zimage_pipeline(out_dir=folder)


@pytest.mark.parametrize("cfg_scale", [1.0, 3.0])
def test_zimage_self_checks_with_and_without_cfg(tmp_path, pipe, cfg_scale):
    s, m = self_checked_session(tmp_path, "zimage", pipe, cfg_scale)
    assert s.self_check_report == {"pipeline_max_abs_diff": 0.0, "ratio_max_dev": 0.0, "kl_init": 0.0}
    assert m["ratio_dev"] == 0.0 and m["kl"] == 0.0


def test_zimage_cfg_convention_and_velocity_sign(pipe):
    """The trainer's CFG scale w is Z-Image's guidance_scale w - 1; velocity() is d x / d sigma (the pipeline
    negates the model output): checked against the transformer called directly, an independent computation."""
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


def test_zimage_refuses_other_pipelines_and_bad_resolution(pipe):
    from fixtures.grpo import tiny_shapes_pipeline
    with pytest.raises(AdapterError, match="ZImagePipeline"):
        make_adapter("zimage", tiny_shapes_pipeline())
    with pytest.raises(AdapterError, match="multiple of 16"):
        make_adapter("zimage", pipe, resolution=40)


def test_zimage_lora_export_round_trip_and_comfyui_keys(tmp_path, pipe):
    s = trained_session(tmp_path, "zimage", pipe, TARGETS)
    path = export_reload_equal(tmp_path, s, pipe, "zimage")
    tr = s.adapter.transformer
    cmap = comfy_zimage_map(len(tr.layers), len(tr.noise_refiner), tr.config.dim)
    mods = check_against_comfy_map(path, tr, TARGETS, cmap)
    n_blocks = len(tr.layers) + 2 * len(tr.noise_refiner)  # main layers and both refiners, 7 modules each
    assert len(mods) == 7 * n_blocks


def test_zimage_self_checks_hold_in_bf16(tmp_path, pipe, folder):
    rep = bf16_session_self_check(tmp_path, "zimage", folder, 3.0)
    assert rep == {"pipeline_max_abs_diff": 0.0, "ratio_max_dev": 0.0, "kl_init": 0.0}


def test_zimage_awm_per_sample_sigmas_and_step(tmp_path, pipe):
    per_sample_sigma_matches_scalar("zimage", pipe)
    awm_step_moves_lora(tmp_path, "zimage", pipe)
