"""PromptEcho Load VLM node."""
from promptecho.quantized import bitsandbytes_available, load_quantized_vlm
from promptecho.vlm import load_vlm

from .common import BUILTIN, CATEGORY, VLM_TYPE, VLMHandle, model_folders, register_model_folders, \
    resolve_model_choice

register_model_folders()


class PromptEchoLoadVLM:
    DESCRIPTION = ("Load a frozen vision-language model for PromptEcho scoring: the built-in ShapesWorld VLM, a "
                   "folder under models/LLM or models/VLM, or a typed path. Never downloads unless allowed. "
                   "Loading the same model again reuses it.")
    CATEGORY = CATEGORY
    RETURN_TYPES = (VLM_TYPE,)
    RETURN_NAMES = ("vlm",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ([BUILTIN] + model_folders(), {"default": BUILTIN}),
                "dtype": (["auto", "bf16", "fp16", "fp32"], {"default": "auto"}),
                "device": (["auto", "cpu", "cuda"], {"default": "auto"}),
                "keep_loaded": ("BOOLEAN", {"default": True, "tooltip": "keep the VLM on the GPU between runs"}),
            },
            "optional": {
                "custom_path": ("STRING", {"default": "", "tooltip": "a local model folder; overrides 'model'"}),
                "allow_download": ("BOOLEAN", {"default": False,
                                               "tooltip": "allow fetching a hub id typed in custom_path"}),
                "trust_remote_code": ("BOOLEAN", {"default": False,
                                                  "tooltip": "run Python code shipped with the model (opt-in)"}),
                # 8/4-bit is offered only where bitsandbytes is installed (CUDA)
                "quantization": (["none"] + (["8-bit", "4-bit"] if bitsandbytes_available() else []),
                                 {"default": "none", "tooltip": "bitsandbytes weights (CUDA); dtype = compute dtype"}),
            },
        }

    def load(self, model, dtype, device, keep_loaded, custom_path="", allow_download=False, trust_remote_code=False,
             quantization="none"):
        path = resolve_model_choice(model, custom_path)
        dt = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}.get(dtype, dtype)
        if quantization in ("8-bit", "4-bit"):
            vlm = load_quantized_vlm(path, int(quantization[0]), dtype=dt, trust_remote_code=trust_remote_code)
            return (VLMHandle(vlm, keep_loaded=True),)  # bitsandbytes weights cannot be moved between devices
        if quantization != "none":
            raise ValueError(f"quantization must be none, 8-bit or 4-bit, got {quantization!r}")
        vlm = load_vlm(path, dtype=dt, device=device, allow_download=allow_download,
                       trust_remote_code=trust_remote_code)
        return (VLMHandle(vlm, keep_loaded=keep_loaded),)
