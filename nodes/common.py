"""Shared node plumbing: ComfyUI integrations that must stay optional (the pack imports without ComfyUI)."""
from __future__ import annotations

import os
import weakref
from typing import Callable, List, Optional

try:  # ComfyUI runtime pieces; absent in unit tests and other hosts
    import comfy.model_management as _mm
    import comfy.utils as _cu
except ImportError:
    _mm = _cu = None
try:
    import folder_paths as _fp
except ImportError:
    _fp = None

import torch

CATEGORY = "PromptEcho"
BUILTIN = "ShapesWorld (built-in)"
VLM_TYPE = "PROMPTECHO_VLM"


def register_model_folders() -> None:
    """models/LLM and models/VLM are where the community keeps VLMs; make them known to ComfyUI."""
    if _fp is None:
        return
    for name in ("LLM", "VLM"):
        path = os.path.join(_fp.models_dir, name)
        try:
            _fp.add_model_folder_path(name, path)
        except Exception:  # older ComfyUI signatures; the folder list below still works
            pass


def model_folders() -> List[str]:
    """Sub-folders of models/LLM and models/VLM that look like Hugging Face model folders."""
    found = []
    if _fp is None:
        return found
    for name in ("LLM", "VLM"):
        try:
            roots = _fp.get_folder_paths(name)
        except Exception:
            roots = [os.path.join(_fp.models_dir, name)]
        for root in roots:
            if not os.path.isdir(root):
                continue
            for d in sorted(os.listdir(root)):
                if os.path.isfile(os.path.join(root, d, "config.json")):
                    found.append(f"{name}/{d}")
    return found


def resolve_model_choice(choice: str, custom_path: str) -> str:
    """Folder for a dropdown choice ('ShapesWorld (built-in)', 'LLM/<name>', '(custom path)')."""
    from promptecho.shapes import default_vlm_path
    if custom_path and custom_path.strip():
        return os.path.expanduser(custom_path.strip())
    if choice == BUILTIN:
        return default_vlm_path()
    if _fp is not None and "/" in choice:
        kind, name = choice.split("/", 1)
        for root in _fp.get_folder_paths(kind):
            p = os.path.join(root, name)
            if os.path.isdir(p):
                return p
    raise ValueError(f"model {choice!r} not found; pick one from the list or type a folder in custom_path")


def progress_callback(total_hint: int) -> Callable[[int, int], None]:
    """Engine progress -> ComfyUI progress bar, with the interrupt (Cancel button) checked on every batch."""
    bar = _cu.ProgressBar(total_hint) if _cu is not None else None

    def cb(done: int, total: int) -> None:
        if _mm is not None:
            _mm.throw_exception_if_processing_interrupted()
        if bar is not None:
            bar.update_absolute(done, total)
    return cb


class _Holder(torch.nn.Module):
    """Plain nn.Module around the HF model: ModelPatcher assigns `.device`, which is read-only on HF models."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.device = next(model.parameters()).device


_PATCHERS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


class VLMHandle:
    """What flows on a PROMPTECHO_VLM wire: the engine VLM plus ComfyUI memory-management glue."""

    def __init__(self, vlm, keep_loaded: bool = True):
        self.vlm = vlm
        self.keep_loaded = keep_loaded
        self.patcher = None
        quantized = getattr(vlm.model, "is_quantized", False) or getattr(vlm.model, "hf_quantizer", None)
        # CPU-only ComfyUI: nothing to manage; bitsandbytes weights must stay where they were loaded
        if _mm is not None and not quantized and _mm.get_torch_device().type != "cpu":
            self.patcher = _PATCHERS.get(vlm)  # one patcher per model, or ComfyUI would count it twice
            if self.patcher is None:
                try:
                    import comfy.model_patcher as mp
                    load, offload = _mm.get_torch_device(), _mm.unet_offload_device()
                    self.patcher = _PATCHERS[vlm] = mp.ModelPatcher(_Holder(vlm.model), load_device=load,
                                                                    offload_device=offload)
                except Exception:  # memory manager unavailable: the model stays where it was loaded
                    self.patcher = None

    def __enter__(self):
        if self.patcher is not None:
            # full load: ComfyUI's partial (lowvram) loading only works for its own cast-weight layers, a plain
            # HF module split across devices would fail; this also restores a model ComfyUI partially offloaded
            _mm.load_models_gpu([self.patcher], force_full_load=True)
        return self.vlm

    def __exit__(self, *exc):
        if self.patcher is not None and not self.keep_loaded:
            for i, loaded in enumerate(list(_mm.current_loaded_models)):
                if loaded.model is self.patcher:  # unload through ComfyUI so its bookkeeping stays right
                    _mm.current_loaded_models.pop(i).model_unload()
                    break
            _mm.soft_empty_cache()
        return False


def check_handle(vlm) -> VLMHandle:
    if not isinstance(vlm, VLMHandle):
        raise ValueError("connect the output of a 'PromptEcho Load VLM' node to the vlm input")
    return vlm


def check_prompt(prompt: Optional[str]) -> str:
    if prompt is None or not str(prompt).strip():
        raise ValueError("the prompt is empty: type the prompt the images were generated from")
    return str(prompt)
