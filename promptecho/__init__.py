"""PromptEcho: annotation-free image-text alignment reward from a frozen vision-language model.

reward(image, prompt) = -CE(prompt | image, "Describe this image in detail.") under a frozen VLM.
This package is the engine; it never imports ComfyUI or Gradio.

    from promptecho import load_vlm
    vlm = load_vlm("path/to/local/vlm")            # cached, frozen, never downloads by default
    [res] = vlm.score([image], ["a red circle left of a blue square"])
    res.reward, res.words                           # -CE and per-word losses (the heatmap)
"""
__version__ = "0.1.0"

DEFAULT_QUERY = "Describe this image in detail."
VQA_TEMPLATE = 'Does this figure show "{prompt}"? Please answer yes or no.'

from .results import RerankResult, ScoreResult, VQAResult, WordScore  # noqa: E402


def __getattr__(name):  # lazy: importing promptecho must not import torch/transformers
    if name in ("load_vlm", "VLM", "VLMLoadError", "ScoreInputError", "clear_cache"):
        from . import vlm
        return getattr(vlm, name)
    if name in ("to_pil_list", "ImageInputError"):
        from . import images
        return getattr(images, name)
    raise AttributeError(name)
