"""PromptEcho Best-of-N node."""
import json

import torch

from promptecho import DEFAULT_QUERY
from promptecho.batching import reorder
from promptecho.heatmap import heatmap_json

from .common import CATEGORY, VLM_TYPE, check_handle, check_prompt, progress_callback


class PromptEchoBestOfN:
    DESCRIPTION = ("Rank an image batch by PromptEcho reward (or VQAScore) for one prompt. Optional LATENT and "
                   "MASK inputs are reordered the same way, so the graph can continue from the chosen latent.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("IMAGE", "IMAGE", "STRING", "STRING", "LATENT", "MASK")
    RETURN_NAMES = ("best", "top_k", "rewards_sorted", "indices", "latent_sorted", "mask_sorted")
    OUTPUT_NODE = True
    FUNCTION = "rerank"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "vlm": (VLM_TYPE,),
                "images": ("IMAGE",),
                "prompt": ("STRING", {"multiline": True, "default": ""}),
                "top_k": ("INT", {"default": 1, "min": 1, "max": 4096}),
                "method": (["promptecho", "vqascore"], {"default": "promptecho"}),
                "query": ("STRING", {"default": DEFAULT_QUERY}),
            },
            "optional": {"latent": ("LATENT",), "mask": ("MASK",)},
        }

    def rerank(self, vlm, images, prompt, top_k, method, query, latent=None, mask=None):
        handle, prompt = check_handle(vlm), check_prompt(prompt)
        if not torch.is_tensor(images) or images.ndim != 4:
            raise ValueError("images must be a ComfyUI IMAGE batch [B,H,W,C]")
        identity = range(images.shape[0])
        if latent is not None:  # check the wiring before the expensive scoring
            reorder(latent, identity, "latent")
        if mask is not None:
            reorder(mask, identity, "mask")
        kw = {"query": query} if method == "promptecho" else {}
        with handle as model:
            res = model.rerank(images, prompt, method=method, progress=progress_callback(images.shape[0]), **kw)
        k = min(top_k, len(res.order))
        top = res.order[:k]
        latent_out = mask_out = None
        if latent is not None:
            latent_out = reorder(latent, res.order, "latent")
            latent_out = {key: (v[:k] if torch.is_tensor(v) and v.shape[0] == len(res.order) else v)
                          for key, v in latent_out.items()}
        if mask is not None:
            mask_out = reorder(mask, res.order, "mask")
            mask_out = mask_out[:k] if mask_out.shape[0] == len(res.order) else mask_out
        idx = torch.as_tensor(top, dtype=torch.long)
        top_images = images.index_select(0, idx)
        ui = [heatmap_json(r) for r in (res.results[i] for i in top)] if method == "promptecho" else []
        return {"ui": {"promptecho": ui, "ranking": [{"index": i, "score": res.scores[i]} for i in res.order]},
                "result": (top_images[:1], top_images, json.dumps([res.scores[i] for i in top]), json.dumps(top),
                           latent_out, mask_out)}  # None where the companion input is not connected
