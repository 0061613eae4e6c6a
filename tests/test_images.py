"""to_pil_list: every accepted image form converts to the same RGB pixels; bad input fails specifically."""
import numpy as np
import pytest
import torch
from PIL import Image

from promptecho.images import ImageInputError, to_pil_list


def _arr(seed=0, h=5, w=7):
    return np.random.RandomState(seed).randint(0, 256, (h, w, 3), dtype=np.uint8)


def test_pil_and_lists_pass_through_as_rgb():
    a = _arr()
    out = to_pil_list(Image.fromarray(a))
    assert len(out) == 1 and out[0].mode == "RGB"
    assert np.array_equal(np.asarray(out[0]), a)
    out = to_pil_list([Image.fromarray(a), Image.fromarray(_arr(1))])
    assert [o.size for o in out] == [(7, 5), (7, 5)]


def test_numpy_uint8_and_float_hwc_and_nhwc():
    a = _arr()
    assert np.array_equal(np.asarray(to_pil_list(a)[0]), a)
    f = a.astype(np.float32) / 255.0
    assert np.array_equal(np.asarray(to_pil_list(f)[0]), a)  # rounds back exactly
    batch = np.stack([a, _arr(2)])
    out = to_pil_list(batch)
    assert len(out) == 2 and np.array_equal(np.asarray(out[1]), _arr(2))


def test_torch_comfy_bhwc_and_bchw_and_chw():
    a = np.stack([_arr(3), _arr(4)])
    t = torch.from_numpy(a).float() / 255.0  # ComfyUI IMAGE: [B,H,W,C] in 0..1
    out = to_pil_list(t)
    assert len(out) == 2 and np.array_equal(np.asarray(out[0]), a[0])
    out = to_pil_list(t.permute(0, 3, 1, 2))  # [B,C,H,W]
    assert np.array_equal(np.asarray(out[1]), a[1])
    out = to_pil_list(t[0].permute(2, 0, 1))  # [C,H,W]
    assert len(out) == 1 and np.array_equal(np.asarray(out[0]), a[0])
    out = to_pil_list(t.to(torch.bfloat16))
    assert out[0].size == (7, 5)


def test_rgba_grayscale_palette_converted_to_rgb():
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[..., 3] = 255
    rgba[0, 0, 3] = 0  # fully transparent pixel composites onto white
    img = to_pil_list(Image.fromarray(rgba, "RGBA"))[0]
    assert img.mode == "RGB"
    assert tuple(img.getpixel((1, 1))) == (200, 0, 0) and tuple(img.getpixel((0, 0))) == (255, 255, 255)
    gray = to_pil_list(Image.fromarray(np.full((3, 3), 77, np.uint8), "L"))[0]
    assert gray.mode == "RGB" and gray.getpixel((0, 0)) == (77, 77, 77)
    pal = Image.fromarray(_arr()).convert("P")
    assert to_pil_list(pal)[0].mode == "RGB"
    assert to_pil_list(np.full((3, 3), 0.5, np.float32))[0].getpixel((0, 0)) == (128, 128, 128)


@pytest.mark.parametrize("bad, message", [
    (np.full((4, 4, 3), np.nan, np.float32), "NaN"),
    (torch.full((1, 4, 4, 3), float("inf")), "NaN or infinite"),
    (np.zeros((0, 4, 4, 3), np.float32), "empty image batch"),
    (torch.zeros((0, 8, 8, 3)), "empty image batch"),
    ([], "empty image list"),
    (np.zeros((0, 5, 3), np.uint8), "zero size"),
    (Image.new("RGB", (0, 3)), "zero size"),
    (np.zeros((4, 4, 2), np.uint8), "channels"),
    (np.zeros((4, 4, 3), np.int32) + 300, "0..255"),
    ("not an image", "unsupported"),
    (None, "None"),
])
def test_bad_images_rejected_with_specific_messages(bad, message):
    with pytest.raises(ImageInputError, match=message):
        to_pil_list(bad)
    assert issubclass(ImageInputError, ValueError)
