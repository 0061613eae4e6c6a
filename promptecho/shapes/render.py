"""Deterministic, anti-aliased rendering of ShapesWorld scenes (draw at 4x, downscale with a box filter)."""
from __future__ import annotations

from PIL import Image, ImageDraw

from .world import COLORS, GRID, Scene

IMAGE_SIZE = 48  # pixels; 3x3 grid of 16 px cells
BACKGROUND = (0, 0, 0)
SIZE_PX = {"small": 8.0, "large": 12.0}  # side / diameter at 48 px
_SS = 4  # supersampling factor


def object_center(row: int, col: int, dx: float, dy: float, size: int = IMAGE_SIZE):
    cell = size / GRID
    return (col + 0.5) * cell + dx * size / IMAGE_SIZE, (row + 0.5) * cell + dy * size / IMAGE_SIZE


def _polygon(shape: str, cx: float, cy: float, d: float):
    h = d / 2
    if shape == "square":
        return [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    if shape == "triangle":  # apex up
        return [(cx, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    if shape == "diamond":
        return [(cx, cy - h), (cx + h, cy), (cx, cy + h), (cx - h, cy)]
    raise ValueError(shape)


def render(scene: Scene, size: int = IMAGE_SIZE) -> Image.Image:
    """RGB image of the scene. Same scene -> same pixels."""
    big = Image.new("RGB", (size * _SS, size * _SS), BACKGROUND)
    draw = ImageDraw.Draw(big)
    scale = size / IMAGE_SIZE * _SS
    for o in scene.objects:
        cx, cy = object_center(o.row, o.col, o.dx, o.dy, size)
        cx, cy, d = cx * _SS, cy * _SS, SIZE_PX[o.size] * scale
        fill = COLORS[o.color]
        if o.shape == "circle":
            draw.ellipse([cx - d / 2, cy - d / 2, cx + d / 2, cy + d / 2], fill=fill)
        else:
            draw.polygon(_polygon(o.shape, cx, cy, d), fill=fill)
    return big.resize((size, size), Image.BOX)
