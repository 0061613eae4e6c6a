"""LoRA export: diffusers load_lora_weights reproduces the trained model exactly; keys are the ones ComfyUI's
LoRA loader maps for MMDiT (SD3) models; the CLI converts a checkpoint."""
import copy
import re

import pytest
import torch
from safetensors import safe_open

from fixtures.grpo import brightness_reward, tiny_sd3_pipeline, tiny_shapes_pipeline
from promptecho.grpo.adapters import make_adapter
from promptecho.grpo.config import GRPOConfig
from promptecho.grpo.trainer import GRPOSession

ALL_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"]


def comfy_sd3_expected(n_blocks):
    """ComfyUI's map for diffusers-format SD3 LoRA keys ("transformer.<diffusers module>") -> MMDiT weight, written
    out by hand from ComfyUI's documented MMDiT layout (joint_blocks.i.{x_block,context_block}.attn.{qkv,proj})."""
    m = {}
    for i in range(n_blocks):
        d, c = f"transformer.transformer_blocks.{i}.attn.", f"diffusion_model.joint_blocks.{i}."
        for j, q in enumerate("qkv"):
            m[d + f"to_{q}"] = (c + "x_block.attn.qkv.weight", j)
            m[d + f"add_{q}_proj"] = (c + "context_block.attn.qkv.weight", j)
        m[d + "to_out.0"] = (c + "x_block.attn.proj.weight", None)
        m[d + "to_add_out"] = (c + "context_block.attn.proj.weight", None)
    return m


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _trained(tmp_path, name, pipe, steps=2, targets=ALL_TARGETS):
    cfg = GRPOConfig(adapter=name, train_steps=3, eval_steps=3, group_size=2, prompts_per_step=1, lora_rank=2,
                     lora_alpha=4.0, lr=5e-2, clip_range=0.2, lora_targets=targets,
                     output_dir=str(tmp_path / "run"), max_steps=steps, eval_every=0, checkpoint_every=0)
    s = GRPOSession(cfg, make_adapter(name, pipe), brightness_reward, train_prompts=["a red cat", "a blue dog"],
                    run_self_checks=False).start()
    s.run()
    return s


def test_sd3_export_loads_in_diffusers_with_identical_output(tmp_path):
    base = tiny_sd3_pipeline()
    s = _trained(tmp_path, "sd3", copy.deepcopy(base))
    path = s.export_lora(str(tmp_path / "lora.safetensors"))
    trained = s.adapter.pipeline_images(["a red cat"], [5], 3, 1.0)
    untouched = make_adapter("sd3", copy.deepcopy(base)).pipeline_images(["a red cat"], [5], 3, 1.0)
    assert not torch.equal(trained, untouched)  # the LoRA changed the model
    fresh = copy.deepcopy(base)
    fresh.load_lora_weights(path)
    loaded = make_adapter("sd3", fresh).pipeline_images(["a red cat"], [5], 3, 1.0)
    assert torch.equal(loaded, trained)  # alpha/r = 2 folded into lora_B: exact in floating point


def test_exported_keys_match_comfyui_sd3_map(tmp_path):
    s = _trained(tmp_path, "sd3", tiny_sd3_pipeline(), steps=1)
    path = s.export_lora(str(tmp_path / "lora.safetensors"))
    expected = comfy_sd3_expected(len(s.adapter.transformer.transformer_blocks))
    with safe_open(path, "pt") as f:
        keys = list(f.keys())
        meta = f.metadata()
        shapes = {k: f.get_tensor(k).shape for k in keys}
    assert not [k for k in keys if k.endswith(".alpha")], "an .alpha tensor makes diffusers reject the file"
    assert not [k for k in keys if k.startswith("base_model.model.")], "PEFT-native keys load as nothing in diffusers"
    modules = set()
    for k in keys:
        mt = re.fullmatch(r"(.+)\.lora_(A|B)\.weight", k)
        assert mt, k
        assert mt.group(1) in expected, f"ComfyUI has no mapping for {mt.group(1)}"
        modules.add(mt.group(1))
    linears = {"transformer." + n for n, mod in s.adapter.transformer.named_modules()
               if isinstance(getattr(mod, "base_layer", None), torch.nn.Linear)
               and any(n.endswith("attn." + t) for t in ALL_TARGETS)}
    assert modules == linears  # every targeted projection of every block (the last has no to_add_out), nothing else
    assert len(modules) == len(expected) - 1
    r = 2
    for m in modules:
        assert shapes[m + ".lora_A.weight"][0] == r and shapes[m + ".lora_B.weight"][1] == r
    assert meta["rank"] == "2" and meta["alpha"] == "4.0" and meta["promptecho.alpha_folded"] == "true"


def test_shapes_export_via_load_lora_adapter_and_cli(tmp_path):
    base = tiny_shapes_pipeline()
    s = _trained(tmp_path, "shapesworld", copy.deepcopy(base))
    trained = s.adapter.pipeline_images(["a red cat"], [1], 3, 2.0)
    from promptecho.cli import main
    out = str(tmp_path / "cli.safetensors")
    assert main(["export-lora", s.out, "--out", out]) == 0  # output_dir -> its latest checkpoint
    fresh = copy.deepcopy(base)
    fresh.transformer.load_lora_adapter(out, prefix="transformer")
    loaded = make_adapter("shapesworld", fresh).pipeline_images(["a red cat"], [1], 3, 2.0)
    assert torch.equal(loaded, trained)
    assert main(["export-lora", str(tmp_path / "nothing"), "--out", out]) == 2


def test_shapes_export_with_mlp_and_output_projection_targets_round_trips(tmp_path):
    """The wide ShapesWorld targets (image-token MLPs and the output projection besides attention) export and load
    back to the trained model's exact output through the pipeline's own load_lora_weights."""
    base = tiny_shapes_pipeline()
    wide = ["to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2", "proj_out"]
    s = _trained(tmp_path, "shapesworld", copy.deepcopy(base), targets=wide)
    trained = s.adapter.pipeline_images(["a red cat"], [1], 3, 2.0)
    path = s.export_lora(str(tmp_path / "wide.safetensors"))
    with safe_open(path, "pt") as f:
        keys = set(f.keys())
    assert any(".ff.net.2." in k for k in keys) and any(k.startswith("transformer.proj_out.") for k in keys)
    assert not any("ff_context" in k for k in keys)
    fresh = copy.deepcopy(base)
    assert fresh.load_lora_weights(path) == ["transformer"]
    assert torch.equal(make_adapter("shapesworld", fresh).pipeline_images(["a red cat"], [1], 3, 2.0), trained)
    assert not torch.equal(make_adapter("shapesworld", copy.deepcopy(base)).pipeline_images(["a red cat"], [1], 3, 2.0),
                           trained)
