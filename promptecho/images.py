"""Turn the image forms users hand us (PIL, numpy, torch, ComfyUI IMAGE batches) into RGB PIL images."""
from __future__ import annotations

from typing import Any, List

import numpy as np
from PIL import Image


class ImageInputError(ValueError):
    """An image input the engine cannot use; the message says which one and why."""


def _pil_to_rgb(img: Image.Image, where: str) -> Image.Image:
    if img.width == 0 or img.height == 0:
        raise ImageInputError(f"{where}: image has zero size ({img.width}x{img.height})")
    if img.mode == "RGB":
        return img
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        # composite on white: dropping alpha would reveal whatever colour sits under transparent pixels
        rgba = img.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(bg, rgba).convert("RGB")
    return img.convert("RGB")


def _array_to_pil(a: np.ndarray, where: str) -> Image.Image:
    """One image as HWC / HW (channels-last) array; uint8 0..255 or float 0..1."""
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3:
        raise ImageInputError(f"{where}: expected an image with 2 or 3 dimensions, got shape {tuple(a.shape)}")
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise ImageInputError(f"{where}: image has zero size (shape {tuple(a.shape)})")
    c = a.shape[2]
    if c not in (1, 3, 4):
        raise ImageInputError(f"{where}: expected 1, 3 or 4 channels, got {c} (shape {tuple(a.shape)})")
    if a.dtype == np.bool_:
        a = a.astype(np.uint8) * 255
    elif np.issubdtype(a.dtype, np.floating):
        if not np.isfinite(a).all():
            raise ImageInputError(f"{where}: image contains NaN or infinite values")
        a = (np.clip(a.astype(np.float64), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    elif np.issubdtype(a.dtype, np.integer):
        if a.dtype != np.uint8:
            if a.min() < 0 or a.max() > 255:
                raise ImageInputError(f"{where}: integer image values must lie in 0..255 (got {a.min()}..{a.max()})")
            a = a.astype(np.uint8)
    else:
        raise ImageInputError(f"{where}: unsupported array dtype {a.dtype}")
    a = np.ascontiguousarray(a)
    mode = {1: "L", 3: "RGB", 4: "RGBA"}[c]
    img = Image.fromarray(a[:, :, 0] if c == 1 else a, mode=mode)
    return _pil_to_rgb(img, where)


def _channels_last(a: np.ndarray) -> np.ndarray:
    """[..., C, H, W] -> [..., H, W, C] when the channel axis is clearly first (ComfyUI uses channels-last)."""
    if a.shape[-1] in (1, 3, 4):
        return a
    if a.shape[-3] in (1, 3, 4) and a.shape[-1] > 4:
        return np.moveaxis(a, -3, -1)
    return a


def _tensor_to_numpy(t: Any) -> np.ndarray:
    t = t.detach()
    if t.dtype.is_floating_point and t.dtype not in (_torch().float32, _torch().float64):
        t = t.float()
    return t.cpu().numpy()


def _torch():
    import torch
    return torch


def _is_tensor(x: Any) -> bool:
    return type(x).__module__.startswith("torch") and hasattr(x, "detach")


def to_pil_list(images: Any) -> List[Image.Image]:
    """Accept a PIL image, a list of them, numpy HWC/NHWC, torch [B,H,W,C] (ComfyUI IMAGE), [B,C,H,W],
    [H,W,C] or [C,H,W] (uint8 0..255 or float 0..1) or a list mixing these; return RGB PIL images."""
    if images is None:
        raise ImageInputError("no images given (got None)")
    if isinstance(images, Image.Image):
        return [_pil_to_rgb(images, "image 0")]
    if _is_tensor(images):
        images = _tensor_to_numpy(images)
    if isinstance(images, np.ndarray):
        a = images
        if a.size == 0 and a.ndim == 4 and a.shape[0] == 0:
            raise ImageInputError("empty image batch (batch dimension is 0)")
        if a.ndim == 4:
            a = _channels_last(a)
            return [_array_to_pil(a[i], f"image {i}") for i in range(a.shape[0])]
        if a.ndim == 3:
            return [_array_to_pil(_channels_last(a), "image 0")]
        if a.ndim == 2:
            return [_array_to_pil(a, "image 0")]
        raise ImageInputError(f"expected an image array with 2-4 dimensions, got shape {tuple(a.shape)}")
    if isinstance(images, (list, tuple)):
        if len(images) == 0:
            raise ImageInputError("empty image list")
        out: List[Image.Image] = []
        for i, item in enumerate(images):
            if isinstance(item, Image.Image):
                out.append(_pil_to_rgb(item, f"image {i}"))
                continue
            if _is_tensor(item):
                item = _tensor_to_numpy(item)
            if isinstance(item, np.ndarray):
                if item.ndim == 4:
                    if item.shape[0] != 1:
                        raise ImageInputError(f"image {i}: a list element must be one image, got a batch of "
                                              f"{item.shape[0]}")
                    item = item[0]
                if item.ndim not in (2, 3):
                    raise ImageInputError(f"image {i}: expected 2 or 3 dimensions, got shape {tuple(item.shape)}")
                out.append(_array_to_pil(_channels_last(item) if item.ndim == 3 else item, f"image {i}"))
                continue
            raise ImageInputError(f"image {i}: unsupported type {type(item).__name__}")
        return out
    raise ImageInputError(f"unsupported image input type {type(images).__name__}; pass PIL images, numpy arrays "
                          "or torch tensors")
