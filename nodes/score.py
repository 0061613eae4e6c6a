"""PromptEcho Score and VQAScore nodes."""
import json

import torch

from promptecho import DEFAULT_QUERY
from promptecho.batching import stack_images
from promptecho.heatmap import heatmap_json, render_heatmap

from .common import CATEGORY, VLM_TYPE, check_handle, check_prompt, progress_callback


class PromptEchoScore:
    DESCRIPTION = ("PromptEcho reward (-CE of the prompt as the VLM's description of each image) with a per-word "
                   "heatmap of the words the image does not support.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("FLOAT", "STRING", "FLOAT", "IMAGE")
    RETURN_NAMES = ("reward_mean", "rewards_json", "rewards", "heatmap")
    OUTPUT_IS_LIST = (False, False, True, False)
    OUTPUT_NODE = True
    FUNCTION = "score"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "vlm": (VLM_TYPE,),
            "images": ("IMAGE",),
            "prompt": ("STRING", {"multiline": True, "default": ""}),
            "query": ("STRING", {"default": DEFAULT_QUERY}),
            "reduction": (["mean", "sum"], {"default": "mean"}),
            "batch_size": ("INT", {"default": 8, "min": 1, "max": 256}),
        }}

    def score(self, vlm, images, prompt, query, reduction, batch_size):
        handle, prompt = check_handle(vlm), check_prompt(prompt)
        if not str(query).strip():
            raise ValueError("the guiding query is empty (default: 'Describe this image in detail.')")
        with handle as model:
            results = model.score(images, prompt, query=query, reduction=reduction, batch_size=batch_size,
                                  progress=progress_callback(images.shape[0] if torch.is_tensor(images) else 1))
        rewards = [r.reward for r in results]
        payload = [heatmap_json(r) for r in results]
        heat = stack_images([render_heatmap(r) for r in results])
        return {"ui": {"promptecho": payload},
                "result": (sum(rewards) / len(rewards), json.dumps(rewards), rewards, heat)}


class PromptEchoVQAScore:
    DESCRIPTION = ('VQAScore baseline with the same VLM: P("Yes") to \'Does this figure show "{prompt}"? Please '
                   "answer yes or no.'")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("FLOAT", "STRING", "FLOAT")
    RETURN_NAMES = ("p_yes_mean", "scores_json", "p_yes")
    OUTPUT_IS_LIST = (False, False, True)
    OUTPUT_NODE = True
    FUNCTION = "score"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "vlm": (VLM_TYPE,),
            "images": ("IMAGE",),
            "prompt": ("STRING", {"multiline": True, "default": ""}),
            "batch_size": ("INT", {"default": 8, "min": 1, "max": 256}),
        }}

    def score(self, vlm, images, prompt, batch_size):
        handle, prompt = check_handle(vlm), check_prompt(prompt)
        with handle as model:
            res = model.vqascore(images, prompt, batch_size=batch_size,
                                 progress=progress_callback(images.shape[0] if torch.is_tensor(images) else 1))
        p = [r.p_yes for r in res]
        return {"ui": {"vqascore": [r.to_json() for r in res]},
                "result": (sum(p) / len(p), json.dumps([r.to_json() for r in res]), p)}
