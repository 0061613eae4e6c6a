"""Pipeline adapters behind one interface (`FlowAdapter`); `load_adapter(name, path_or_pipe)` picks one."""
from __future__ import annotations

import inspect
import os

import torch

from .base import AdapterError, FlowAdapter

ADAPTERS = {
    "sd3": "promptecho.grpo.adapters.sd3:SD3Adapter",
    "shapesworld": "promptecho.grpo.adapters.shapes:ShapesWorldAdapter",
    "zimage": "promptecho.grpo.adapters.zimage:ZImageAdapter",
    "flux": "promptecho.grpo.adapters.flux:FluxAdapter",
    "qwenimage": "promptecho.grpo.adapters.qwenimage:QwenImageAdapter",
}
# the diffusers pipeline class each adapter loads (a folder of another pipeline type is refused with its name)
PIPELINE_CLASSES = {"sd3": "StableDiffusion3Pipeline", "zimage": "ZImagePipeline", "flux": "FluxPipeline",
                    "qwenimage": "QwenImagePipeline"}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def adapter_class(name: str):
    import importlib
    if name not in ADAPTERS:
        raise AdapterError(f"unknown adapter {name!r}; available: {', '.join(ADAPTERS)}")
    mod, cls = ADAPTERS[name].split(":")
    return getattr(importlib.import_module(mod), cls)


def load_pipeline(name: str, path: str, dtype: str = "fp32", device: str = "cpu"):
    """Load a local diffusers folder offline (safetensors only)."""
    if name == "shapesworld" and not path:
        from ...shapes import default_generator_path
        path = default_generator_path()
    if not path or not os.path.isfile(os.path.join(path, "model_index.json")):
        raise AdapterError(f"not a diffusers pipeline folder (no model_index.json): {path!r}")
    if name == "shapesworld":
        from ...shapes.generator import ShapesWorldPipeline as cls
    elif name in PIPELINE_CLASSES:
        import diffusers
        cls = getattr(diffusers, PIPELINE_CLASSES[name], None)
        if cls is None:
            raise AdapterError(f"this diffusers ({diffusers.__version__}) has no {PIPELINE_CLASSES[name]}; "
                               f"upgrade diffusers to train {name!r} models")
    else:
        from diffusers import DiffusionPipeline as cls
    pipe = cls.from_pretrained(path, local_files_only=True, use_safetensors=True, torch_dtype=DTYPES[dtype])
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def make_adapter(name: str, pipe, device="cpu", dtype="fp32", resolution: int = 0, guidance=None) -> FlowAdapter:
    """`guidance`: the embedded (distilled) guidance value for adapters that take one (FLUX.1-dev); None keeps
    the adapter's default, other adapters ignore it."""
    cls = adapter_class(name)
    kw = {}
    if guidance is not None and "guidance" in inspect.signature(cls.__init__).parameters:
        kw["guidance"] = float(guidance)
    return cls(pipe, device=device, dtype=DTYPES[dtype], resolution=resolution, **kw)


__all__ = ["AdapterError", "FlowAdapter", "ADAPTERS", "PIPELINE_CLASSES", "adapter_class", "load_pipeline", "make_adapter"]
