"""LoRA export in diffusers format: `<prefix>.<module>.lora_A.weight` / `.lora_B.weight`, alpha/r folded into
lora_B (no `.alpha` tensors: diffusers rejects them, and without them ComfyUI applies scale 1), one safetensors
file with metadata. Loads identically with diffusers `load_lora_weights` and ComfyUI's LoRA loader (design.md §4)."""
from __future__ import annotations

import json
import os
from typing import Dict, Optional

import torch


class ExportError(ValueError):
    """Nothing to export, or an unreadable checkpoint."""


def peft_lora_state(transformer: torch.nn.Module) -> Dict[str, torch.Tensor]:
    """The adapter weights keyed `<module>.lora_A.weight` (PEFT's own view, adapter name removed)."""
    from peft.utils import get_peft_model_state_dict
    sd = get_peft_model_state_dict(transformer)
    if not sd:
        raise ExportError(f"{type(transformer).__name__} has no LoRA adapter to export")
    return {k: v.detach().clone() for k, v in sd.items()}


def checkpoint_lora_file(component: str, main: str = "transformer") -> str:
    """File of one adapted component inside a checkpoint folder: the transformer's (`main`) is lora.safetensors,
    as before extra components existed; others are lora.<component>.safetensors."""
    return "lora.safetensors" if component == main else f"lora.{component}.safetensors"


def to_diffusers_format(lora_state: Dict[str, torch.Tensor], rank: int, alpha: float, prefix: str = "transformer",
                        dtype: Optional[torch.dtype] = None) -> Dict[str, torch.Tensor]:
    scale = float(alpha) / float(rank)
    out = {}
    for k, v in lora_state.items():
        if k.startswith("base_model.model."):
            k = k[len("base_model.model."):]
        if not (k.endswith(".lora_A.weight") or k.endswith(".lora_B.weight")):
            raise ExportError(f"unexpected LoRA key {k!r}")
        t = v.float() * scale if k.endswith(".lora_B.weight") else v.float()
        out[f"{prefix}.{k}"] = (t.to(dtype) if dtype else t).contiguous()
    return out


def save_lora(path: str, tensors: Dict[str, torch.Tensor], metadata: Optional[Dict[str, str]] = None) -> str:
    from safetensors.torch import save_file
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    tmp = path + ".tmp"
    meta = {"format": "pt", "promptecho.lora_format": "diffusers", "promptecho.alpha_folded": "true"}
    meta.update({k: str(v) for k, v in (metadata or {}).items()})
    save_file(tensors, tmp, metadata=meta)
    os.replace(tmp, path)
    return path


def export_lora(transformer, path: str, rank: int, alpha: float, prefix: str = "transformer",
                dtype: Optional[torch.dtype] = None, metadata: Optional[Dict] = None) -> str:
    return export_lora_modules({prefix: transformer}, path, rank, alpha, dtype, metadata)


def export_lora_modules(modules: Dict[str, torch.nn.Module], path: str, rank: int, alpha: float,
                        dtype: Optional[torch.dtype] = None, metadata: Optional[Dict] = None) -> str:
    """One file for every adapted component, keys `<component>.<module>.lora_A.weight` (diffusers' own prefixes)."""
    tensors = {}
    for prefix, module in modules.items():
        tensors.update(to_diffusers_format(peft_lora_state(module), rank, alpha, prefix, dtype))
    meta = {"rank": rank, "alpha": alpha}
    meta.update(metadata or {})
    return save_lora(path, tensors, {k: v if isinstance(v, str) else json.dumps(v) for k, v in meta.items()})


def export_checkpoint(ckpt_dir: str, path: str, dtype: Optional[torch.dtype] = None) -> str:
    """Convert a training checkpoint folder (lora.safetensors + config.json) to a diffusers-format LoRA file."""
    from safetensors.torch import load_file
    lora = os.path.join(ckpt_dir, checkpoint_lora_file("transformer"))
    cfgp = os.path.join(ckpt_dir, "config.json")
    if not (os.path.isfile(lora) and os.path.isfile(cfgp)):
        raise ExportError(f"not a GRPO checkpoint folder (needs lora.safetensors and config.json): {ckpt_dir}")
    with open(cfgp, encoding="utf-8") as f:
        cfg = json.load(f)
    from .adapters import adapter_class
    prefix = adapter_class(cfg["adapter"]).lora_prefix
    tensors = to_diffusers_format(load_file(lora), cfg["lora_rank"], cfg["lora_alpha"], prefix, dtype)
    for extra in cfg.get("lora_extra", []):
        p = os.path.join(ckpt_dir, checkpoint_lora_file(extra, prefix))
        if not os.path.isfile(p):
            raise ExportError(f"checkpoint {ckpt_dir} was trained with a LoRA on {extra} but has no {p}")
        tensors.update(to_diffusers_format(load_file(p), cfg["lora_rank"], cfg["lora_alpha"], extra, dtype))
    return save_lora(path, tensors, {"rank": cfg["lora_rank"], "alpha": cfg["lora_alpha"], "adapter": cfg["adapter"],
                                      "base": cfg.get("pipeline", ""), "source": os.path.abspath(ckpt_dir)})
