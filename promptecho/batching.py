"""Batch helpers shared by the ComfyUI nodes and the UI: reorder companions of an image batch, stack
heatmaps of different heights."""
from __future__ import annotations

from typing import List, Sequence

import numpy as np
import torch
from PIL import Image


def reorder(batch, order: Sequence[int], what: str = "batch"):
    """Reorder a tensor along dim 0, or a ComfyUI LATENT dict ({'samples': [B,...], ...}) the same way.
    Raises ValueError when the batch size does not match the ranking."""
    idx = torch.as_tensor(list(order), dtype=torch.long)
    if isinstance(batch, dict):
        if "samples" not in batch:
            raise ValueError(f"{what}: a LATENT must contain 'samples'")
        out = dict(batch)
        n = batch["samples"].shape[0]
        if n != len(order) and not (n == 1 and len(order) == 1):
            raise ValueError(f"{what}: has {n} samples but {len(order)} images were ranked; connect the latent "
                             "batch that produced these images")
        out["samples"] = batch["samples"].index_select(0, idx.to(batch["samples"].device))
        for key in ("noise_mask",):
            v = batch.get(key)
            if torch.is_tensor(v) and v.shape[0] == n:
                out[key] = v.index_select(0, idx.to(v.device))
        if "batch_index" in batch:
            out["batch_index"] = [batch["batch_index"][i] for i in order]
        return out
    if not torch.is_tensor(batch):
        raise ValueError(f"{what}: expected a tensor, got {type(batch).__name__}")
    if batch.shape[0] == 1 and len(order) > 1:  # one mask shared by every image: nothing to reorder
        return batch
    if batch.shape[0] != len(order):
        raise ValueError(f"{what}: has {batch.shape[0]} items but {len(order)} images were ranked")
    return batch.index_select(0, idx.to(batch.device))


def stack_images(images: List[Image.Image], background=(255, 255, 255)) -> torch.Tensor:
    """PIL images of different sizes -> one ComfyUI IMAGE tensor [B,H,W,3] in 0..1 (padded bottom/right)."""
    if not images:
        raise ValueError("no images to stack")
    h = max(im.height for im in images)
    w = max(im.width for im in images)
    out = []
    for im in images:
        canvas = Image.new("RGB", (w, h), background)
        canvas.paste(im.convert("RGB"), (0, 0))
        out.append(np.asarray(canvas, dtype=np.float32) / 255.0)
    return torch.from_numpy(np.stack(out))
