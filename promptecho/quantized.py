"""Optional 8-bit / 4-bit loading of a scoring VLM through bitsandbytes (CUDA only).

Kept apart from `vlm.load_vlm` because it needs an optional package and a CUDA device; the loaded object is
the same `VLM` class, so scoring, heatmaps and reranking work unchanged (losses are still computed in fp32
from the model's logits).
"""
from __future__ import annotations

import importlib.util
import os
import threading
from typing import Any, Dict, Tuple

from .templates import TemplateBuilder, TemplateError
from .vlm import VLM, VLMLoadError, _check_local_folder, _resolve_dtype

BITS = (8, 4)
_CACHE: Dict[Tuple[str, int, str], VLM] = {}
_LOCK = threading.Lock()


def bitsandbytes_available() -> bool:
    return importlib.util.find_spec("bitsandbytes") is not None


def load_quantized_vlm(path: str, bits: int, dtype: Any = "auto", trust_remote_code: bool = False) -> VLM:
    """Load a local VLM folder with bitsandbytes `bits`-bit weights on the first CUDA device (cached)."""
    if bits not in BITS:
        raise VLMLoadError(f"quantization must be 8 or 4 bits, got {bits!r}")
    if not bitsandbytes_available():
        raise VLMLoadError(f"{bits}-bit loading needs the optional package bitsandbytes (pip install bitsandbytes)")
    import torch
    if not torch.cuda.is_available():
        raise VLMLoadError(f"{bits}-bit loading (bitsandbytes) needs a CUDA GPU; load in bf16/fp32 instead")
    path = os.path.expanduser(str(path or ""))
    if not os.path.isdir(path):
        raise VLMLoadError(f"model folder not found: {path}")
    compute = _resolve_dtype(dtype, torch.device("cuda"))
    key = (os.path.realpath(path), bits, str(compute))
    with _LOCK:
        if key in _CACHE:
            return _CACHE[key]
        _check_local_folder(path, trust_remote_code, False)
        from transformers import AutoModelForImageTextToText, AutoProcessor, BitsAndBytesConfig
        common = dict(local_files_only=True, trust_remote_code=bool(trust_remote_code))
        try:
            processor = AutoProcessor.from_pretrained(path, **common)
            builder = TemplateBuilder(processor)
        except (OSError, ValueError, KeyError, TypeError, ImportError, TemplateError) as e:
            raise VLMLoadError(f"cannot load the processor of {path}: {e}") from e
        qconf = (BitsAndBytesConfig(load_in_8bit=True) if bits == 8 else
                 BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute))
        try:
            model = AutoModelForImageTextToText.from_pretrained(
                path, dtype=compute, quantization_config=qconf, device_map={"": 0}, use_safetensors=True, **common)
        except (OSError, ValueError, KeyError, ImportError, RuntimeError) as e:
            raise VLMLoadError(f"cannot load {path} in {bits}-bit: {e}") from e
        model.eval().requires_grad_(False)
        vlm = VLM(model, processor, name=f"{os.path.basename(os.path.normpath(path))} ({bits}-bit)", path=path,
                  builder=builder)
        _CACHE[key] = vlm
        return vlm
