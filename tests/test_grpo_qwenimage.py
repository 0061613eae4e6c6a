"""Qwen-Image adapter on a tiny random-weight QwenImagePipeline (Qwen2.5-VL text encoder with a 2-layer 32-d
language model and a 1-layer vision tower that the text path never runs; saved and reloaded with from_pretrained):
noise-level-0 sampling reproduces the pipeline's own output (true CFG with norm rescaling off and on, prompts of
different lengths in one batch), ratio 1 and KL 0 before the first update; the exported LoRA loads in diffusers
with identical output and uses keys ComfyUI maps for Qwen-Image."""
import pytest
import torch

from fixtures.adapter_checks import (RES, awm_step_moves_lora, bf16_session_self_check, per_sample_sigma_matches_scalar,
                                     check_against_comfy_map, export_reload_equal, self_checked_session,
                                     trained_session)
from fixtures.tiny_pipelines import tiny_qwenimage_pipeline
from promptecho.grpo.adapters import AdapterError, make_adapter

TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out", "img_mlp.net.2",
           "txt_mod.1"]


def comfy_qwenimage_map(n_blocks):
    """ComfyUI's Qwen-Image model keeps diffusers' module names, and its LoRA loader maps "transformer.<name>" to
    "diffusion_model.<name>.weight" for every weight of that model. Its Linear layers, written out by hand from
    ComfyUI's Qwen-Image layout (no fused projections):"""
    names = ["img_in", "txt_in", "time_text_embed.timestep_embedder.linear_1",
             "time_text_embed.timestep_embedder.linear_2", "norm_out.linear", "proj_out"]
    for i in range(n_blocks):
        b = f"transformer_blocks.{i}."
        names += [b + n for n in ("img_mod.1", "txt_mod.1", "img_mlp.net.0.proj", "img_mlp.net.2",
                                  "txt_mlp.net.0.proj", "txt_mlp.net.2")]
        names += [b + "attn." + n for n in ("to_q", "to_k", "to_v", "add_q_proj", "add_k_proj", "add_v_proj",
                                            "to_out.0", "to_add_out")]
    return {f"transformer.{n}": (f"diffusion_model.{n}.weight", None) for n in names}


@pytest.fixture(autouse=True)
def _threads():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tiny-qwenimage"))


@pytest.fixture(scope="module")
def pipe(folder):
    return tiny_qwenimage_pipeline(out_dir=folder)


@pytest.mark.parametrize("cfg_scale", [1.0, 4.0])
def test_qwenimage_self_checks_with_and_without_cfg(tmp_path, pipe, cfg_scale):
    s, m = self_checked_session(tmp_path, "qwenimage", pipe, cfg_scale)
    assert s.self_check_report == {"pipeline_max_abs_diff": 0.0, "ratio_max_dev": 0.0, "kl_init": 0.0}
    assert m["ratio_dev"] == 0.0 and m["kl"] == 0.0


def test_qwenimage_mixed_prompt_lengths_match_the_pipeline(pipe):
    """Prompts of different lengths in one batch: the padding mask goes to the transformer as in __call__."""
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


def test_qwenimage_refuses_other_pipelines_and_bad_resolution(pipe):
    from fixtures.grpo import tiny_shapes_pipeline
    with pytest.raises(AdapterError, match="QwenImagePipeline"):
        make_adapter("qwenimage", tiny_shapes_pipeline())
    with pytest.raises(AdapterError, match="multiple of 8"):
        make_adapter("qwenimage", pipe, resolution=36)


def test_qwenimage_lora_export_round_trip_and_comfyui_keys(tmp_path, pipe):
    s = trained_session(tmp_path, "qwenimage", pipe, TARGETS)
    path = export_reload_equal(tmp_path, s, pipe, "qwenimage", cfg_scale=4.0)
    tr = s.adapter.transformer
    mods = check_against_comfy_map(path, tr, TARGETS, comfy_qwenimage_map(len(tr.transformer_blocks)))
    assert len(mods) == 10 * len(tr.transformer_blocks)


def test_qwenimage_self_checks_hold_in_bf16(tmp_path, pipe, folder):
    rep = bf16_session_self_check(tmp_path, "qwenimage", folder, 4.0)
    assert rep == {"pipeline_max_abs_diff": 0.0, "ratio_max_dev": 0.0, "kl_init": 0.0}


def test_qwenimage_awm_per_sample_sigmas_and_step(tmp_path, pipe):
    per_sample_sigma_matches_scalar("qwenimage", pipe)
    awm_step_moves_lora(tmp_path, "qwenimage", pipe)
