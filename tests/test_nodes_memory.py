"""Load VLM node: ComfyUI memory-manager glue and the optional bitsandbytes choice, without ComfyUI installed
(only the pieces ComfyUI provides are replaced: model_management and model_patcher)."""
import sys
import types

import pytest
import torch

from fixtures.engine import tiny_dir, tiny_vlm  # noqa: F401
from test_nodes import load_pack


@pytest.fixture()
def comfy_gpu(monkeypatch):
    """A ComfyUI whose torch device is a GPU: records what the node asks the memory manager to do."""
    pack = load_pack()
    common = sys.modules[pack.__name__ + ".nodes.common"]
    calls = []

    class Patcher:  # the attributes of comfy.model_patcher.ModelPatcher the node relies on
        def __init__(self, model, load_device, offload_device):
            model.device = offload_device  # ModelPatcher assigns this: fails on a HF PreTrainedModel
            self.model, self.load_device, self.offload_device = model, load_device, offload_device

    class Loaded:
        def __init__(self, patcher):
            self.model = patcher

        def model_unload(self):
            calls.append(("unload", self.model))

    class MM:
        current_loaded_models = []

        @staticmethod
        def get_torch_device():
            return torch.device("cuda", 0)

        @staticmethod
        def unet_offload_device():
            return torch.device("cpu")

        @staticmethod
        def load_models_gpu(models, force_full_load=False):
            calls.append(("load", models[0], force_full_load))
            if not any(m.model is models[0] for m in MM.current_loaded_models):
                MM.current_loaded_models.insert(0, Loaded(models[0]))

        @staticmethod
        def soft_empty_cache():
            calls.append(("empty",))

        @staticmethod
        def throw_exception_if_processing_interrupted():
            pass

    comfy_pkg = types.ModuleType("comfy")
    mp = types.ModuleType("comfy.model_patcher")
    mp.ModelPatcher = Patcher
    comfy_pkg.model_patcher = mp
    monkeypatch.setitem(sys.modules, "comfy", comfy_pkg)
    monkeypatch.setitem(sys.modules, "comfy.model_patcher", mp)
    monkeypatch.setattr(common, "_mm", MM)
    monkeypatch.setattr(common, "_PATCHERS", type(common._PATCHERS)())
    return pack, common, MM, calls


def test_model_goes_through_a_holder_and_is_loaded_fully_then_offloaded(comfy_gpu, tiny_dir):
    pack, common, MM, calls = comfy_gpu
    loader = pack.NODE_CLASS_MAPPINGS["PromptEchoLoadVLM"]()
    (keep,) = loader.load("ShapesWorld (built-in)", "fp32", "cpu", True, custom_path=tiny_dir("llava"))
    (drop,) = loader.load("ShapesWorld (built-in)", "fp32", "cpu", False, custom_path=tiny_dir("llava"))
    assert keep.vlm is drop.vlm and keep.patcher is drop.patcher  # one model, one patcher: counted once
    holder = keep.patcher.model
    assert isinstance(holder, torch.nn.Module) and holder.model is keep.vlm.model
    assert holder.device == torch.device("cpu") and keep.patcher.load_device.type == "cuda"

    with keep as vlm:
        assert vlm is keep.vlm
    assert calls == [("load", keep.patcher, True)]  # full load; kept loaded afterwards
    with drop:
        pass
    assert calls[1] == ("load", drop.patcher, True)
    assert calls[2] == ("unload", drop.patcher) and calls[3] == ("empty",)
    assert MM.current_loaded_models == []  # removed from ComfyUI's list as well


def test_score_node_loads_before_and_offloads_after(comfy_gpu, tiny_dir):
    pack, common, MM, calls = comfy_gpu
    (h,) = pack.NODE_CLASS_MAPPINGS["PromptEchoLoadVLM"]().load("ShapesWorld (built-in)", "fp32", "cpu", False,
                                                                 custom_path=tiny_dir("llava"))
    imgs = torch.rand(2, 32, 32, 3)
    pack.NODE_CLASS_MAPPINGS["PromptEchoScore"]().score(h, imgs, "a red circle", "Describe this image in detail.",
                                                         "mean", 8)
    assert [c[0] for c in calls] == ["load", "unload", "empty"]


def test_quantization_offered_only_with_bitsandbytes(monkeypatch, tiny_dir, tiny_vlm):
    pack = load_pack()
    loader_mod = sys.modules[pack.__name__ + ".nodes.loader"]
    cls = pack.NODE_CLASS_MAPPINGS["PromptEchoLoadVLM"]
    monkeypatch.setattr(loader_mod, "bitsandbytes_available", lambda: False)
    assert cls.INPUT_TYPES()["optional"]["quantization"][0] == ["none"]
    monkeypatch.setattr(loader_mod, "bitsandbytes_available", lambda: True)
    assert cls.INPUT_TYPES()["optional"]["quantization"][0] == ["none", "8-bit", "4-bit"]

    seen = []
    monkeypatch.setattr(loader_mod, "load_quantized_vlm",
                        lambda path, bits, dtype, trust_remote_code: seen.append((path, bits, dtype)) or
                        tiny_vlm("llava"))
    (h,) = cls().load("ShapesWorld (built-in)", "bf16", "auto", False, custom_path=tiny_dir("llava"),
                      quantization="4-bit")
    assert seen == [(tiny_dir("llava"), 4, "bfloat16")] and h.keep_loaded
    with pytest.raises(ValueError, match="quantization"):
        cls().load("ShapesWorld (built-in)", "fp32", "cpu", True, custom_path=tiny_dir("llava"), quantization="2-bit")


def test_quantized_loader_explains_what_is_missing(tmp_path, tiny_dir):
    from promptecho.quantized import bitsandbytes_available, load_quantized_vlm
    from promptecho.vlm import VLMLoadError
    with pytest.raises(VLMLoadError, match="8 or 4"):
        load_quantized_vlm(tiny_dir("llava"), 3)
    if not bitsandbytes_available():
        with pytest.raises(VLMLoadError, match="bitsandbytes"):
            load_quantized_vlm(tiny_dir("llava"), 8)
    elif not torch.cuda.is_available():
        with pytest.raises(VLMLoadError, match="CUDA"):
            load_quantized_vlm(tiny_dir("llava"), 8)
